"""Exports: an owner takes everything the organisation has in one tar archive whose signed
manifest lists every object's SHA-256; the archive verifies offline, holds no key secret
and nothing of another organisation, and any changed byte fails the check. Only owners
and operators may ask for it or read it; an erased organisation has nothing to export."""

from __future__ import annotations

import asyncio
import hashlib
import json
import tarfile
from pathlib import Path

import openai

from souverain.core.exports import verify_archive
from souverain.core.roles import Role
from souverain.core.signing import load_public_key
from souverain.jobs.exports.runner import ExportRunner
from souverain.server.app import installation_signing_key
from souverain.testing.factories import Tenant
from tests.conftest import Platform, on_one_database, usage_records, wait_until
from tests.server.test_cli_coverage import cli


def sdk(platform: Platform, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60)


async def runner(platform: Platform) -> ExportRunner:
    key = await installation_signing_key(platform.settings, platform.sessions)
    return ExportRunner(
        platform.sessions, master_key=platform.master_key, signing_key=key,
        file_stores=platform.settings.file_stores or {},
    )  # fmt: skip


async def public_key_pem(platform: Platform, key: str) -> str:
    async with platform.client(key) as http:
        return str((await http.get("/api/signing-key")).json()["public_key_pem"])


async def exported(platform: Platform, tenant: Tenant, owner: str, into: Path) -> dict[str, object]:
    """Ask for an export, let the controller's runner write it, download it to `into`."""
    async with platform.client(owner) as http:
        asked = await http.post(f"/api/orgs/{tenant.org_name}/exports")
        assert asked.status_code == 202, asked.text
        assert asked.json()["status"] == "queued"
        export_id = asked.json()["id"]
        assert await (await runner(platform)).run_once() >= 1
        found = (await http.get(f"/api/orgs/{tenant.org_name}/exports/{export_id}")).json()
        assert found["status"] == "succeeded", found
        content = await http.get(f"/api/orgs/{tenant.org_name}/exports/{export_id}/content")
        assert content.status_code == 200, content.text
    await asyncio.to_thread(into.write_bytes, content.content)
    assert hashlib.sha256(content.content).hexdigest() == found["sha256"]
    return dict(found)


async def populated(platform: Platform, canary: str) -> tuple[Tenant, str, dict[str, bytes]]:
    """An organisation with files (one a batch's input), a batch, usage and keys."""
    tenant = await platform.factory.tenant(roles={"own": Role.OWNER})
    owner = (await platform.factory.member_key(tenant, "own", Role.OWNER)).key
    await platform.factory.new_member(tenant.org_id, Role.MEMBER)  # a second key
    model = await platform.served_model(owner_org_id=tenant.org_id)
    client = sdk(platform, owner)
    notes = f"notes of {canary}\n".encode() + bytes(range(256))
    line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": model, "messages": [{"role": "user", "content": canary}]}}  # fmt: skip
    lines = json.dumps(line).encode() + b"\n"
    note = await client.files.create(file=("notes.bin", notes), purpose="user_data")
    batch_file = await client.files.create(file=("in.jsonl", lines), purpose="batch")
    batch = await client.batches.create(input_file_id=batch_file.id,
                                        endpoint="/v1/chat/completions", completion_window="24h")  # fmt: skip

    async def answered() -> bool:  # its output file written before anything is taken
        return (await client.batches.retrieve(batch.id)).status in {"completed", "failed"}

    await wait_until(answered, timeout_s=30)
    for _ in range(3):
        await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    await usage_records(platform.sessions, 3, org_id=tenant.org_id)
    return tenant, owner, {note.id: notes, batch_file.id: lines}


