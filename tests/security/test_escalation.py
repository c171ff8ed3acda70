"""Privilege escalation: nobody can create a key or a membership worth more than they hold,
and request bodies cannot set the fields the server decides (mass assignment)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from souverain.core.roles import Role
from souverain.db.tables import utcnow
from souverain.testing.factories import Tenant, unique
from tests.conftest import Platform, wait_until
from tests.security.helpers import assert_openai_error, chat_body


async def _org(platform: Platform, **roles: Role) -> Tenant:
    return await platform.factory.tenant(roles=roles)


async def _key(platform: Platform, tenant: Tenant, user: str, role: Role) -> str:
    return (await platform.factory.member_key(tenant, user, role)).key


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)


class TestKeysWithMoreRights:
    @pytest.mark.parametrize(
        ("holder", "wanted", "scopes"),
        [
            (Role.MEMBER, "admin", None),
            (Role.MEMBER, "admin", ["read"]),  # narrowing does not make a role grantable
            (Role.MEMBER, "owner", None),
            (Role.MEMBER, "auditor", None),  # member lacks `audit`
            (Role.VIEWER, "member", None),
            (Role.VIEWER, "member", ["read"]),
            (Role.AUDITOR, "member", None),
            (Role.AUDITOR, "admin", None),
            (Role.ADMIN, "owner", None),
            (Role.ADMIN, "operator", None),
            (Role.OWNER, "operator", None),
            (Role.VIEWER, "viewer", ["read", "inference"]),  # scopes outside the role
            (Role.OWNER, "member", ["manage"]),  # scopes outside the role
        ],
    )
    async def test_a_key_above_the_callers_rights_is_403(
        self, platform: Platform, holder: Role, wanted: str, scopes: list[str] | None
    ) -> None:
        tenant = await _org(platform, me=holder)
        key = await _key(platform, tenant, "me", holder)
        body: dict[str, object] = {"role": wanted}
        if scopes is not None:
            body["scopes"] = scopes
        async with platform.client(key) as client:
            response = await client.post("/api/keys", json=body)
            assert_openai_error(response, 403, "permission_denied")
            listed = (await client.get("/api/keys")).json()
        assert len(listed) == 1  # nothing was created

    async def test_admin_cannot_mint_for_a_member_a_key_above_the_members_role(
        self, platform: Platform
    ) -> None:
        tenant = await _org(platform, adm=Role.ADMIN, low=Role.VIEWER)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        low = f"low-{tenant.org_name}"
        async with platform.client(admin) as client:
            for role in ("member", "admin", "auditor"):
                response = await client.post("/api/keys", json={"user": low, "role": role})
                assert_openai_error(response, 403, "permission_denied")
            fine = await client.post("/api/keys", json={"user": low, "role": "viewer"})
        assert fine.status_code == 201, fine.text
        assert fine.json()["user"] == low and fine.json()["scopes"] == ["read"]

    async def test_admin_cannot_mint_a_key_for_someone_outside_the_org(
        self, platform: Platform
    ) -> None:
        tenant = await _org(platform, adm=Role.ADMIN)
        stranger_org = await _org(platform, out=Role.OWNER)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        async with platform.client(admin) as client:
            response = await client.post(
                "/api/keys", json={"user": f"out-{stranger_org.org_name}", "role": "viewer"}
            )
        # 404, not 403: whether that name is a user elsewhere on the platform is not told
        assert_openai_error(response, 404, "not_found")

    async def test_admin_cannot_mint_a_key_issued_to_the_platform_operator(
        self, platform: Platform
    ) -> None:
        tenant = await _org(platform, adm=Role.ADMIN)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        async with platform.client(admin) as client:
            response = await client.post("/api/keys", json={"user": "operator", "role": "admin"})
        assert_openai_error(response, 404, "not_found")  # the operator is no member here

    async def test_a_removed_admin_keeps_no_access_through_a_key_for_the_operator(
        self, platform: Platform
    ) -> None:
        tenant = await _org(platform, own=Role.OWNER, adm=Role.ADMIN)
        owner = await _key(platform, tenant, "own", Role.OWNER)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        async with platform.client(admin) as client:
            minted = await client.post("/api/keys", json={"user": "operator", "role": "admin"})
        backdoor = minted.json()["key"] if minted.status_code == 201 else None
        async with platform.client(owner) as client:
            removed = await client.delete(
                f"/api/orgs/{tenant.org_name}/members/adm-{tenant.org_name}"
            )
            assert removed.status_code == 204
        async with platform.client(admin) as client:

            async def refused() -> bool:
                return (await client.get("/api/me")).status_code == 401

            await wait_until(refused, timeout_s=5)
        if backdoor is not None:
            async with platform.client(backdoor) as client:
                projects = await client.post(
                    f"/api/orgs/{tenant.org_name}/projects", json={"name": unique("after")}
                )
            assert projects.status_code in (401, 403), projects.text

    async def test_admin_cannot_mint_an_operator_key_for_the_operator(
        self, platform: Platform
    ) -> None:
        tenant = await _org(platform, adm=Role.ADMIN)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        async with platform.client(admin) as client:
            response = await client.post("/api/keys", json={"user": "operator", "role": "operator"})
        assert_openai_error(response, 403, "permission_denied")

    async def test_a_derived_key_never_has_more_than_its_creator_after_a_demotion(
        self, platform: Platform
    ) -> None:
        tenant = await _org(platform, own=Role.OWNER, adm=Role.ADMIN)
        owner = await _key(platform, tenant, "own", Role.OWNER)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        async with platform.client(admin) as client:
            child = (await client.post("/api/keys", json={"role": "admin"})).json()["key"]
        async with platform.client(owner) as client:
            demoted = await client.post(
                f"/api/orgs/{tenant.org_name}/members",
                json={"user": f"adm-{tenant.org_name}", "role": "viewer"},
            )
            assert demoted.status_code == 201
        async with platform.client(child) as client:

            async def shrunk() -> bool:
                return (await client.get("/api/me")).json().get("scopes") == ["read"]

            await wait_until(shrunk, timeout_s=5)
            response = await client.post("/api/keys", json={"role": "member"})
        assert_openai_error(response, 403, "permission_denied")


class TestMembershipsWithMoreRights:
    async def test_admin_cannot_add_an_owner(self, platform: Platform) -> None:
        tenant = await _org(platform, adm=Role.ADMIN)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        async with platform.client(admin) as client:
            response = await client.post(
                f"/api/orgs/{tenant.org_name}/members", json={"user": unique("u"), "role": "owner"}
            )
        assert_openai_error(response, 403, "permission_denied")

    async def test_admin_cannot_promote_themself_to_owner(self, platform: Platform) -> None:
        tenant = await _org(platform, adm=Role.ADMIN)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        async with platform.client(admin) as client:
            response = await client.post(
                f"/api/orgs/{tenant.org_name}/members",
                json={"user": f"adm-{tenant.org_name}", "role": "owner"},
            )
            assert_openai_error(response, 403, "permission_denied")
            assert (await client.get("/api/me")).json()["role"] == "admin"

    async def test_admin_cannot_demote_or_remove_an_owner(self, platform: Platform) -> None:
        tenant = await _org(platform, own=Role.OWNER, adm=Role.ADMIN)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        owner_name = f"own-{tenant.org_name}"
        async with platform.client(admin) as client:
            demote = await client.post(
                f"/api/orgs/{tenant.org_name}/members", json={"user": owner_name, "role": "viewer"}
            )
            assert_openai_error(demote, 403, "permission_denied")
            remove = await client.delete(f"/api/orgs/{tenant.org_name}/members/{owner_name}")
            assert_openai_error(remove, 403, "permission_denied")
            members = (await client.get(f"/api/orgs/{tenant.org_name}/members")).json()
        assert {m["user"]: m["role"] for m in members}[owner_name] == "owner"

    async def test_nobody_can_grant_the_operator_role_as_a_membership(
        self, platform: Platform
    ) -> None:
        tenant = await _org(platform, own=Role.OWNER)
        owner = await _key(platform, tenant, "own", Role.OWNER)
        operator = await platform.operator_key()
        for key in (owner, operator):
            async with platform.client(key) as client:
                response = await client.post(
                    f"/api/orgs/{tenant.org_name}/members",
                    json={"user": unique("u"), "role": "operator"},
                )
            assert_openai_error(response, 403, "permission_denied")

    @pytest.mark.parametrize("holder", [Role.MEMBER, Role.VIEWER, Role.AUDITOR])
    async def test_non_managers_cannot_add_even_a_viewer(
        self, platform: Platform, holder: Role
    ) -> None:
        tenant = await _org(platform, me=holder)
        key = await _key(platform, tenant, "me", holder)
        async with platform.client(key) as client:
            response = await client.post(
                f"/api/orgs/{tenant.org_name}/members", json={"user": unique("u"), "role": "viewer"}
            )
        assert_openai_error(response, 403, "permission_denied")


class TestProjectRestrictedKeys:
    async def _project_key(self, platform: Platform) -> tuple[Tenant, str, dict[str, str]]:
        tenant = await _org(platform, adm=Role.ADMIN)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        ids = {}
        async with platform.client(admin) as client:
            for name in ("alpha", "beta"):
                created = await client.post(
                    f"/api/orgs/{tenant.org_name}/projects", json={"name": name}
                )
                ids[name] = created.json()["id"]
            scoped = await client.post("/api/keys", json={"project": "alpha", "role": "admin"})
        assert scoped.status_code == 201, scoped.text
        return tenant, scoped.json()["key"], ids

    async def test_cannot_mint_for_another_project_by_name_or_id(self, platform: Platform) -> None:
        _, scoped, ids = await self._project_key(platform)
        async with platform.client(scoped) as client:
            for ref in ("beta", ids["beta"], "default"):
                response = await client.post("/api/keys", json={"project": ref, "role": "viewer"})
                assert_openai_error(response, 404, "not_found")

    async def test_cannot_mint_an_org_wide_key(self, platform: Platform) -> None:
        """Omitting `project` cannot widen the key: the new key keeps the creator's project
        (keys.py _target_project), so it is 201 but still restricted."""
        tenant, scoped, ids = await self._project_key(platform)
        async with platform.client(scoped) as client:
            response = await client.post("/api/keys", json={"role": "viewer"})
            explicit_org = await client.post(
                "/api/keys", json={"role": "viewer", "org": tenant.org_name}
            )
        for created in (response, explicit_org):
            assert created.status_code == 201, created.text
            assert created.json()["project_id"] == ids["alpha"]
        async with platform.client(response.json()["key"]) as client:
            projects = (await client.get(f"/api/orgs/{tenant.org_name}/projects")).json()
        assert [p["name"] for p in projects] == ["alpha"]

    async def test_cannot_mint_in_another_org(self, platform: Platform) -> None:
        _, scoped, _ = await self._project_key(platform)
        other = await _org(platform, x=Role.OWNER)
        async with platform.client(scoped) as client:
            response = await client.post(
                "/api/keys", json={"org": other.org_name, "role": "viewer"}
            )
        assert_openai_error(response, 404, "not_found")

    async def test_cannot_revoke_keys_of_other_projects(self, platform: Platform) -> None:
        tenant, scoped, _ = await self._project_key(platform)
        victim = await platform.factory.key(
            user_id=tenant.users["adm"], org_id=tenant.org_id, role=Role.VIEWER
        )
        async with platform.client(scoped) as client:
            response = await client.delete(f"/api/keys/{victim.id}")
        assert_openai_error(response, 404, "not_found")


class TestExpiry:
    async def _expiring_key(self, platform: Platform, days: float) -> str:
        tenant = await _org(platform, adm=Role.ADMIN)
        key = await platform.factory.key(
            user_id=tenant.users["adm"],
            org_id=tenant.org_id,
            role=Role.ADMIN,
            expires_at=utcnow() + timedelta(days=days),
        )
        return key.key

    async def test_a_key_cannot_outlive_its_creator(self, platform: Platform) -> None:
        creator = await self._expiring_key(platform, days=1)
        async with platform.client(creator) as client:
            response = await client.post(
                "/api/keys", json={"role": "viewer", "expires_in_days": 30}
            )
        assert_openai_error(response, 403, "permission_denied")

    async def test_without_expiry_the_new_key_inherits_the_creators(
        self, platform: Platform
    ) -> None:
        creator = await self._expiring_key(platform, days=1)
        async with platform.client(creator) as client:
            me = (await client.get("/api/me")).json()
            created = await client.post("/api/keys", json={"role": "viewer"})
            listed = {k["id"]: k for k in (await client.get("/api/keys")).json()}
        assert created.status_code == 201, created.text
        expires = created.json()["expires_at"]
        assert expires is not None
        assert _parse(expires) == _parse(listed[me["key_id"]]["expires_at"])

    async def test_a_shorter_expiry_is_fine(self, platform: Platform) -> None:
        creator = await self._expiring_key(platform, days=2)
        async with platform.client(creator) as client:
            created = await client.post("/api/keys", json={"role": "viewer", "expires_in_days": 1})
        assert created.status_code == 201, created.text
        assert _parse(created.json()["expires_at"]) < utcnow() + timedelta(days=1, minutes=1)


class TestMassAssignment:
    @pytest.mark.parametrize(
        ("path", "body", "field"),
        [
            ("/api/orgs/{org}/projects", {"name": "p", "org_id": "org_x"}, "org_id"),
            ("/api/orgs/{org}/projects", {"name": "p", "id": "prj_x"}, "id"),
            ("/api/orgs/{org}/projects", {"name": "p", "role": "owner"}, "role"),
            (
                "/api/orgs/{org}/members",
                {"user": "zed", "role": "viewer", "user_id": "u"},
                "user_id",
            ),
            ("/api/orgs/{org}/members", {"user": "zed", "role": "viewer", "org_id": "o"}, "org_id"),
            (
                "/api/orgs/{org}/members",
                {"user": "zed", "role": "viewer", "is_operator": True},
                "is_operator",
            ),
            ("/api/keys", {"role": "viewer", "user_id": "usr_x"}, "user_id"),
            ("/api/keys", {"role": "viewer", "org_id": "org_x"}, "org_id"),
            ("/api/keys", {"role": "viewer", "is_operator": True}, "is_operator"),
            ("/api/keys", {"role": "viewer", "secret_hash": "0" * 64}, "secret_hash"),
            ("/api/keys", {"role": "viewer", "id": "0123456789abcdef"}, "id"),
            ("/api/keys", {"role": "viewer", "created_by": "usr_x"}, "created_by"),
            ("/api/keys", {"role": "viewer", "revoked_at": None}, "revoked_at"),
            ("/api/keys", {"role": "viewer", "expires_at": "2999-01-01T00:00:00Z"}, "expires_at"),
            ("/api/keys", {"role": "viewer", "project_id": "prj_x"}, "project_id"),
            ("/api/deployments", {"name": "d", "model": "m", "org_id": "org_x"}, "org_id"),
            ("/api/deployments", {"name": "d", "model": "m", "status": "ready"}, "status"),
            ("/api/models", {"name": "m", "uri": "file:///m", "owner_org_id": "o"}, "owner_org_id"),
            ("/api/models", {"name": "m", "uri": "file:///m", "source": "builtin"}, "source"),
        ],
    )
    async def test_server_decided_fields_are_422_naming_the_field(
        self, platform: Platform, path: str, body: dict[str, object], field: str
    ) -> None:
        tenant = await _org(platform, adm=Role.ADMIN)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        async with platform.client(admin) as client:
            response = await client.post(path.format(org=tenant.org_name), json=body)
            error = assert_openai_error(response, 422, "invalid_request_error")
            assert error["param"] == field, error
            keys = (await client.get("/api/keys")).json()
        assert len(keys) == 1

    @pytest.mark.parametrize(
        ("path", "body", "field"),
        [
            ("/api/orgs", {"name": "o", "is_operator": True}, "is_operator"),
            ("/api/orgs", {"name": "o", "id": "org_x"}, "id"),
            ("/api/keys", {"role": "operator", "is_operator": True}, "is_operator"),
            (
                "/api/datacenters",
                {
                    "id": "d",
                    "name": "d",
                    "country": "FR",
                    "operator_name": "o",
                    "operator_country": "FR",
                    "carbon_intensity": 1,
                    "created_at": "2000-01-01T00:00:00Z",
                },
                "created_at",
            ),
        ],
    )
    async def test_operator_routes_refuse_them_too(
        self, platform: Platform, path: str, body: dict[str, object], field: str
    ) -> None:
        async with platform.client(await platform.operator_key()) as client:
            response = await client.post(path, json=body)
        error = assert_openai_error(response, 422, "invalid_request_error")
        assert error["param"] == field, error

    async def test_patch_refuses_them(self, platform: Platform) -> None:
        tenant = await _org(platform, adm=Role.ADMIN)
        admin = await _key(platform, tenant, "adm", Role.ADMIN)
        async with platform.client(admin) as client:
            response = await client.patch(
                "/api/deployments/anything", json={"replicas": 1, "org_id": "org_x"}
            )
        error = assert_openai_error(response, 422, "invalid_request_error")
        assert error["param"] == "org_id"

    @pytest.mark.parametrize("field", ["org_id", "user_id", "project_id", "key_id", "is_operator"])
    async def test_v1_refuses_them_with_400(self, platform: Platform, field: str) -> None:
        tenant = await _org(platform, mem=Role.MEMBER)
        member = await _key(platform, tenant, "mem", Role.MEMBER)
        async with platform.client(member) as client:
            response = await client.post(
                "/v1/chat/completions", json=chat_body("any-model") | {field: "x"}
            )
        error = assert_openai_error(response, 400, "invalid_request_error")
        assert error["param"] == field
