"""The grant rule: nobody hands out more than they hold."""

from __future__ import annotations

import pytest

from souverain.core.roles import ORG_ROLES, Role, Scope, can_grant, effective_scopes, scopes_of


class TestCanGrant:
    @pytest.mark.parametrize(
        ("holder", "role", "allowed"),
        [
            (Role.OWNER, Role.OWNER, True),
            (Role.OWNER, Role.ADMIN, True),
            (Role.ADMIN, Role.OWNER, False),
            (Role.ADMIN, Role.ADMIN, True),
            (Role.ADMIN, Role.AUDITOR, True),
            (Role.MEMBER, Role.ADMIN, False),
            (Role.MEMBER, Role.MEMBER, True),
            (Role.MEMBER, Role.VIEWER, True),
            (Role.MEMBER, Role.AUDITOR, False),
            (Role.VIEWER, Role.MEMBER, False),
            (Role.AUDITOR, Role.VIEWER, True),
            (Role.OPERATOR, Role.OWNER, True),
        ],
    )
    def test_role_grants(self, holder: Role, role: Role, allowed: bool) -> None:
        assert can_grant(scopes_of(holder), role=role) is allowed

    def test_narrowing_does_not_unlock_a_higher_role(self) -> None:
        assert not can_grant(
            scopes_of(Role.MEMBER), role=Role.ADMIN, scopes=frozenset({Scope.READ})
        )

    def test_scopes_outside_the_role_are_refused(self) -> None:
        assert not can_grant(
            scopes_of(Role.OWNER), role=Role.VIEWER, scopes=frozenset({Scope.INFERENCE})
        )

    def test_no_org_role_includes_platform(self) -> None:
        assert all(Scope.PLATFORM not in scopes_of(role) for role in ORG_ROLES)


class TestEffectiveScopes:
    def test_key_is_bounded_by_its_users_current_role(self) -> None:
        key = scopes_of(Role.ADMIN)
        assert effective_scopes(Role.ADMIN, key, scopes_of(Role.VIEWER)) == {Scope.READ}

    def test_a_role_held_in_a_project_adds_to_the_membership(self) -> None:
        held = scopes_of(Role.VIEWER) | scopes_of(Role.AUDITOR)  # viewer, auditor in the project
        key = scopes_of(Role.ADMIN)
        assert effective_scopes(Role.ADMIN, key, held) == {Scope.READ, Scope.AUDIT}

    def test_removed_user_has_nothing(self) -> None:
        assert effective_scopes(Role.OWNER, scopes_of(Role.OWNER), None) == frozenset()
