"""Erasure with a certificate: erasing an organisation returns a certificate signed by the
installation's key, listing what was erased and where; it verifies offline and fails once
altered; erasing again answers the same certificate; the erased objects are gone from the
stores; only owners and operators may erase (others 403/404, each refusal audited)."""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path

from sqlalchemy import select

from souverain.core.roles import Role
from souverain.core.signing import load_public_key, verify
from souverain.db.jobs import FileRow
from tests.conftest import Platform, wait_until
from tests.server.test_cli_coverage import cli
from tests.server.test_exports import populated, public_key_pem


async def _objects(platform: Platform, org_id: str) -> list[Path]:
    async with platform.sessions() as session:
        rows = (await session.execute(select(FileRow).where(FileRow.org_id == org_id))).scalars()
        return [Path(r.store_uri.removeprefix("file://")) / r.object_key for r in rows]


class TestErasureCertificate:
    async def test_the_certificate_lists_what_went_and_verifies_offline(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        tenant, owner, uploaded = await populated(platform, "CANARY-GONE-55e1")
        objects = await _objects(platform, tenant.org_id)
        assert objects and all(path.exists() for path in objects)
        async with platform.client(owner) as http:
            erased = await http.post(f"/api/orgs/{tenant.org_name}/crypto-erase")
            assert erased.status_code == 200, erased.text
            kept = await http.get(f"/api/orgs/{tenant.org_name}/erasure-certificate")
        signed = erased.json()["certificate"]
        assert kept.json() == signed
        key = load_public_key(await public_key_pem(platform, owner))
        assert verify(signed, key)
        document = signed["document"]
        assert document["organisation"]["id"] == tenant.org_id
        assert set(uploaded) <= set(document["erased"]["files"]["ids"])
        assert document["erased"]["files"]["count"] == len(document["erased"]["files"]["ids"])
        assert document["crypto_erased_key"]["key_id"] in document["erased"]["keys"]["ids"]
        assert document["datacenters"] == ["files-fr"] and document["stores"]
        assert document["objects_deleted"] >= len(uploaded)
        assert not any(path.exists() for path in objects)  # deleted, not only unreadable
        store = Path(platform.settings.file_stores["files-fr"].removeprefix("file://"))
        left = await asyncio.to_thread(
            lambda: [p.read_bytes() for p in store.iterdir() if p.is_file()]
        )
        assert not any(b"CANARY-GONE-55e1" in data for data in left)  # none in clear

        tampered = copy.deepcopy(signed)
        tampered["document"]["erased"]["files"]["count"] -= 1
        assert not verify(tampered, key)
        pem, good, bad = tmp_path / "key.pem", tmp_path / "good.json", tmp_path / "bad.json"
        pem.write_text(await public_key_pem(platform, owner))
        good.write_text(json.dumps(signed))
        bad.write_text(json.dumps(tampered))
        ok = await cli(platform, owner, "erasure", "verify", str(good), "--public-key", str(pem))
        assert ok.returncode == 0, ok.stderr
        refused = await cli(
            platform, owner, "erasure", "verify", str(bad), "--public-key", str(pem)
        )
        assert refused.returncode == 1 and "INVALID" in refused.stderr

    async def test_erasing_twice_answers_the_same_certificate(self, platform: Platform) -> None:
        tenant, owner, _ = await populated(platform, "CANARY-TWICE")
        async with platform.client(owner) as http:
            first = await http.post(f"/api/orgs/{tenant.org_name}/crypto-erase")
            second = await http.post(f"/api/orgs/{tenant.org_name}/crypto-erase")
        assert first.status_code == second.status_code == 200, second.text
        assert second.json()["certificate"] == first.json()["certificate"]
        assert second.json()["files"] == first.json()["files"] > 0
        shown = await cli(platform, owner, "erasure", "certificate", "--org", tenant.org_name)
        assert shown.returncode == 0, shown.stderr
        assert first.json()["certificate"]["signature"]["value"] in shown.stdout.replace("\n", "")

    async def test_only_owners_and_operators_erase(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER, "adm": Role.ADMIN})
        admin = (await platform.factory.member_key(tenant, "adm", Role.ADMIN)).key
        stranger = await platform.factory.tenant(roles={"own": Role.OWNER})
        outsider = (await platform.factory.member_key(stranger, "own", Role.OWNER)).key
        async with platform.client(admin) as http:
            refused = await http.post(f"/api/orgs/{tenant.org_name}/crypto-erase")
            never = await http.get(f"/api/orgs/{tenant.org_name}/erasure-certificate")
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "permission_denied"
        assert never.status_code == 404
        async with platform.client(outsider) as http:
            hidden = await http.post(f"/api/orgs/{tenant.org_name}/crypto-erase")
            unseen = await http.get(f"/api/orgs/{tenant.org_name}/erasure-certificate")
        assert hidden.status_code == 404 and unseen.status_code == 404

        async def refusals_audited() -> bool:
            async with platform.client(await platform.operator_key()) as http:
                events = (await http.get("/api/audit", params={"action": "erasure.refused"})).json()
            return {tenant.org_id, stranger.org_id} <= {e["org_id"] for e in events["events"]}

        await wait_until(refusals_audited)
