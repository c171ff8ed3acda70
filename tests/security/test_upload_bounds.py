"""Uploads a hostile tenant shapes: form fields by the thousand, JSON lines nested to the
recursion limit, names with control characters or beyond Latin-1, files larger than the
quota leaves. Each gets a clear 4xx and leaves nothing stored; a name that is allowed comes
back byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import openai
import pytest
from sqlalchemy import select

from souverain.core.roles import Role
from souverain.db.jobs import FileRow
from tests.conftest import Platform


async def _owner(platform: Platform) -> tuple[str, str, str]:
    tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
    key = (await platform.factory.member_key(tenant, "o", Role.OWNER)).key
    return tenant.org_id, tenant.org_name, key


async def _stored(platform: Platform, org_id: str) -> list[str]:
    async with platform.sessions() as session:
        rows = (await session.execute(select(FileRow).where(FileRow.org_id == org_id))).scalars()
        return [row.filename for row in rows]


def _multipart(fields: int, boundary: str = "b0undary") -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nv\r\n'
        for i in range(fields)
    ]
    file = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n'
        f"Content-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
    )
    return ("".join(parts) + f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"'
            f"\r\n\r\nuser_data\r\n" + file).encode()  # fmt: skip


class TestFormFields:
    async def test_thousands_of_small_fields_are_refused_early(self, platform: Platform) -> None:
        org_id, _, key = await _owner(platform)
        async with platform.client(key) as client:
            answer = await client.post(
                "/v1/files",
                content=_multipart(20_000),
                headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
            )
        assert answer.status_code == 400, answer.text
        assert "at most 16 other form fields" in answer.json()["error"]["message"]
        assert await _stored(platform, org_id) == []

    async def test_a_few_fields_still_upload(self, platform: Platform) -> None:
        org_id, _, key = await _owner(platform)
        async with platform.client(key) as client:
            answer = await client.post(
                "/v1/files",
                content=_multipart(3),
                headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
            )
        assert answer.status_code == 200, answer.text
        assert await _stored(platform, org_id) == ["a.txt"]


class TestNestedLines:
    @pytest.mark.parametrize("purpose", ["batch", "fine-tune"])
    @pytest.mark.parametrize("depth", [65, 5_000, 200_000])
    async def test_deeply_nested_lines_are_a_clear_400(
        self, platform: Platform, purpose: str, depth: int
    ) -> None:
        org_id, _, key = await _owner(platform)
        deep = "[" * depth + "]" * depth
        if purpose == "batch":
            line = '{"custom_id": "a", "body": {"x": ' + deep + "}}\n"
        else:
            line = '{"messages": [{"role": "user", "content": "hi"}], "answer": ' + deep + "}\n"
        client = openai.OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.BadRequestError) as refused:
            client.files.create(file=("n.jsonl", io.BytesIO(line.encode())), purpose=purpose)  # type: ignore[arg-type]
        assert "nests arrays or objects deeper than 64 levels" in str(refused.value)
        assert await _stored(platform, org_id) == []


class TestNames:
    @pytest.mark.parametrize(
        "name", ["bad\x00name.txt", "esc\x1b[31m.txt", "tab\tname.txt", "rtl\u202etxt.exe"]
    )
    async def test_control_characters_are_refused(self, platform: Platform, name: str) -> None:
        org_id, _, key = await _owner(platform)
        body = (  # raw: a browser or httpx would percent-encode them
            b'--b0undary\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="'
            + name.encode()
            + b'"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b0undary--\r\n'
        )
        async with platform.client(key) as client:
            answer = await client.post(
                "/v1/files",
                content=body,
                headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
            )
        assert answer.status_code == 400, answer.text
        assert "control characters" in answer.json()["error"]["message"]
        assert await _stored(platform, org_id) == []

    @pytest.mark.parametrize("name", ["données-été.txt", "数据.jsonl", "semi;colon, comma (1).txt"])
    async def test_any_utf8_name_downloads_under_its_own_name(
        self, platform: Platform, name: str
    ) -> None:
        _, _, key = await _owner(platform)
        async with platform.client(key) as client:
            created = await client.post(
                "/v1/files",
                files={"file": (name, b"contenu", "text/plain")},
                data={"purpose": "user_data"},
            )
            assert created.status_code == 200, created.text
            file_id = created.json()["id"]
            assert created.json()["filename"] == name
            content = await client.get(f"/v1/files/{file_id}/content")
        assert content.status_code == 200
        assert content.content == b"contenu"
        disposition = content.headers["content-disposition"]
        assert unquote(disposition.split("filename*=UTF-8''", 1)[1]) == name


def _listed(directory: Path) -> set[Path]:
    return set(directory.rglob("*")) if directory.exists() else set()


def _largest_file(directory: Path, before: set[Path]) -> int:
    """The largest object written since `before` was listed (the store is shared with the
    other tests' files)."""
    if not directory.exists():
        return 0
    sizes = []
    for path in directory.rglob("*"):
        with contextlib.suppress(OSError):  # an object may go while we look
            if path not in before and path.is_file():
                sizes.append(path.stat().st_size)
    return max(sizes, default=0)


class TestQuotaWhileStreaming:
    async def test_a_file_larger_than_the_quota_leaves_is_never_written_whole(
        self, platform: Platform
    ) -> None:
        """The store sees at most what the quota leaves (1 MiB here) of a 64 MiB upload,
        not the whole file refused afterwards."""
        org_id, org, key = await _owner(platform)
        async with platform.client(await platform.operator_key()) as operator:
            limit = await operator.put(f"/api/orgs/{org}/storage", json={"limit_bytes": 1 << 20})
            assert limit.status_code == 200
        store = Path(urlparse(platform.settings.file_stores["files-fr"]).path)
        before = await asyncio.to_thread(_listed, store)
        largest, done = 0, asyncio.Event()

        async def watch() -> None:
            nonlocal largest
            while not done.is_set():
                largest = max(largest, await asyncio.to_thread(_largest_file, store, before))
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        client = openai.AsyncOpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0)
        try:
            with pytest.raises(openai.APIStatusError) as refused:
                await client.files.create(
                    file=("big.bin", io.BytesIO(os.urandom(64 << 20))), purpose="user_data"
                )
        finally:
            done.set()
            await watcher
        assert refused.value.status_code == 413
        assert "quota" in refused.value.message
        assert largest < 2 << 20, f"the store held {largest} bytes of a file over the quota"
        assert await _stored(platform, org_id) == []
