"""Retention windows, enforced by the controller's sweep: old files, usage records and
audit events go (files from their store too), every removal is audited, and the audit chain
still verifies across the stubs the window leaves."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import openai
from sqlalchemy import func, select, update

from souverain.core.roles import Role
from souverain.db.audit import AuditEventRow
from souverain.db.jobs import FileRow
from souverain.db.tables import UsageRecordRow, utcnow
from souverain.evidence import audit_log
from souverain.retention.sweep import RetentionSweep
from souverain.server.app import installation_signing_key
from tests.conftest import Platform, usage_records


class TestRetentionSweep:
    async def test_old_data_goes_audited_and_the_chain_still_verifies(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER})
        owner = await platform.factory.member_key(tenant, "own", Role.OWNER)
        model = await platform.served_model(owner_org_id=tenant.org_id)
        client = openai.AsyncOpenAI(
            base_url=f"{platform.url}/v1", api_key=owner.key, max_retries=0, timeout=60
        )
        kept = [await client.files.create(file=(f"n{i}.txt", b"notes"), purpose="user_data")
                for i in range(3)]  # fmt: skip
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
        await usage_records(platform.sessions, 1, org_id=tenant.org_id)
        async with platform.sessions.begin() as session:  # older than any open invoice
            await session.execute(
                update(UsageRecordRow)
                .where(UsageRecordRow.org_id == tenant.org_id)
                .values(created_at=utcnow() - timedelta(days=70))
            )
        async with platform.client(owner.key) as http:
            windows = {"files_days": 1, "usage_days": 1, "audit_days": 1}
            answer = await http.put(f"/api/orgs/{tenant.org_name}/data-controls",
                                    json={"retention": windows})  # fmt: skip
            assert answer.status_code == 200, answer.text
        objects = await _objects(platform, tenant.org_id)
        assert len(objects) == 3 and all(path.exists() for path in objects)
        key = await installation_signing_key(platform.settings, platform.sessions)
        async with platform.sessions.begin() as session:
            await audit_log.seal(session, signing_key=key)

        sweep = RetentionSweep(platform.sessions, signing_key=key, chunk=2)  # several chunks
        swept = await sweep.run_once(now=utcnow() + timedelta(days=2))

        assert swept.counts["files"] == 3 and swept.counts["usage_records"] >= 1
        assert swept.counts["audit_events"] > 0
        for file in kept:  # gone for the API, and from the store
            try:
                await client.files.retrieve(file.id)
                raise AssertionError("a file past its window is still served")
            except openai.NotFoundError:
                pass
        assert not any(path.exists() for path in objects)
        async with platform.sessions() as session:
            left = select(func.count()).where(UsageRecordRow.org_id == tenant.org_id)
            assert (await session.execute(left)).scalar_one() == 0
            reasons = select(func.count()).where(
                AuditEventRow.org_id == tenant.org_id,
                AuditEventRow.action == "retention.audit",
            )
            assert (await session.execute(reasons)).scalar_one() >= 1
        async with platform.client(await platform.operator_key()) as op:
            verdict = (await op.get("/api/audit/verify")).json()
        assert verdict["ok"], verdict["problems"]
        assert verdict["redacted"] >= swept.counts["audit_events"]
        async with platform.client(owner.key) as http:  # the tenant sees the removals only
            events = (await http.get("/api/audit", params={"org": tenant.org_name})).json()
        actions = {e["action"] for e in events["events"]}
        assert "data_controls.set" not in actions and "retention.audit" in actions

    async def test_a_stub_nobody_vouched_for_breaks_the_chain(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER})
        owner = await platform.factory.member_key(tenant, "own", Role.OWNER)
        async with platform.client(owner.key) as http:
            await http.put(f"/api/orgs/{tenant.org_name}/data-controls", json={})
        key = await installation_signing_key(platform.settings, platform.sessions)
        async with platform.sessions.begin() as session:
            await audit_log.seal(session, signing_key=key)
            event = (
                (
                    await session.execute(
                        select(AuditEventRow).where(AuditEventRow.org_id == tenant.org_id)
                    )
                )
                .scalars()
                .first()
            )
            assert event is not None
            event.redacted, event.details, event.action = True, "", ""  # removed by hand
        async with platform.client(await platform.operator_key()) as op:
            verdict = (await op.get("/api/audit/verify")).json()
        assert not verdict["ok"]
        assert any("removed without a sealed retention record" in p for p in verdict["problems"])
        async with platform.sessions.begin() as session:  # put it back for the other tests
            row = await session.get(AuditEventRow, event.seq)
            assert row is not None
            row.redacted, row.details, row.action = False, "{}", "data_controls.set"


async def _objects(platform: Platform, org_id: str) -> list[Path]:
    async with platform.sessions() as session:
        rows = (await session.execute(select(FileRow).where(FileRow.org_id == org_id))).scalars()
        return [Path(r.store_uri.removeprefix("file://")) / r.object_key for r in rows]