class TestExport:
    async def test_the_archive_holds_everything_verifies_and_leaks_nothing(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        tenant, owner, uploaded = await populated(platform, "CANARY-MINE-7f3a")
        other, other_owner, _ = await populated(platform, "CANARY-OTHER-91bd")
        archive = tmp_path / "export.tar"
        found = await exported(platform, tenant, owner, archive)

        verdict = verify_archive(archive, load_public_key(await public_key_pem(platform, owner)))
        assert verdict.ok, verdict.problems
        assert verdict.objects == found["objects"] and verdict.audit_events > 0
        assert verdict.sealed_through is not None
        with tarfile.open(archive) as tar:  # any tar reader opens it; every hash holds
            manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
            listed = {o["path"]: o for o in manifest["document"]["objects"]}
            contents = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
        for path, entry in listed.items():
            assert hashlib.sha256(contents[path]).hexdigest() == entry["sha256"], path
        for file_id, data in uploaded.items():  # decrypted, byte for byte
            assert [contents[p] for p in contents if p.startswith(f"files/{file_id}/")] == [data]
        usage_csv = contents["usage/usage_records.csv"].decode().splitlines()
        assert len(usage_csv) >= 4 and "prompt_tokens" in usage_csv[0]
        assert len(contents["usage/usage_records.jsonl"].splitlines()) == len(usage_csv) - 1
        assert json.loads(contents["batches/batches.jsonl"].splitlines()[0])["input_file_ids"]
        keys = json.loads(contents["keys/api_keys.json"])
        assert len(keys) >= 2 and all("secret_hash" not in k for k in keys)
        assert any(p.startswith("invoices/") for p in contents)
        assert json.loads(contents["reports/residency.json"])["signature"]["algorithm"] == "Ed25519"
        events = [json.loads(e) for e in contents["audit/events.jsonl"].splitlines()]
        assert "export.create" in {e["action"] for e in events}

        whole = archive.read_bytes()
        assert b"CANARY-MINE-7f3a" in whole  # the grep below would find a canary
        secret = owner.split("_", 1)[1]  # sk-souv-<id>_<secret>
        assert secret.encode() not in whole
        assert hashlib.sha256(secret.encode()).hexdigest().encode() not in whole
        for leak in (b"CANARY-OTHER-91bd", other.org_id.encode(), other_owner.encode()):
            assert leak not in whole

    async def test_one_changed_byte_fails_the_check(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        tenant, owner, _ = await populated(platform, "CANARY-TAMPER")
        archive = tmp_path / "export.tar"
        await exported(platform, tenant, owner, archive)
        key = load_public_key(await public_key_pem(platform, owner))
        data = archive.read_bytes()
        for target in (b"CANARY-TAMPER", b'"objects"'):  # a file's byte; the manifest's
            at = data.index(target) + 1
            tampered = tmp_path / "tampered.tar"
            tampered.write_bytes(data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :])
            verdict = verify_archive(tampered, key)
            assert not verdict.ok
        pem = tmp_path / "key.pem"
        pem.write_text(await public_key_pem(platform, owner))
        intact = await cli(
            platform, owner, "exports", "verify", str(archive), "--public-key", str(pem)
        )
        assert intact.returncode == 0, intact.stderr
        broken = await cli(
            platform, owner, "exports", "verify", str(tampered), "--public-key", str(pem)
        )
        assert broken.returncode == 1 and "INVALID" in broken.stderr
        linked = tmp_path / "linked.tar"  # a link added beside the listed files
        linked.write_bytes(data)
        with tarfile.open(linked, "a") as appended:
            link = tarfile.TarInfo("files/notes.txt")
            link.type, link.linkname = tarfile.SYMTYPE, "/root/.ssh/id_ed25519"
            appended.addfile(link)
        assert not verify_archive(linked, key).ok
        keyless = await cli(platform, owner, "exports", "verify", str(archive))
        assert keyless.returncode != 0  # a key carried inside the file proves nothing


@on_one_database()
class TestExportCommands:
    async def test_create_show_download_and_verify_from_the_cli(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        tenant, owner, _ = await populated(platform, "CANARY-CLI")
        created = await cli(platform, owner, "exports", "create", "--org", tenant.org_name)
        assert created.returncode == 0, created.stderr
        export_id = next(w for w in created.stdout.split() if w.startswith("exp_"))
        await (await runner(platform)).run_once()
        shown = await cli(platform, owner, "exports", "show", export_id, "--org", tenant.org_name)
        assert shown.returncode == 0 and "succeeded" in shown.stdout, shown.stdout
        archive, pem = tmp_path / "cli.tar", tmp_path / "key.pem"
        saved = await cli(platform, owner, "exports", "download", export_id,
                          "--org", tenant.org_name, "-o", str(archive))  # fmt: skip
        assert saved.returncode == 0, saved.stderr
        pem.write_text(await public_key_pem(platform, owner))
        checked = await cli(
            platform, owner, "exports", "verify", str(archive), "--public-key", str(pem)
        )
        assert checked.returncode == 0 and "valid" in checked.stdout, checked.stderr


class TestExportFailures:
    async def test_no_store_the_policy_allows_fails_the_export_saying_why(
        self, platform: Platform
    ) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER})
        owner = (await platform.factory.member_key(tenant, "own", Role.OWNER)).key
        async with platform.client(await platform.operator_key()) as http:
            ceiling = await http.put(f"/api/orgs/{tenant.org_name}/policy",
                                     json={"jurisdictions": ["DE"]})  # fmt: skip
            assert ceiling.status_code == 200, ceiling.text
        async with platform.client(owner) as http:
            asked = (await http.post(f"/api/orgs/{tenant.org_name}/exports")).json()
            await (await runner(platform)).run_once()
            found = (await http.get(f"/api/orgs/{tenant.org_name}/exports/{asked['id']}")).json()
            content = await http.get(f"/api/orgs/{tenant.org_name}/exports/{asked['id']}/content")
        assert found["status"] == "failed"
        assert "files-fr" in found["error"] and "policy" in found["error"]
        assert content.status_code == 409


