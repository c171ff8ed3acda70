"""Roles, key minting and isolation between tenants."""

from __future__ import annotations

from souverain.core.roles import Role
from tests.conftest import Platform, wait_until


class TestKeyMinting:
    async def test_member_cannot_create_admin_key(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"mia": Role.MEMBER})
        member = await platform.factory.member_key(tenant, "mia", Role.MEMBER)
        async with platform.client(member.key) as client:
            response = await client.post("/api/keys", json={"role": "admin", "name": "escalate"})
            assert response.status_code == 403
            assert response.json()["error"]["code"] == "permission_denied"
            narrowed = await client.post("/api/keys", json={"role": "admin", "scopes": ["read"]})
            assert narrowed.status_code == 403

    async def test_member_can_create_a_narrower_key_that_works(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"mo": Role.MEMBER})
        member = await platform.factory.member_key(tenant, "mo", Role.MEMBER)
        async with platform.client(member.key) as client:
            created = await client.post("/api/keys", json={"role": "viewer", "name": "dashboards"})
            assert created.status_code == 201, created.text
            body = created.json()
            assert body["key"].startswith("sk-souv-") and body["scopes"] == ["read"]
        async with platform.client(body["key"]) as viewer:
            me = (await viewer.get("/api/me")).json()
            assert me["role"] == "viewer" and me["scopes"] == ["read"]
            listed = await viewer.get("/api/keys")
            assert all("key" not in k for k in listed.json())
            assert (await viewer.get("/v1/models")).status_code == 403

    async def test_admin_cannot_grant_owner(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"ada": Role.ADMIN})
        admin = await platform.factory.member_key(tenant, "ada", Role.ADMIN)
        async with platform.client(admin.key) as client:
            promoted = await client.post(
                f"/api/orgs/{tenant.org_name}/members", json={"user": "eve", "role": "owner"}
            )
            assert promoted.status_code == 403
            added = await client.post(
                f"/api/orgs/{tenant.org_name}/members", json={"user": "eve", "role": "member"}
            )
            assert added.status_code == 201

    async def test_admin_key_for_a_member_is_bounded_by_the_members_role(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"al": Role.ADMIN, "bo": Role.MEMBER})
        admin = await platform.factory.member_key(tenant, "al", Role.ADMIN)
        bo_name = f"bo-{tenant.org_name}"
        async with platform.client(admin.key) as client:
            too_high = await client.post("/api/keys", json={"user": bo_name, "role": "admin"})
            assert too_high.status_code == 403
            fine = await client.post("/api/keys", json={"user": bo_name, "role": "member"})
            assert fine.status_code == 201
            assert fine.json()["user"] == bo_name

    async def test_demoting_a_user_shrinks_their_existing_keys(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER, "dee": Role.ADMIN})
        owner = await platform.factory.member_key(tenant, "own", Role.OWNER)
        dee = await platform.factory.member_key(tenant, "dee", Role.ADMIN)
        async with platform.client(owner.key) as as_owner:
            demoted = await as_owner.post(
                f"/api/orgs/{tenant.org_name}/members",
                json={"user": f"dee-{tenant.org_name}", "role": "viewer"},
            )
            assert demoted.status_code == 201
        platform_keys_ttl = platform.settings.key_cache_ttl_s
        import asyncio

        await asyncio.sleep(platform_keys_ttl + 0.2)
        async with platform.client(dee.key) as as_dee:
            me = (await as_dee.get("/api/me")).json()
            assert me["scopes"] == ["read"]
            assert (
                await as_dee.post(f"/api/orgs/{tenant.org_name}/projects", json={"name": "x"})
            ).status_code == 403

    async def test_mass_assignment_is_refused(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"ma": Role.ADMIN})
        admin = await platform.factory.member_key(tenant, "ma", Role.ADMIN)
        async with platform.client(admin.key) as client:
            response = await client.post(
                f"/api/orgs/{tenant.org_name}/projects",
                json={"name": "p1", "org_id": "org_someone_else"},
            )
            assert response.status_code == 422
            assert response.json()["error"]["param"] == "org_id"


