"""Residency reports: per-site counts, each record checked against the policy in force at
its time, signed with the platform key and verifiable offline (tampering detected)."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.core.signing import load_public_key, verify
from souverain.db.tables import UsageRecordRow
from souverain.testing.factories import Tenant
from tests.conftest import Platform, on_one_database


async def record(
    platform: Platform,
    tenant: Tenant,
    *,
    at: datetime,
    dc: str,
    country: str,
    tokens: tuple[int, int] = (10, 5),
) -> str:
    """A settled usage record as the gateway writes it (used to set history in the past)."""
    record_id = new_id("req")
    async with platform.sessions.begin() as session:
        session.add(
            UsageRecordRow(
                id=record_id,
                org_id=tenant.org_id,
                project_id=tenant.project_id,
                key_id="k",
                user_id="u",
                endpoint="chat",
                model="m",
                stream=False,
                datacenter_id=dc,
                country=country,
                operator_country=country,
                certifications=[],
                jurisdictions=[country],
                status="ok",
                prompt_tokens=tokens[0],
                completion_tokens=tokens[1],
                server_id="test",
                created_at=at,
                settled_at=at,
            )
        )
    return record_id


async def set_ceiling(platform: Platform, tenant: Tenant, document: dict[str, object]) -> None:
    async with platform.client(await platform.operator_key()) as op:
        assert (
            await op.put(f"/api/orgs/{tenant.org_name}/policy", json=document)
        ).status_code == 200


class TestResidencyReport:
    async def test_report_counts_sites_and_checks_the_policy_in_force_at_the_time(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"aud": Role.AUDITOR})
        auditor = await platform.factory.member_key(tenant, "aud", Role.AUDITOR)
        start = datetime.now(UTC) - timedelta(seconds=5)
        before_policy = await record(platform, tenant, at=start, dc="us-east", country="US")
        await set_ceiling(platform, tenant, {"jurisdictions": ["EU"]})
        now = datetime.now(UTC)
        await record(platform, tenant, at=now, dc="fr-test", country="FR", tokens=(3, 4))
        await record(platform, tenant, at=now, dc="fr-test", country="FR", tokens=(1, 1))
        violating = await record(platform, tenant, at=now, dc="us-east", country="US")
        async with platform.client(auditor.key) as client:
            response = await client.get(
                f"/api/orgs/{tenant.org_name}/reports/residency",
                params={
                    "from": (start - timedelta(minutes=1)).isoformat(),
                    "to": (now + timedelta(minutes=1)).isoformat(),
                },
            )
            assert response.status_code == 200, response.text
            signed = response.json()
            public = load_public_key(
                (await client.get("/api/signing-key")).json()["public_key_pem"]
            )
        report = signed["document"]
        assert report["records"]["count"] == 4
        assert {
            (r["datacenter"], r["requests"], r["prompt_tokens"]) for r in report["by_datacenter"]
        } == {
            ("fr-test", 2, 4),
            ("us-east", 2, 20),
        }
        assert [v["record_id"] for v in report["violations"]] == [violating]
        assert before_policy not in json.dumps(report["violations"])
        assert report["compliant"] is False
        assert verify(signed, public)
        tampered = json.loads(json.dumps(signed))
        tampered["document"]["violations"] = []
        assert not verify(tampered, public)

    async def test_members_cannot_read_reports_and_other_orgs_get_404(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"m": Role.MEMBER})
        other = await platform.factory.tenant(roles={"o": Role.OWNER})
        member = await platform.factory.member_key(tenant, "m", Role.MEMBER)
        outsider = await platform.factory.member_key(other, "o", Role.OWNER)
        params = {"from": "2026-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z"}
        async with platform.client(member.key) as client:
            assert (
                await client.get(f"/api/orgs/{tenant.org_name}/reports/residency", params=params)
            ).status_code == 403
        async with platform.client(outsider.key) as client:
            assert (
                await client.get(f"/api/orgs/{tenant.org_name}/reports/residency", params=params)
            ).status_code == 404

    @on_one_database()
    async def test_cli_writes_and_verifies_offline(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER})
        owner = await platform.factory.member_key(tenant, "own", Role.OWNER)
        await record(platform, tenant, at=datetime.now(UTC), dc="fr-test", country="FR")
        env = {"SOUVERAIN_URL": platform.url, "SOUVERAIN_API_KEY": owner.key, "COLUMNS": "200"}

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            import os

            return subprocess.run(
                [sys.executable, "-m", "souverain.cli.main", *args],
                env={**os.environ, **env},
                capture_output=True,
                text=True,
                timeout=60,
            )

        report, pem = tmp_path / "report.json", tmp_path / "platform.pem"
        made = cli("reports", "residency", "--org", tenant.org_name, "-o", str(report))
        assert made.returncode == 0, made.stderr
        assert "no violation" in made.stdout
        assert cli("reports", "public-key", "-o", str(pem)).returncode == 0
        ok = cli("reports", "verify", str(report), "--public-key", str(pem))
        assert ok.returncode == 0 and "valid" in ok.stdout
        signed = json.loads(report.read_text())
        signed["document"]["by_country"][0]["requests"] += 1
        report.write_text(json.dumps(signed))
        bad = cli("reports", "verify", str(report), "--public-key", str(pem))
        assert bad.returncode == 1 and "INVALID" in bad.stderr
