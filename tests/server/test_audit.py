"""The audit log: mutations, refusals and floods recorded; tenants see only their own;
the chain detects every kind of tampering; pruning keeps it verifiable; fail-closed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.audit import event_hash, verify_chain
from souverain.core.roles import Role
from souverain.core.signing import load_public_key
from souverain.db.audit import AuditEventRow, AuditHeadRow
from souverain.db.engine import create_engine_unpooled, session_factory, upgrade
from souverain.db.tables import ProjectRow, utcnow
from souverain.evidence import audit, audit_log
from souverain.installation.signing import installation_key
from tests.conftest import Platform, on_one_database, wait_until


async def events(platform: Platform, key: str, **params: object) -> list[dict[str, object]]:
    async with platform.client(key) as client:
        response = await client.get("/api/audit", params={"limit": 10_000, **params})
        assert response.status_code == 200, response.text
        return list(response.json()["events"])


class TestRecording:
    async def test_mutations_are_recorded_with_actor_and_without_secrets(
        self, platform: Platform
    ) -> None:
        operator = await platform.factory.operator()
        async with platform.client(operator.key) as client:
            org = (
                await client.post(
                    "/api/orgs", json={"name": f"aud-{operator.id[:6]}", "owner": "ana"}
                )
            ).json()
            created = (
                await client.post(
                    "/api/keys", json={"org": org["name"], "user": "ana", "role": "owner"}
                )
            ).json()
            await client.put(f"/api/orgs/{org['name']}/policy", json={"jurisdictions": ["EU"]})
        found = [e for e in await events(platform, operator.key) if e["org_id"] == org["id"]]
        actions = [e["action"] for e in found]
        assert actions[:3] == ["org.create", "key.create", "policy.ceiling.set"]
        assert all(e["actor_key_id"] == operator.id and e["outcome"] == "success" for e in found)
        key_event = found[1]
        assert key_event["target_id"] == created["id"]
        assert created["key"].split("_", 1)[1] not in json.dumps(found)  # never the secret

    async def test_tenants_see_only_their_own_events_and_members_none(
        self, platform: Platform
    ) -> None:
        a = await platform.factory.tenant(roles={"adm": Role.ADMIN, "mem": Role.MEMBER})
        b = await platform.factory.tenant(roles={"adm": Role.ADMIN})
        admin_a = await platform.factory.member_key(a, "adm", Role.ADMIN)
        admin_b = await platform.factory.member_key(b, "adm", Role.ADMIN)
        member_a = await platform.factory.member_key(a, "mem", Role.MEMBER)
        async with platform.client(admin_b.key) as client:
            await client.post(f"/api/orgs/{b.org_name}/projects", json={"name": "secret-b"})
        async with platform.client(admin_a.key) as client:
            await client.post(f"/api/orgs/{a.org_name}/projects", json={"name": "visible-a"})
            assert (await client.get("/api/audit", params={"org": b.org_name})).status_code == 404
            jsonl = (await client.get("/api/audit", params={"format": "jsonl"})).text
        seen = await events(platform, admin_a.key)
        assert seen and all(e["org_id"] == a.org_id for e in seen)
        assert "secret-b" not in json.dumps(seen)
        assert [json.loads(line)["seq"] for line in jsonl.splitlines()] == [e["seq"] for e in seen]
        async with platform.client(member_a.key) as client:
            assert (await client.get("/api/audit")).status_code == 403

    async def test_failed_authentications_are_aggregated(self, platform: Platform) -> None:
        operator = await platform.operator_key()
        bogus = "sk-souv-00000000deadbeef_" + "A" * 43
        async with platform.client(bogus) as client:
            for _ in range(40):
                assert (await client.get("/api/me")).status_code == 401

        async def counted() -> bool:
            rows = [
                e
                for e in await events(platform, operator, action="auth.failed")
                if e["target_id"] == "key:00000000deadbeef"
            ]
            return sum(json.loads(str(e["details"]))["count"] for e in rows) == 40

        await wait_until(counted, timeout_s=5)
        rows = [
            e
            for e in await events(platform, operator, action="auth.failed")
            if e["target_id"] == "key:00000000deadbeef"
        ]
        assert len(rows) <= 3  # 40 failures, a handful of rows
        assert "A" * 43 not in json.dumps(rows)

    async def test_denied_changes_and_sovereignty_refusals_are_recorded(
        self, platform: Platform
    ) -> None:
        model = await platform.served_model()
        tenant = await platform.factory.tenant(roles={"m": Role.MEMBER, "a": Role.ADMIN})
        member = await platform.factory.member_key(tenant, "m", Role.MEMBER)
        admin = await platform.factory.member_key(tenant, "a", Role.ADMIN)
        async with platform.client(member.key) as client:
            assert (await client.post("/api/keys", json={"role": "admin"})).status_code == 403
        async with platform.client(await platform.operator_key()) as client:
            await client.put(f"/api/orgs/{tenant.org_name}/policy", json={"jurisdictions": ["US"]})
        async with platform.client(admin.key) as client:
            widen = await client.put(  # DE is outside the organisation's US ceiling
                f"/api/orgs/{tenant.org_name}/projects/default/policy",
                json={"jurisdictions": ["US", "DE"]},
            )
            assert widen.status_code == 403
            await asyncio.sleep(0.5)
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 451

        async def recorded() -> bool:
            seen = await events(platform, admin.key)
            actions = {(e["action"], e["target_id"]) for e in seen}
            return {("change.denied", f"key:{member.id}"), ("change.denied", f"key:{admin.id}"),
                    ("sovereignty.refused", f"model:{model}")} <= actions  # fmt: skip

        await wait_until(recorded, timeout_s=5)
        denied = [
            e
            for e in await events(platform, admin.key, action="change.denied")
            if e["target_id"] == f"key:{admin.id}"
        ]
        assert "may only narrow" in json.loads(str(denied[0]["details"]))["reason"]

    async def test_report_generation_is_recorded(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"aud": Role.AUDITOR})
        auditor = await platform.factory.member_key(tenant, "aud", Role.AUDITOR)
        async with platform.client(auditor.key) as client:
            params = {"from": "2026-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"}
            assert (
                await client.get(f"/api/orgs/{tenant.org_name}/reports/residency", params=params)
            ).status_code == 200
        assert [e["action"] for e in await events(platform, auditor.key)] == ["report.residency"]


class TestFailClosed:
    async def test_no_audit_event_means_no_change(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"a": Role.ADMIN})
        admin = await platform.factory.member_key(tenant, "a", Role.ADMIN)
        async with platform.sessions.begin() as session:
            head = (await session.execute(select(AuditHeadRow))).scalar_one()
            saved = (head.last_seq, head.last_hash)
            await session.execute(delete(AuditHeadRow))
        try:
            async with platform.client(admin.key) as client:
                response = await client.post(
                    f"/api/orgs/{tenant.org_name}/projects", json={"name": "unaudited"}
                )
            assert response.status_code == 503
            async with platform.sessions() as session:
                rows = (
                    await session.execute(select(ProjectRow).where(ProjectRow.name == "unaudited"))
                ).all()
            assert rows == []
        finally:
            async with platform.sessions.begin() as session:
                session.add(AuditHeadRow(id=1, last_seq=saved[0], last_hash=saved[1]))


@dataclass
class Chain:
    sessions: async_sessionmaker[AsyncSession]
    key: Ed25519PrivateKey

    async def verdict(self):  # type: ignore[no-untyped-def]
        async with self.sessions() as session:
            rows = (
                await session.execute(select(AuditEventRow).order_by(AuditEventRow.seq))
            ).scalars()
            chain = [audit_log.as_dict(r) for r in rows]
            seals = [
                audit_log.seal_dict(r)
                for r in (await session.execute(select(audit_log.AuditSealRow))).scalars()
            ]
            head = (await session.execute(select(AuditHeadRow.last_seq))).scalar_one()
        return verify_chain(chain, seals, self.key.public_key(), head_seq=head)

    async def execute(self, statement) -> None:  # type: ignore[no-untyped-def]
        async with self.sessions.begin() as session:
            await session.execute(statement)


@pytest.fixture
async def chain(tmp_path: Path) -> AsyncIterator[Chain]:
    """A database of its own, so that tampering cannot disturb anything else."""
    engine = create_engine_unpooled(f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}")
    await upgrade(engine)
    sessions = session_factory(engine)
    key = Ed25519PrivateKey.generate()
    async with sessions.begin() as session:
        for i in range(10):
            await audit.record(
                session,
                actor=audit.Actor("key", "usr_x", "k1"),
                action="thing.do",
                target_id=f"t{i}",
            )
        await audit_log.seal(session, signing_key=key)  # seals seq 10
        for i in range(10, 13):
            await audit.record(
                session, actor=audit.SYSTEM_CONTROLLER, action="thing.do", target_id=f"t{i}"
            )
    yield Chain(sessions, key)
    await engine.dispose()


class TestTamperEvidence:
    async def test_an_intact_chain_verifies(self, chain: Chain) -> None:
        verdict = await chain.verdict()
        assert verdict.ok, verdict.problems
        assert (verdict.events, verdict.last_sealed_seq, verdict.last_seq) == (13, 10, 13)

    async def test_an_edited_event_is_detected(self, chain: Chain) -> None:
        await chain.execute(
            update(AuditEventRow).where(AuditEventRow.seq == 4).values(action="thing.undo")
        )
        verdict = await chain.verdict()
        assert not verdict.ok and any("seq 4" in p and "edited" in p for p in verdict.problems)

    async def test_an_edited_event_with_a_recomputed_hash_is_detected(self, chain: Chain) -> None:
        async with chain.sessions.begin() as session:
            row = await session.get(AuditEventRow, 4)
            assert row is not None
            row.details = '{"forged":true}'
            row.hash = event_hash(audit_log.as_dict(row))
        verdict = await chain.verdict()
        assert not verdict.ok and any("seq 5" in p for p in verdict.problems)

    async def test_a_deleted_event_is_detected(self, chain: Chain) -> None:
        await chain.execute(delete(AuditEventRow).where(AuditEventRow.seq == 6))
        verdict = await chain.verdict()
        assert not verdict.ok and any("missing" in p for p in verdict.problems)

    async def test_an_inserted_event_is_detected(self, chain: Chain) -> None:
        async with chain.sessions.begin() as session:
            forged = audit_log.as_dict(await session.get(AuditEventRow, 5))  # type: ignore[arg-type]
            await session.execute(
                update(AuditEventRow)
                .where(AuditEventRow.seq > 5)
                .values(seq=AuditEventRow.seq + 100)
            )
            forged |= {"seq": 6, "target_id": "forged"}
            forged["hash"] = event_hash(forged)
            session.add(AuditEventRow(**forged))
        verdict = await chain.verdict()
        assert not verdict.ok

    async def test_reordered_events_are_detected(self, chain: Chain) -> None:
        async with chain.sessions.begin() as session:
            await session.execute(
                update(AuditEventRow).where(AuditEventRow.seq == 3).values(seq=1000)
            )
            await session.execute(update(AuditEventRow).where(AuditEventRow.seq == 7).values(seq=3))
            await session.execute(
                update(AuditEventRow).where(AuditEventRow.seq == 1000).values(seq=7)
            )
        verdict = await chain.verdict()
        assert not verdict.ok and any("prev_hash" in p or "edited" in p for p in verdict.problems)

    async def test_truncation_after_the_last_seal_is_detected(self, chain: Chain) -> None:
        await chain.execute(delete(AuditEventRow).where(AuditEventRow.seq > 11))
        verdict = await chain.verdict()
        assert not verdict.ok and any("truncated" in p for p in verdict.problems)

    async def test_truncation_of_sealed_events_is_detected_even_with_a_rewritten_head(
        self, chain: Chain
    ) -> None:
        await chain.execute(delete(AuditEventRow).where(AuditEventRow.seq > 8))
        await chain.execute(update(AuditHeadRow).values(last_seq=8))
        verdict = await chain.verdict()
        assert not verdict.ok and any("seal covers seq 10" in p for p in verdict.problems)

    async def test_a_forged_seal_is_detected(self, chain: Chain) -> None:
        await chain.execute(update(audit_log.AuditSealRow).values(signature="00" * 64))
        verdict = await chain.verdict()
        assert not verdict.ok and any("invalid signature" in p for p in verdict.problems)


class TestPruning:
    async def test_pruning_removes_whole_sealed_segments_and_stays_verifiable(
        self, tmp_path: Path
    ) -> None:
        engine = create_engine_unpooled(f"sqlite+aiosqlite:///{tmp_path / 'prune.db'}")
        await upgrade(engine)
        sessions = session_factory(engine)
        key = Ed25519PrivateKey.generate()
        old, now = utcnow() - timedelta(days=500), utcnow()
        async with sessions.begin() as session:
            for i in range(5):
                await audit.record(
                    session, actor=audit.SYSTEM_CONTROLLER, action="old", target_id=str(i), now=old
                )
            await audit_log.seal(session, signing_key=key, now=old)  # seals seq 5
            for i in range(3):
                await audit.record(
                    session, actor=audit.SYSTEM_CONTROLLER, action="old", target_id=str(i), now=old
                )
            for i in range(2):
                await audit.record(
                    session,
                    actor=audit.SYSTEM_CONTROLLER,
                    action="recent",
                    target_id=str(i),
                    now=now,
                )
            pruned = await audit_log.prune(session, retention_days=400, now=now)
        assert pruned == 5  # seq 6-8 are old too, but not a whole sealed segment: kept
        verdict = await Chain(sessions, key).verdict()
        assert verdict.ok, verdict.problems
        assert verdict.first_seq == 6
        async with sessions() as session:
            last = (
                (await session.execute(select(AuditEventRow).order_by(AuditEventRow.seq.desc())))
                .scalars()
                .first()
            )
        assert last is not None and last.action == "audit.prune"
        await engine.dispose()


@on_one_database()
async def test_the_cli_verifies_the_live_chain(platform: Platform, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    operator = await platform.operator_key()
    key = await _platform_key(platform)
    async with platform.sessions.begin() as session:
        await audit_log.seal(session, signing_key=key)
    env = {
        **os.environ,
        "SOUVERAIN_URL": platform.url,
        "SOUVERAIN_API_KEY": operator,
        "COLUMNS": "200",
    }
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "souverain.cli.main", "audit", "verify"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "intact" in result.stdout


async def _platform_key(platform: Platform) -> Ed25519PrivateKey:
    return await installation_key(platform.sessions, master_key=platform.master_key, key_file=None)


async def test_concurrent_changes_form_one_intact_chain(platform: Platform) -> None:
    tenant = await platform.factory.tenant(roles={"a": Role.ADMIN})
    admin = await platform.factory.member_key(tenant, "a", Role.ADMIN)
    async with platform.client(admin.key) as client:
        created = await asyncio.gather(
            *(
                client.post(f"/api/orgs/{tenant.org_name}/projects", json={"name": f"p{i}"})
                for i in range(20)
            )
        )
    assert all(r.status_code == 201 for r in created)
    operator = (await platform.factory.operator()).key
    async with platform.client(operator) as client:
        page = (await client.get("/api/audit/chain")).json()
        public = load_public_key((await client.get("/api/signing-key")).json()["public_key_pem"])
    verdict = verify_chain(page["events"], page["seals"], public, head_seq=page["head_seq"])
    assert verdict.ok, verdict.problems
    seqs = [e["seq"] for e in page["events"] if e["org_id"] == tenant.org_id]
    assert len(seqs) == 20 and len(set(seqs)) == 20
