"""The Files API with the official SDKs: stored encrypted in an allowed datacenter, checked
line by line, refused whole when bad, private to the organisation, crypto-erasable."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import httpx
import openai
import pytest
from mistralai.client import Mistral
from sqlalchemy import select

from souverain.core.roles import Role
from souverain.db.jobs import FileRow
from souverain.server.app import create_app
from souverain.testing.live import LiveServer
from tests.conftest import Platform


def batch_lines(model: str, count: int = 3) -> bytes:
    return b"".join(
        json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": model, "messages": [{"role": "user", "content": f"hi {i}"}]}}
                   ).encode() + b"\n"
        for i in range(count)
    )  # fmt: skip


async def owner(platform: Platform) -> tuple[str, str, str]:
    tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
    key = (await platform.factory.member_key(tenant, "o", Role.OWNER)).key
    return tenant.org_id, tenant.org_name, key


def sdk(platform: Platform, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0, timeout=60)


class TestOpenAISdk:
    async def test_create_list_retrieve_content_delete(self, platform: Platform) -> None:
        org_id, _, key = await owner(platform)
        client = sdk(platform, key)
        content = batch_lines("m")
        created = client.files.create(file=("in.jsonl", io.BytesIO(content)), purpose="batch")
        assert created.bytes == len(content) and created.purpose == "batch"
        assert created.filename == "in.jsonl" and created.status == "processed"
        assert created.id in {f.id for f in client.files.list()}
        assert client.files.retrieve(created.id).bytes == len(content)
        assert client.files.content(created.id).read() == content
        async with platform.sessions() as session:
            row = await session.get(FileRow, created.id)
            assert row is not None and row.org_id == org_id and row.datacenter_id
        stored = Path(row.store_uri.removeprefix("file://")) / row.object_key
        assert b"hi 1" not in stored.read_bytes()  # encrypted at rest
        assert client.files.delete(created.id).deleted
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(created.id)
        assert not stored.exists()

    async def test_expires_after(self, platform: Platform) -> None:
        _, _, key = await owner(platform)
        created = sdk(platform, key).files.create(
            file=("x.txt", io.BytesIO(b"notes")), purpose="user_data",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )  # fmt: skip
        assert created.expires_at is not None and created.expires_at - created.created_at == 3600


class TestMistralSdk:
    async def test_upload_list_retrieve_download_delete(self, platform: Platform) -> None:
        _, _, key = await owner(platform)
        client = Mistral(api_key=key, server_url=platform.url)
        content = b'{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}\n'
        uploaded = client.files.upload(
            file={"file_name": "train.jsonl", "content": content}, purpose="fine-tune"
        )
        assert uploaded.size_bytes == len(content) and uploaded.num_lines == 1
        assert uploaded.sample_type == "instruct" and uploaded.source == "upload"
        assert uploaded.id in {f.id for f in client.files.list().data}
        assert client.files.retrieve(file_id=uploaded.id).filename == "train.jsonl"
        assert client.files.download(file_id=uploaded.id).read() == content
        assert client.files.delete(file_id=uploaded.id).deleted


class TestBadFilesAreRefusedWhole:
    @pytest.mark.parametrize(
        ("content", "expected"),
        [
            (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\nnot json\n',
             "line 1"),
            (b'{"custom_id": "a", "body": {}}\nnot json\n', "line 2: is not JSON"),
            (b'{"custom_id": "a", "method": "POST", "url": "/v1/nope", "body": {}}\n', "field url"),
            (b'{"custom_id": "a", "method": "GET", "url": "/v1/embeddings", "body": {}}\n', "field method"),
            (b'{"custom_id": "a", "body": {}}\n{"custom_id": "a", "body": {}}\n', "used twice"),
            (b'{"custom_id": "a", "body": {}, "extra": 1}\n', "field extra"),
            (b'[1, 2]\n', "not a JSON object"),
            (b"", "no lines"),
        ],
        ids=["body-schema", "bad-json", "bad-url", "bad-method", "dup-id", "unknown-field",
             "not-object", "empty"],
    )  # fmt: skip
    async def test_batch_files(self, platform: Platform, content: bytes, expected: str) -> None:
        org_id, _, key = await owner(platform)
        with pytest.raises(openai.BadRequestError) as refused:
            sdk(platform, key).files.create(file=("b.jsonl", io.BytesIO(content)), purpose="batch")
        assert expected in str(refused.value)
        async with platform.sessions() as session:
            kept = (await session.execute(select(FileRow).where(FileRow.org_id == org_id))).all()
        assert kept == []

    async def test_a_ten_mib_line_is_refused(self, platform: Platform) -> None:
        _, _, key = await owner(platform)
        line = b'{"custom_id": "a", "body": {"x": "' + b"x" * (10 * 2**20 + 10) + b'"}}\n'
        with pytest.raises((openai.BadRequestError, openai.APIStatusError)) as refused:
            sdk(platform, key).files.create(file=("b.jsonl", io.BytesIO(line)), purpose="batch")
        assert refused.value.status_code == 413  # type: ignore[attr-defined]

    async def test_fine_tune_needs_assistant_turns_or_a_prompt(self, platform: Platform) -> None:
        _, _, key = await owner(platform)
        line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "system", "content": "x"}]}\n'
        with pytest.raises(openai.BadRequestError) as refused:
            sdk(platform, key).files.create(file=("t.jsonl", io.BytesIO(line)), purpose="fine-tune")
        assert "assistant" in str(refused.value) and "line 1" in str(refused.value)

    async def test_reinforcement_prompts_with_reference_fields(self, platform: Platform) -> None:
        _, _, key = await owner(platform)
        good = b'{"messages": [{"role": "user", "content": "2+2?"}], "answer": "4", "kind": "a"}\n'
        created = sdk(platform, key).files.create(
            file=("rl.jsonl", io.BytesIO(good * 3)), purpose="fine-tune"
        )
        assert created.status == "processed"
        fields = ", ".join(f'"f{i}": 1' for i in range(40))
        for bad in (
            good.replace(b'"kind"', b'"a b"'),  # not a field name
            b'{"messages": [{"role": "user", "content": "x"}], ' + fields.encode() + b"}\n",
        ):
            with pytest.raises(openai.BadRequestError) as refused:
                sdk(platform, key).files.create(file=("r.jsonl", io.BytesIO(good + bad)),
                                                purpose="fine-tune")  # fmt: skip
            assert "line 2" in str(refused.value)


class TestTenancy:
    async def test_another_tenants_file_is_404_everywhere(self, platform: Platform) -> None:
        _, _, key_a = await owner(platform)
        _, _, key_b = await owner(platform)
        created = sdk(platform, key_a).files.create(
            file=("a.jsonl", io.BytesIO(batch_lines("m"))), purpose="batch"
        )
        intruder = sdk(platform, key_b)
        for call in (intruder.files.retrieve, intruder.files.content, intruder.files.delete):
            with pytest.raises(openai.NotFoundError):
                call(created.id)
        assert created.id not in {f.id for f in intruder.files.list()}

    async def test_viewers_cannot_upload(self, platform: Platform) -> None:
        tenant = await platform.factory.tenant(roles={"v": Role.VIEWER})
        key = (await platform.factory.member_key(tenant, "v", Role.VIEWER)).key
        with pytest.raises(openai.PermissionDeniedError):
            sdk(platform, key).files.create(file=("a.txt", io.BytesIO(b"x")), purpose="user_data")


class TestSovereignty:
    async def test_no_allowed_store_is_451_and_nothing_is_stored(self, platform: Platform) -> None:
        _, org, key = await owner(platform)
        async with platform.client(await platform.operator_key()) as client:
            assert (
                await client.put(f"/api/orgs/{org}/policy", json={"jurisdictions": ["US"]})
            ).status_code == 200
        await __import__("asyncio").sleep(0.5)
        with pytest.raises(openai.APIStatusError) as refused:
            sdk(platform, key).files.create(file=("a.txt", io.BytesIO(b"x")), purpose="user_data")
        assert refused.value.status_code == 451
        assert "outside US" in str(refused.value)

    async def test_a_datacenter_without_a_store_is_named_with_its_reason(
        self, platform: Platform
    ) -> None:
        """A policy that allows only a datacenter with no store: the 451 says so, beside
        why every other datacenter was refused, and nothing is stored."""
        _, org, key = await owner(platform)
        await platform.factory.datacenter("nostore-us", country="US")
        async with platform.client(await platform.operator_key()) as client:
            assert (
                await client.put(f"/api/orgs/{org}/policy", json={"jurisdictions": ["US"]})
            ).status_code == 200
        await __import__("asyncio").sleep(0.5)
        with pytest.raises(openai.APIStatusError) as refused:
            sdk(platform, key).files.create(file=("a.txt", io.BytesIO(b"x")), purpose="user_data")
        assert refused.value.status_code == 451
        message = str(refused.value)
        assert (
            "nostore-us: no file store (the operator sets one in SOUVERAIN_FILE_STORES)" in message
        )
        assert "files-fr: outside US (FR)" in message
        assert sdk(platform, key).files.list().data == []


class TestStoresAtStartUp:
    async def test_a_server_says_which_datacenters_keep_files(
        self, platform: Platform, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        await platform.factory.datacenter("nostore-log", country="DE")
        settings = platform.settings.model_copy(update={"data_dir": tmp_path, "port": 8002})
        with (
            caplog.at_level(logging.INFO, logger="souverain.server.app"),
            LiveServer(create_app(settings)),
        ):
            pass
        said = caplog.text
        assert "file stores: " in said and "files-fr" in said
        assert "datacenter nostore-log has no file store" in said
        assert "SOUVERAIN_FILE_STORES" in said


class TestCryptoErasure:
    async def test_erased_key_material_makes_every_file_unreadable(
        self, platform: Platform
    ) -> None:
        _, org, key = await owner(platform)
        client = sdk(platform, key)
        created = client.files.create(
            file=("a.jsonl", io.BytesIO(batch_lines("m"))), purpose="batch"
        )
        async with httpx.AsyncClient(
            base_url=platform.url, headers={"Authorization": f"Bearer {key}"}
        ) as http:
            erased = await http.post(f"/api/orgs/{org}/crypto-erase")
            assert erased.status_code == 200, erased.text
            assert erased.json()["files"] == 1
            gone = await http.get(f"/v1/files/{created.id}/content")
            assert gone.status_code == 410
            events = (await http.get("/api/audit", params={"action": "org.crypto_erase"})).json()
        assert len(events["events"]) == 1


class TestExpiry:
    async def test_expired_files_are_swept_with_their_objects_and_quota(
        self, platform: Platform
    ) -> None:
        from datetime import timedelta

        from souverain.db.tables import utcnow
        from souverain.files import service as files_service

        org_id, _, key = await owner(platform)
        client = sdk(platform, key)
        created = client.files.create(
            file=("x.txt", io.BytesIO(b"keep me an hour")), purpose="user_data",
            expires_after={"anchor": "created_at", "seconds": 3600},
        )  # fmt: skip
        async with platform.sessions() as session:
            used = await files_service.storage_used(session, org_id=org_id)
            row = await session.get(FileRow, created.id)
        assert used > 0 and row is not None
        stored = Path(row.store_uri.removeprefix("file://")) / row.object_key
        later = utcnow() + timedelta(hours=2)
        assert await files_service.sweep_expired(platform.sessions, now=later) >= 1
        with pytest.raises(openai.NotFoundError):
            client.files.retrieve(created.id)
        assert not stored.exists()
        async with platform.sessions() as session:
            assert await files_service.storage_used(session, org_id=org_id) == 0


class TestDeletionOrder:
    """A file's row is forgotten first, its object removed after: never a row the API
    lists whose object is gone."""

    async def test_a_deletion_its_caller_rolls_back_leaves_no_file_unreadable(
        self, platform: Platform
    ) -> None:
        from souverain.files import service as files_service
        from souverain.tenancy.auth import principal_for_key

        tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
        key = await platform.factory.member_key(tenant, "o", Role.OWNER)
        client = sdk(platform, key.key)
        created = client.files.create(
            file=("x.txt", io.BytesIO(b"still here")), purpose="user_data"
        )
        async with platform.sessions() as session:
            principal = await principal_for_key(session, key_id=key.id)
            await files_service.delete_file(session, principal=principal, file_id=created.id)
            await session.rollback()  # whatever the caller does next
        listed = {f.id for f in client.files.list()}
        if created.id in listed:
            assert client.files.content(created.id).read() == b"still here"
        async with platform.sessions() as session:
            row = await session.get(FileRow, created.id)
        assert row is not None
        stored = Path(row.store_uri.removeprefix("file://")) / row.object_key
        assert row.status == "deleted" or stored.exists()

    async def test_a_sweep_forgets_expired_files_a_chunk_at_a_time(
        self, platform: Platform
    ) -> None:
        from datetime import timedelta

        from souverain.db.tables import utcnow
        from souverain.files import service as files_service

        org_id, _, key = await owner(platform)
        client = sdk(platform, key)
        ids = [
            client.files.create(
                file=(f"{n}.txt", io.BytesIO(b"brief")), purpose="user_data",
                expires_after={"anchor": "created_at", "seconds": 3600},
            ).id
            for n in range(3)
        ]  # fmt: skip
        later = utcnow() + timedelta(hours=2)
        assert await files_service.sweep_expired(platform.sessions, now=later, chunk=2) >= 3
        async with platform.sessions() as session:
            rows = [await session.get(FileRow, file_id) for file_id in ids]
            assert await files_service.storage_used(session, org_id=org_id) == 0
        for row in rows:
            assert row is not None and row.status == "deleted"
            assert not (Path(row.store_uri.removeprefix("file://")) / row.object_key).exists()


class TestQuota:
    async def test_uploads_beyond_the_quota_are_refused_and_leave_nothing(
        self, platform: Platform
    ) -> None:
        _, org, key = await owner(platform)
        async with platform.client(await platform.operator_key()) as op:
            assert (
                await op.put(f"/api/orgs/{org}/storage", json={"limit_bytes": 4000})
            ).status_code == 200
        client = sdk(platform, key)
        client.files.create(file=("a.txt", io.BytesIO(b"x" * 1000)), purpose="user_data")
        with pytest.raises(openai.APIStatusError) as refused:
            client.files.create(file=("b.txt", io.BytesIO(b"y" * 5000)), purpose="user_data")
        assert refused.value.status_code == 413
        assert [f.filename for f in client.files.list()] == ["a.txt"]


class TestResidency:
    async def test_the_signed_residency_report_says_where_files_are_kept(
        self, platform: Platform
    ) -> None:
        _, org, key = await owner(platform)
        sdk(platform, key).files.create(file=("a.txt", io.BytesIO(b"x" * 10)), purpose="user_data")
        async with platform.client(key) as client:
            report = await client.get(
                f"/api/orgs/{org}/reports/residency",
                params={"from": "2020-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
            )
        assert report.status_code == 200, report.text
        document = report.json()
        files = document["document"]["files"]
        assert files["by_datacenter"] == [
            {"datacenter": "files-fr", "country": "FR", "files": 1, "bytes": 10}
        ]
        assert files["violations"] == []