class TestExportRefusals:
    async def test_only_owners_and_operators_ask_and_read(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"own": Role.OWNER, "mem": Role.MEMBER})
        owner = (await platform.factory.member_key(tenant, "own", Role.OWNER)).key
        member = (await platform.factory.member_key(tenant, "mem", Role.MEMBER)).key
        stranger = await platform.factory.tenant(roles={"own": Role.OWNER})
        outsider = (await platform.factory.member_key(stranger, "own", Role.OWNER)).key
        base = f"/api/orgs/{tenant.org_name}/exports"
        async with platform.client(member) as http:
            refused = await http.post(base)
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "permission_denied"
        async with platform.client(outsider) as http:
            hidden = await http.post(base)
        assert hidden.status_code == 404 and hidden.json()["error"]["code"] == "not_found"
        async with platform.client(await platform.operator_key()) as http:
            asked = await http.post(base)
        assert asked.status_code == 202, asked.text
        export_id = asked.json()["id"]
        for key in (member, outsider):
            async with platform.client(key) as http:
                for path in (f"{base}/{export_id}", f"{base}/{export_id}/content"):
                    answer = await http.get(path)
                    assert answer.status_code == 404, (path, answer.text)
        async with platform.client(owner) as http:
            waiting = await http.get(f"{base}/{export_id}/content")
            second = await http.post(base)  # one export at a time
        assert waiting.status_code == 409 and waiting.json()["error"]["code"] == "conflict"
        assert second.status_code == 409 and export_id in second.json()["error"]["message"]
        await (await runner(platform)).run_once()
        async with platform.client(await platform.operator_key()) as http:
            status = await http.get(f"{base}/{export_id}")
            content = await http.get(f"{base}/{export_id}/content")
        assert status.status_code == 200 and status.json()["status"] == "succeeded"
        assert content.status_code == 403  # operators follow an export, never read it
        project_key = await platform.factory.key(
            user_id=tenant.users["own"], org_id=tenant.org_id, role=Role.OWNER,
            project_id=tenant.project_id,
        )  # fmt: skip
        async with platform.client(project_key.key) as http:
            narrowed = await http.post(base)
        assert narrowed.status_code == 403 and "every project" in narrowed.text

        async def refusals_audited() -> bool:
            async with platform.client(await platform.operator_key()) as http:
                events = (await http.get("/api/audit", params={"action": "export.refused"})).json()
            return {tenant.org_id, stranger.org_id} <= {e["org_id"] for e in events["events"]}

        await wait_until(refusals_audited)

    async def test_an_erased_organisation_has_nothing_to_export(
        self, platform: Platform, tmp_path: Path
    ) -> None:
        tenant, owner, _ = await populated(platform, "CANARY-ERASED")
        async with platform.client(owner) as http:
            pending = (await http.post(f"/api/orgs/{tenant.org_name}/exports")).json()
            erased = await http.post(f"/api/orgs/{tenant.org_name}/crypto-erase")
            assert erased.status_code == 200, erased.text
            again = await http.post(f"/api/orgs/{tenant.org_name}/exports")
            gone = await http.get(f"/api/orgs/{tenant.org_name}/exports/{pending['id']}")
        assert again.status_code == 409 and again.json()["error"]["code"] == "conflict"
        assert gone.json()["status"] == "erased"
        assert pending["id"] in erased.json()["certificate"]["document"]["erased"]["exports"]["ids"]
