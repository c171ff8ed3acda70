"""Objects whose size a tenant controls are bounded where they are created, so no list a
console polls can grow to megabytes: `metadata` of batches and fine-tuning jobs takes
OpenAI's bounds (16 pairs, keys of 64 characters, values of 512)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from souverain.core.roles import Role
from tests.conftest import Platform, wait_until

TOO_BIG = [
    pytest.param({"k": "v" * 513}, id="value-513"),
    pytest.param({"k" * 65: "v"}, id="key-65"),
    pytest.param({f"k{i}": "v" for i in range(17)}, id="17-pairs"),
    pytest.param({"": "v"}, id="empty-key"),
    pytest.param({"k": "v" * 3_000_000}, id="value-3MB"),
]


async def _owner_key(platform: Platform) -> str:
    tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
    return (await platform.factory.member_key(tenant, "o", Role.OWNER)).key


async def _file(platform: Platform, key: str, purpose: str, line: dict[str, Any]) -> str:
    async with platform.client(key) as client:
        answer = await client.post(
            "/v1/files",
            files={"file": ("in.jsonl", io.BytesIO(json.dumps(line).encode() + b"\n"))},
            data={"purpose": purpose},
        )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


class TestMetadata:
    @pytest.mark.parametrize("metadata", TOO_BIG)
    async def test_batch_metadata_beyond_bounds_is_refused(
        self, platform: Platform, metadata: dict[str, str]
    ) -> None:
        key = await _owner_key(platform)
        file_id = await _file(platform, key, "batch", {"custom_id": "a", "body": {}})
        async with platform.client(key) as client:
            answer = await client.post(
                "/v1/batches",
                json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                      "completion_window": "24h", "metadata": metadata},
            )  # fmt: skip
            listed = await client.get("/v1/batches", params={"limit": 100})
        assert answer.status_code == 400, answer.text
        assert listed.json()["data"] == []

    @pytest.mark.parametrize("metadata", TOO_BIG)
    async def test_fine_tuning_metadata_beyond_bounds_is_refused(
        self, platform: Platform, metadata: dict[str, str]
    ) -> None:
        key = await _owner_key(platform)
        line = {
            "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
        }
        file_id = await _file(platform, key, "fine-tune", line)
        async with platform.client(key) as client:
            answer = await client.post(
                "/v1/fine_tuning/jobs",
                json={"model": "any", "training_file": file_id, "metadata": metadata},
            )
        assert answer.status_code == 400, answer.text
        assert "metadata" in answer.json()["error"]["message"]

    async def test_metadata_within_bounds_round_trips(self, platform: Platform) -> None:
        key = await _owner_key(platform)
        file_id = await _file(platform, key, "batch", {"custom_id": "a", "body": {}})
        metadata = {f"k{i}": "é" * 512 for i in range(16)}
        async with platform.client(key) as client:
            answer = await client.post(
                "/v1/batches",
                json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                      "completion_window": "24h", "metadata": metadata},
            )  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert answer.json()["metadata"] == metadata


class TestQuotedValues:
    """A value the caller sent is quoted in an error by its first characters only: errors
    are kept in batch objects, which lists return by the hundred."""

    async def test_a_batch_error_does_not_quote_a_megabyte_model_name(
        self, platform: Platform
    ) -> None:
        key = await _owner_key(platform)
        name = "m" * 1_000_000
        lines = [{"custom_id": f"c{i}", "body": {"model": f"{name}{i}", "messages": []}}
                 for i in range(3)]  # fmt: skip
        async with platform.client(key) as client:
            uploaded = await client.post(
                "/v1/files",
                files={"file": ("in.jsonl", io.BytesIO(
                    b"".join(json.dumps(line).encode() + b"\n" for line in lines)))},
                data={"purpose": "batch"},
            )  # fmt: skip
            assert uploaded.status_code == 200, uploaded.text
            created = await client.post("/v1/batch/jobs", json={
                "input_files": [uploaded.json()["id"]], "endpoint": "/v1/chat/completions"})  # fmt: skip
            assert created.status_code == 200, created.text
            batch_id = created.json()["id"]

            async def failed() -> bool:
                found = await client.get(f"/v1/batches/{batch_id}")
                return bool(found.json()["status"] == "failed")

            await wait_until(failed, timeout_s=30)
            found = await client.get(f"/v1/batches/{batch_id}")
            listed = await client.get("/v1/batches", params={"limit": 100})
        errors = found.json()["errors"]["data"]
        assert errors and all(len(error["message"]) <= 512 for error in errors), errors[0]
        assert "mmmm" in errors[0]["message"]  # the start of the name, to recognise it
        assert len(found.content) < 16 * 1024
        assert len(listed.content) < 16 * 1024 * len(listed.json()["data"])

    async def test_a_live_error_does_not_quote_a_megabyte_field_name(
        self, platform: Platform
    ) -> None:
        key = await _owner_key(platform)
        body = {"model": "m" * 100, "messages": [], "x" * 1_000_000: 1}
        async with platform.client(key) as client:
            answer = await client.post("/v1/chat/completions", json=body)
            missing = await client.get("/v1/models/" + "n" * 10_000)
        for response in (answer, missing):
            assert 400 <= response.status_code < 500, response.status_code
            error = response.json()["error"]
            assert len(error["message"]) <= 512 and len(error["param"] or "") <= 128
            assert len(response.content) < 2048