class TestIsolation:
    async def test_org_a_cannot_see_org_b(self, platform: Platform) -> None:
        a = await platform.factory.tenant(roles={"a": Role.OWNER})
        b = await platform.factory.tenant(roles={"b": Role.OWNER})
        key_a = await platform.factory.member_key(a, "a", Role.OWNER)
        key_b = await platform.factory.member_key(b, "b", Role.OWNER)
        async with platform.client(key_a.key) as client:
            for path in (
                f"/api/orgs/{b.org_name}",
                f"/api/orgs/{b.org_id}",
                f"/api/orgs/{b.org_name}/projects",
                f"/api/orgs/{b.org_name}/members",
            ):
                response = await client.get(path)
                assert response.status_code == 404, path
                assert b.org_name not in response.text
            assert (await client.get("/api/keys", params={"org": b.org_name})).status_code == 404
            assert (await client.get("/api/usage", params={"org": b.org_name})).status_code == 404
            assert (await client.delete(f"/api/keys/{key_b.id}")).status_code == 404
            assert (
                await client.post(f"/api/orgs/{b.org_name}/projects", json={"name": "x"})
            ).status_code == 404
            orgs = (await client.get("/api/orgs")).json()
            assert [o["name"] for o in orgs] == [a.org_name]
            own_keys = (await client.get("/api/keys")).json()
            assert key_b.id not in {k["id"] for k in own_keys}

    async def test_project_key_sees_only_its_project(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"pat": Role.ADMIN})
        admin = await platform.factory.member_key(tenant, "pat", Role.ADMIN)
        async with platform.client(admin.key) as client:
            await client.post(f"/api/orgs/{tenant.org_name}/projects", json={"name": "alpha"})
            await client.post(f"/api/orgs/{tenant.org_name}/projects", json={"name": "beta"})
            scoped = (
                await client.post("/api/keys", json={"project": "alpha", "role": "member"})
            ).json()
        async with platform.client(scoped["key"]) as client:
            names = [
                p["name"]
                for p in (await client.get(f"/api/orgs/{tenant.org_name}/projects")).json()
            ]
            assert names == ["alpha"]
            # a project key can only mint keys for its own project
            other = await client.post("/api/keys", json={"project": "beta", "role": "member"})
            assert other.status_code == 404

    async def test_operator_creates_org_with_owner_who_can_then_work(
        self, platform: Platform
    ) -> None:
        operator = await platform.factory.operator()
        async with platform.client(operator.key) as client:
            created = await client.post(
                "/api/orgs", json={"name": "ministere-test", "owner": "claire"}
            )
            assert created.status_code in (201, 409)
            key = await client.post(
                "/api/keys", json={"org": "ministere-test", "user": "claire", "role": "owner"}
            )
            assert key.status_code == 201, key.text
        async with platform.client(key.json()["key"]) as claire:
            me = (await claire.get("/api/me")).json()
            assert me["org"] == "ministere-test" and me["role"] == "owner"
            assert (await claire.post("/api/orgs", json={"name": "another"})).status_code == 403


