"""The one "visible to this caller" rule (core/access.py), role by role and kind by kind."""

from __future__ import annotations

import pytest

from souverain.core.access import Holding, Owner, can_see, reach
from souverain.core.principal import Principal
from souverain.core.roles import ROLE_SCOPES, Role


def principal(role: Role, *, user: str = "usr_me", project: str | None = None) -> Principal:
    org = None if role is Role.OPERATOR else "org_a"
    return Principal(
        key_id="k", user_id=user, user_name=user, org_id=org, project_id=project, role=role,
        scopes=ROLE_SCOPES[role],
    )  # fmt: skip


MINE = Owner("org_a", "prj_1", "usr_me")
A_COLLEAGUES = Owner("org_a", "prj_1", "usr_colleague")
OTHER_PROJECTS = Owner("org_a", "prj_2", "usr_me")
ANOTHER_ORGS = Owner("org_b", "prj_9", "usr_stranger")
PLATFORMS = Owner(None)
ORGS_SHARED = Owner("org_a")


class TestDataAndWork:
    """Files, batches (DATA) and jobs (WORK): the maker and the organisation's managers."""

    @pytest.mark.parametrize("holding", [Holding.DATA, Holding.WORK])
    @pytest.mark.parametrize("role", [Role.OWNER, Role.ADMIN])
    def test_managers_see_everything_of_their_organisation(
        self, role: Role, holding: Holding
    ) -> None:
        caller = principal(role)
        assert can_see(caller, holding, MINE) and can_see(caller, holding, A_COLLEAGUES)
        assert can_see(caller, holding, OTHER_PROJECTS)
        assert not can_see(caller, holding, ANOTHER_ORGS)

    @pytest.mark.parametrize("holding", [Holding.DATA, Holding.WORK])
    @pytest.mark.parametrize("role", [Role.MEMBER, Role.VIEWER, Role.AUDITOR])
    def test_everyone_else_sees_only_their_own(self, role: Role, holding: Holding) -> None:
        caller = principal(role)
        assert can_see(caller, holding, MINE)
        assert not can_see(caller, holding, A_COLLEAGUES)
        assert not can_see(caller, holding, ANOTHER_ORGS)

    @pytest.mark.parametrize("holding", [Holding.DATA, Holding.WORK])
    def test_a_project_key_sees_its_project_only_even_for_an_owner(self, holding: Holding) -> None:
        caller = principal(Role.OWNER, project="prj_1")
        assert can_see(caller, holding, A_COLLEAGUES)
        assert not can_see(caller, holding, OTHER_PROJECTS)

    def test_operators_see_the_work_on_their_fleet_but_never_tenants_data(self) -> None:
        operator = principal(Role.OPERATOR)
        assert can_see(operator, Holding.WORK, ANOTHER_ORGS)
        assert not can_see(operator, Holding.DATA, ANOTHER_ORGS)
        assert not can_see(operator, Holding.DATA, MINE)


class TestShared:
    """Models and deployments: the organisation's, and the platform's for everyone."""

    @pytest.mark.parametrize("role", [r for r in Role if r is not Role.OPERATOR])
    def test_every_member_sees_the_organisations_and_the_platforms(self, role: Role) -> None:
        caller = principal(role, project="prj_2")
        assert can_see(caller, Holding.SHARED, ORGS_SHARED)
        assert can_see(caller, Holding.SHARED, PLATFORMS)
        assert not can_see(caller, Holding.SHARED, Owner("org_b"))

    def test_operators_see_every_organisations(self) -> None:
        operator = principal(Role.OPERATOR)
        assert can_see(operator, Holding.SHARED, Owner("org_b"))
        assert can_see(operator, Holding.SHARED, PLATFORMS)

    def test_platform_objects_are_shared_only(self) -> None:
        """Nothing of the platform's own is a tenant's work or data."""
        for role in Role:
            assert not reach(principal(role), Holding.DATA).allows(PLATFORMS)
