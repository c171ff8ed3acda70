"""Service accounts: non-human principals of an organisation or a project that own keys,
with a role, an expiry and rotation (two keys valid during the overlap), shown apart from
people in the member list and the audit log."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from souverain.core.roles import Role
from souverain.db.audit import AuditEventRow
from souverain.db.identity import ServiceAccountRow
from souverain.db.tables import ApiKeyRow, utcnow
from souverain.testing.factories import Tenant, unique
from tests.conftest import Platform, wait_until


async def org_with_admin(platform: Platform) -> tuple[Tenant, str]:
    tenant = await platform.factory.tenant(roles={"ann": Role.ADMIN, "oli": Role.OWNER})
    return tenant, (await platform.factory.member_key(tenant, "ann", Role.ADMIN)).key


async def create(platform: Platform, key: str, org: str, **body: Any) -> Any:
    async with platform.client(key) as client:
        return await client.post(f"/api/orgs/{org}/service-accounts", json=body)


async def issue(
    platform: Platform, key: str, org: str, name: str, path: str = "keys", **body: Any
) -> Any:
    async with platform.client(key) as client:
        answer = await client.post(f"/api/orgs/{org}/service-accounts/{name}/{path}", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def status_of(platform: Platform, key: str) -> int:
    async with platform.client(key) as client:
        return (await client.get("/api/me")).status_code


class TestServiceAccounts:
    async def test_an_account_owns_keys_with_its_role_and_is_no_member(
        self, platform: Platform
    ) -> None:
        tenant, admin = await org_with_admin(platform)
        made = await create(platform, admin, tenant.org_name, name="ci", role="member")
        assert made.status_code == 201, made.text
        key = (await issue(platform, admin, tenant.org_name, "ci"))["key"]
        async with platform.client(key) as client:
            me = (await client.get("/api/me")).json()
            assert me["role"] == "member" and me["scopes"] == ["inference", "read"]
            members = (await client.get(f"/api/orgs/{tenant.org_name}/members")).json()
        assert me["user"] not in [m["user"] for m in members]
        async with platform.client(admin) as client:
            listed = (await client.get(f"/api/orgs/{tenant.org_name}/service-accounts")).json()
        assert [a["name"] for a in listed] == ["ci"] and len(listed[0]["keys"]) == 1

    async def test_issuing_its_keys_is_audited(self, platform: Platform) -> None:
        tenant, admin = await org_with_admin(platform)
        await create(platform, admin, tenant.org_name, name="bot", role="admin")
        key = (await issue(platform, admin, tenant.org_name, "bot"))["key"]
        async with platform.client(key) as client:
            made = await client.post(
                f"/api/orgs/{tenant.org_name}/projects", json={"name": unique("p")}
            )
        assert made.status_code == 201, made.text
        query = select(AuditEventRow).where(
            AuditEventRow.org_id == tenant.org_id, AuditEventRow.action == "service_account.key"
        )
        async with platform.sessions() as session:
            event = (await session.execute(query)).scalars().one()
        assert event.actor_type == "key"  # issued by a person
        assert json.loads(event.details)["name"] == "bot"

    async def test_nobody_grants_an_account_more_than_they_hold(self, platform: Platform) -> None:
        tenant, admin = await org_with_admin(platform)
        refused = await create(platform, admin, tenant.org_name, name="boss", role="owner")
        assert refused.status_code == 403
        refused = await create(platform, admin, tenant.org_name, name="op", role="operator")
        assert refused.status_code == 403

    async def test_a_project_account_acts_in_its_project_only(self, platform: Platform) -> None:
        tenant, admin = await org_with_admin(platform)
        async with platform.client(admin) as client:
            project = await client.post(
                f"/api/orgs/{tenant.org_name}/projects", json={"name": "lab"}
            )
        assert project.status_code == 201
        made = await create(
            platform, admin, tenant.org_name, name="lab-bot", role="admin", project="lab"
        )
        assert made.status_code == 201 and made.json()["project"] == "lab"
        key = (await issue(platform, admin, tenant.org_name, "lab-bot"))["key"]
        async with platform.client(key) as client:
            me = (await client.get("/api/me")).json()
            projects = (await client.get(f"/api/orgs/{tenant.org_name}/projects")).json()
        assert me["project_id"] == project.json()["id"] and me["role"] == "admin"
        assert [p["name"] for p in projects] == ["lab"]

    async def test_rotation_keeps_two_keys_during_the_overlap_then_one(
        self, platform: Platform
    ) -> None:
        tenant, admin = await org_with_admin(platform)
        await create(platform, admin, tenant.org_name, name="deploy", role="member")
        old = (await issue(platform, admin, tenant.org_name, "deploy"))["key"]
        rotated = await issue(
            platform, admin, tenant.org_name, "deploy", path="keys/rotate", overlap_hours=1
        )
        new = rotated["key"]
        assert await status_of(platform, old) == 200 and await status_of(platform, new) == 200
        ends = rotated["previous"][0]["expires_at"]
        assert ends is not None
        # The overlap passes (the clock is the database's: move the old key's end to now).
        old_id = old.removeprefix("sk-souv-").split("_")[0]
        async with platform.sessions.begin() as session:
            await session.execute(
                update(ApiKeyRow).where(ApiKeyRow.id == old_id).values(expires_at=utcnow())
            )

        async def only_new() -> bool:
            return await status_of(platform, old) == 401 and await status_of(platform, new) == 200

        await wait_until(only_new)

    async def test_keys_stop_when_the_account_expires_or_is_deleted(
        self, platform: Platform
    ) -> None:
        tenant, admin = await org_with_admin(platform)
        made = await create(
            platform, admin, tenant.org_name, name="temp", role="viewer", expires_in_days=1
        )
        key = (await issue(platform, admin, tenant.org_name, "temp", expires_in_days=30))["key"]
        assert (await status_of(platform, key)) == 200
        issued_until = made.json()["expires_at"]
        assert issued_until is not None
        async with platform.sessions.begin() as session:
            await session.execute(
                update(ServiceAccountRow)
                .where(ServiceAccountRow.user_id == made.json()["id"])
                .values(expires_at=utcnow() - timedelta(seconds=1))
            )

        async def refused() -> bool:
            return await status_of(platform, key) == 401

        await wait_until(refused)
        await create(platform, admin, tenant.org_name, name="gone", role="viewer")
        doomed = (await issue(platform, admin, tenant.org_name, "gone"))["key"]
        async with platform.client(admin) as client:
            deleted = await client.delete(f"/api/orgs/{tenant.org_name}/service-accounts/gone")
        assert deleted.status_code == 204

        async def doomed_refused() -> bool:
            return await status_of(platform, doomed) == 401

        await wait_until(doomed_refused)

    async def test_an_account_outlives_the_key_of_the_person_who_set_it_up(
        self, platform: Platform
    ) -> None:
        tenant, admin = await org_with_admin(platform)
        await create(platform, admin, tenant.org_name, name="nightly", role="member")
        key = (await issue(platform, admin, tenant.org_name, "nightly"))["key"]
        owner = (await platform.factory.member_key(tenant, "oli", Role.OWNER)).key
        async with platform.client(owner) as client:
            gone = await client.delete(f"/api/orgs/{tenant.org_name}/members/ann-{tenant.org_name}")
        assert gone.status_code == 204, gone.text
        assert await status_of(platform, key) == 200

    async def test_the_audit_log_shows_what_an_account_did_apart_from_people(
        self, platform: Platform
    ) -> None:
        tenant, admin = await org_with_admin(platform)
        await create(platform, admin, tenant.org_name, name="builder", role="admin")
        key = (await issue(platform, admin, tenant.org_name, "builder"))["key"]
        async with platform.client(key) as client:
            made = await client.post(f"/api/orgs/{tenant.org_name}/projects", json={"name": "x"})
            assert made.status_code == 201, made.text
        async with platform.client(admin) as client:
            listed = await client.get(
                "/api/audit", params={"org": tenant.org_name, "action": "project.create"}
            )
        events = listed.json()["events"]
        assert [e["actor_type"] for e in events] == ["service_account"]
        assert json.dumps(events[0]).find(tenant.org_id) >= 0