class TestProjectPriority:
    """A project's priority is inherited by its keys; a key may ask for less (batch), never
    for more than its project (a batch project's keys are batch keys, whatever they ask)."""

    async def test_a_batch_projects_keys_are_batch_keys_whatever_they_ask(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"pia": Role.ADMIN, "mel": Role.MEMBER})
        admin = await platform.factory.member_key(tenant, "pia", Role.ADMIN)
        org = tenant.org_name
        async with platform.client(admin.key) as client:
            made = await client.post(
                f"/api/orgs/{org}/projects", json={"name": "nightly", "priority": "batch"}
            )
            assert made.status_code == 201 and made.json()["priority"] == "batch", made.text
            web = await client.post(f"/api/orgs/{org}/projects", json={"name": "web"})
            assert web.json()["priority"] == "interactive"
            asking = await client.post(
                "/api/keys", json={"project": "nightly", "priority": "interactive"}
            )
            plain = await client.post("/api/keys", json={"project": "web"})
            own = await client.post("/api/keys", json={"project": "web", "priority": "batch"})
            listed = (await client.get(f"/api/orgs/{org}/projects")).json()
            keys = {k["id"]: k for k in (await client.get("/api/keys")).json()}
        assert {p["name"]: p["priority"] for p in listed}["nightly"] == "batch"
        # the keys list shows the priority in effect, and the key's own beside it
        shown = keys[asking.json()["id"]]
        assert (shown["priority"], shown["priority_set"]) == ("batch", "interactive")
        assert asking.json()["priority"] == "batch"  # so does the created key's answer
        assert keys[plain.json()["id"]]["priority"] == "interactive"
        assert keys[own.json()["id"]]["priority"] == keys[own.json()["id"]]["priority_set"]
        assert await _priority(platform, asking.json()["key"]) == "batch"
        assert await _priority(platform, plain.json()["key"]) == "interactive"
        assert await _priority(platform, own.json()["key"]) == "batch"

    async def test_a_change_of_the_projects_priority_reaches_its_keys(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"ria": Role.ADMIN})
        admin = await platform.factory.member_key(tenant, "ria", Role.ADMIN)
        org = tenant.org_name
        async with platform.client(admin.key) as client:
            await client.post(f"/api/orgs/{org}/projects", json={"name": "etl"})
            scoped = (await client.post("/api/keys", json={"project": "etl"})).json()["key"]
            whole = (await client.post("/api/keys", json={})).json()["key"]  # the default one
            assert await _priority(platform, scoped) == "interactive"
            for project in ("etl", "default"):
                changed = await client.patch(
                    f"/api/orgs/{org}/projects/{project}", json={"priority": "batch"}
                )
                assert changed.status_code == 200 and changed.json()["priority"] == "batch"
            listed = (await client.get("/api/keys")).json()
        assert {k["priority"] for k in listed} == {"batch"}  # the project's, the default's
        assert {k["priority_set"] for k in listed} == {"interactive"}
        for key in (scoped, whole):  # within the key cache's lifetime
            await wait_until(lambda key=key: _is_batch(platform, key))

    async def test_a_batch_key_cannot_make_a_project_interactive(self, platform: Platform) -> None:
        """Its own key would follow its project: lifting the project would lift the key."""
        tenant = await platform.factory.tenant(roles={"bea": Role.ADMIN})
        admin = await platform.factory.member_key(tenant, "bea", Role.ADMIN)
        org = tenant.org_name
        async with platform.client(admin.key) as client:
            await client.post(
                f"/api/orgs/{org}/projects", json={"name": "bulk", "priority": "batch"}
            )
            made = await client.post("/api/keys", json={"project": "bulk", "role": "admin"})
            whole = await client.post("/api/keys", json={"role": "admin", "priority": "batch"})
        for key in (made.json()["key"], whole.json()["key"]):
            assert await _priority(platform, key) == "batch"
            async with platform.client(key) as batch:
                lifted = await batch.patch(
                    f"/api/orgs/{org}/projects/bulk", json={"priority": "interactive"}
                )
                assert lifted.status_code == 403, lifted.text
                error = lifted.json()["error"]
                assert error["code"] == "permission_denied" and "batch key" in error["message"]
                assert error["param"] == "priority"
                asked = await batch.post(
                    f"/api/orgs/{org}/projects", json={"name": "fast", "priority": "interactive"}
                )
                assert asked.status_code == 403, asked.text
                assert "batch key" in asked.json()["error"]["message"]
        async with platform.client(whole.json()["key"]) as batch:
            plain = await batch.post(f"/api/orgs/{org}/projects", json={"name": "later"})
            assert plain.status_code == 201 and plain.json()["priority"] == "batch", plain.text
            kept = await batch.patch(f"/api/orgs/{org}/projects/bulk", json={"priority": "batch"})
            assert kept.status_code == 200
        async with platform.client(admin.key) as client:
            listed = (await client.get(f"/api/orgs/{org}/projects")).json()
            assert {p["name"]: p["priority"] for p in listed}["bulk"] == "batch"
            plain = await client.post(f"/api/orgs/{org}/projects", json={"name": "web"})
            assert plain.json()["priority"] == "interactive"  # an interactive caller's default
            lifted = await client.patch(
                f"/api/orgs/{org}/projects/bulk", json={"priority": "interactive"}
            )
            assert lifted.status_code == 200 and lifted.json()["priority"] == "interactive"

    async def test_a_manager_batch_only_through_the_default_project_can_undo_it(
        self, platform: Platform
    ) -> None:
        """Keys of the whole organisation follow the default project: the manager who made
        it batch is then a batch caller, yet an interactive key of its own, and may lift it."""
        tenant = await platform.factory.tenant(roles={"cyd": Role.ADMIN})
        admin = await platform.factory.member_key(tenant, "cyd", Role.ADMIN)
        org = tenant.org_name
        async with platform.client(admin.key) as client:
            made = await client.patch(
                f"/api/orgs/{org}/projects/default", json={"priority": "batch"}
            )
            assert made.status_code == 200, made.text
            await wait_until(lambda: _is_batch(platform, admin.key))
            undone = await client.patch(
                f"/api/orgs/{org}/projects/default", json={"priority": "interactive"}
            )
            assert undone.status_code == 200, undone.text

    async def test_bad_priorities_and_members_are_refused(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"sia": Role.ADMIN, "tom": Role.MEMBER})
        admin = await platform.factory.member_key(tenant, "sia", Role.ADMIN)
        member = await platform.factory.member_key(tenant, "tom", Role.MEMBER)
        org = tenant.org_name
        async with platform.client(admin.key) as client:
            wrong = await client.post(
                f"/api/orgs/{org}/projects", json={"name": "x", "priority": "urgent"}
            )
            assert wrong.status_code == 422 and "priority" in wrong.text
            missing = await client.patch(
                f"/api/orgs/{org}/projects/nowhere", json={"priority": "batch"}
            )
            assert missing.status_code == 404
        async with platform.client(member.key) as client:
            refused = await client.patch(
                f"/api/orgs/{org}/projects/default", json={"priority": "interactive"}
            )
            assert refused.status_code == 403, refused.text


async def _priority(platform: Platform, key: str) -> str:
    async with platform.client(key) as client:
        return str((await client.get("/api/me")).json()["priority"])


async def _is_batch(platform: Platform, key: str) -> bool:
    return await _priority(platform, key) == "batch"
