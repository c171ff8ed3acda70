"""The /v1 pipeline against a stand-in engine: bounds, errors, streaming, exactly one usage record.

The real engine is exercised end to end in tests/e2e; here faults can be injected.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from sqlalchemy import select

from souverain.core.roles import Role
from souverain.db.tables import UsageRecordRow
from tests.conftest import Platform, usage_records, wait_until


async def member(platform: Platform) -> tuple[str, str]:
    tenant = await platform.factory.tenant(roles={"u": Role.MEMBER})
    key = await platform.factory.member_key(tenant, "u", Role.MEMBER)
    return key.key, key.id


async def records(platform: Platform, key_id: str) -> list[UsageRecordRow]:
    async with platform.sessions() as session:
        query = select(UsageRecordRow).where(UsageRecordRow.key_id == key_id)
        return list((await session.execute(query)).scalars())


def chat(model: str, text: str = "hello", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


class TestBounds:
    @pytest.mark.parametrize(
        ("change", "param"),
        [
            ({"max_tokens": 10**9}, "max_tokens"),
            ({"n": 5}, "n"),
            ({"temperature": 7}, "temperature"),
            ({"top_logprobs": 500}, "top_logprobs"),
            ({"messages": []}, "messages"),
            ({"messages": [{"role": "user", "content": "x"}] * 5000}, "messages"),
            ({"surprise": True}, "surprise"),
            ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ],
    )
    async def test_bad_parameters_are_400_before_any_engine(
        self, platform: Platform, change: dict[str, object], param: str
    ) -> None:
        model = await platform.served_model()
        key, key_id = await member(platform)
        before = len(platform.stand_in.requests)
        async with platform.client(key) as client:
            response = await client.post("/v1/chat/completions", json={**chat(model), **change})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error"
        assert error["param"].startswith(param)
        assert len(platform.stand_in.requests) == before
        await asyncio.sleep(0.3)  # longer than a usage batch takes to reach the database
        assert await records(platform, key_id) == []

    async def test_oversized_body_is_413(self, platform: Platform) -> None:
        model = await platform.served_model()
        key, _ = await member(platform)
        huge = "x" * (platform.settings.max_request_bytes + 10)
        async with platform.client(key) as client:
            response = await client.post("/v1/chat/completions", json=chat(model, huge))
        assert response.status_code == 413

    @pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b"[]", b'{"model": 3}'])
    async def test_invalid_json_is_400(self, platform: Platform, raw: bytes) -> None:
        key, _ = await member(platform)
        async with platform.client(key) as client:
            response = await client.post(
                "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
            )
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"

    async def test_unknown_model_is_404_and_embeddings_on_a_chat_model_is_400(
        self, platform: Platform
    ) -> None:
        model = await platform.served_model()
        key, _ = await member(platform)
        async with platform.client(key) as client:
            missing = await client.post("/v1/chat/completions", json=chat("no-such-model"))
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "model_not_found"
            wrong = await client.post("/v1/embeddings", json={"model": model, "input": "hi"})
            assert wrong.status_code == 400
            assert "does not support embeddings" in wrong.json()["error"]["message"]

    async def test_viewer_cannot_call_inference(self, platform: Platform) -> None:
        model = await platform.served_model()
        tenant = await platform.factory.tenant(roles={"v": Role.VIEWER})
        viewer = await platform.factory.member_key(tenant, "v", Role.VIEWER)
        async with platform.client(viewer.key) as client:
            response = await client.post("/v1/chat/completions", json=chat(model))
        assert response.status_code == 403


class TestMetering:
    async def test_one_usage_record_per_request_with_engine_counts(
        self, platform: Platform
    ) -> None:
        model = await platform.served_model()
        key, key_id = await member(platform)
        async with platform.client(key) as client:
            response = await client.post(
                "/v1/chat/completions", json=chat(model, "one two three", max_tokens=5)
            )
            assert response.status_code == 200
            assert response.headers["x-souverain-datacenter"] == "fr-test"
            streamed = await client.post(
                "/v1/chat/completions", json=chat(model, "one two three", max_tokens=5, stream=True)
            )
            assert streamed.status_code == 200
        rows = await usage_records(platform.sessions, 2, key_id=key_id)
        assert len(rows) == 2
        assert {r.status for r in rows} == {"ok"}
        assert {(r.prompt_tokens, r.completion_tokens) for r in rows} == {(3, 5)}
        assert all(r.datacenter_id == "fr-test" and r.country == "FR" for r in rows)
        assert all(r.latency_ms and r.latency_ms > 0 for r in rows)

    async def test_stream_usage_chunk_only_when_asked(self, platform: Platform) -> None:
        model = await platform.served_model()
        key, _ = await member(platform)
        async with platform.client(key) as client:
            plain = await client.post(
                "/v1/chat/completions", json=chat(model, max_tokens=3, stream=True)
            )
            asked = await client.post(
                "/v1/chat/completions",
                json=chat(model, max_tokens=3, stream=True, stream_options={"include_usage": True}),
            )
        plain_chunks = [
            json.loads(line[5:]) for line in plain.text.splitlines() if line.startswith("data: {")
        ]
        asked_chunks = [
            json.loads(line[5:]) for line in asked.text.splitlines() if line.startswith("data: {")
        ]
        assert all("usage" not in c for c in plain_chunks)
        assert (
            asked_chunks[-1]["choices"] == []
            and asked_chunks[-1]["usage"]["completion_tokens"] == 3
        )
        assert plain.text.rstrip().endswith("data: [DONE]") and asked.text.rstrip().endswith(
            "data: [DONE]"
        )

    async def test_engine_error_is_502_and_still_metered(self, platform: Platform) -> None:
        model = await platform.served_model()
        key, key_id = await member(platform)
        async with platform.client(key) as client:
            response = await client.post("/v1/chat/completions", json=chat(model, "#fail-500"))
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "upstream_error"
        [row] = await usage_records(platform.sessions, 1, key_id=key_id)
        assert row.status == "upstream_error"

    async def test_broken_stream_is_reported_and_metered_with_delivered_tokens(
        self, platform: Platform
    ) -> None:
        model = await platform.served_model()
        key, key_id = await member(platform)
        async with platform.client(key) as client:
            response = await client.post(
                "/v1/chat/completions", json=chat(model, "#break-stream", stream=True)
            )
        assert '"upstream_error"' in response.text
        [row] = await usage_records(platform.sessions, 1, key_id=key_id)
        assert row.status == "upstream_error"
        assert row.completion_tokens == 2 and row.tokens_counted_by == "gateway"
        assert row.prompt_tokens >= 1  # the engine said how long the prompt was, before token one

    async def test_client_disconnect_cancels_upstream_and_is_metered(
        self, platform: Platform
    ) -> None:
        model = await platform.served_model()
        key, key_id = await member(platform)
        cancelled_before = platform.stand_in.cancelled
        async with (
            platform.client(key) as client,
            client.stream(
                "POST",
                "/v1/chat/completions",
                json=chat(model, "#slow", stream=True, max_tokens=16),
            ) as response,
        ):
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    break  # leave after the first token
        await wait_until(lambda: platform.stand_in.cancelled > cancelled_before, timeout_s=5)

        async def settled() -> bool:
            rows = await records(platform, key_id)
            return len(rows) == 1 and rows[0].status == "client_cancelled"

        await wait_until(settled, timeout_s=5)

    async def test_concurrent_requests_each_get_one_record(self, platform: Platform) -> None:
        model = await platform.served_model()
        key, key_id = await member(platform)
        async with platform.client(key) as client:
            results = await asyncio.gather(
                *(
                    client.post("/v1/chat/completions", json=chat(model, stream=i % 2 == 0))
                    for i in range(20)
                )
            )
        assert all(r.status_code == 200 for r in results)
        rows = await usage_records(platform.sessions, 20, key_id=key_id)
        assert len(rows) == 20 and all(r.status == "ok" for r in rows)
        assert len({r.id for r in rows}) == 20

    async def test_completions_and_models(self, platform: Platform) -> None:
        model = await platform.served_model()
        key, _ = await member(platform)
        async with platform.client(key) as client:
            response = await client.post(
                "/v1/completions", json={"model": model, "prompt": "Once", "max_tokens": 4}
            )
            assert response.status_code == 200
            assert response.json()["usage"]["completion_tokens"] == 4
            listed = (await client.get("/v1/models")).json()
            assert model in {m["id"] for m in listed["data"]}
            assert (await client.get(f"/v1/models/{model}")).json()["id"] == model


class TestModelVisibility:
    async def test_private_model_is_invisible_to_other_orgs(self, platform: Platform) -> None:
        owner = await platform.factory.tenant(roles={"o": Role.MEMBER})
        other = await platform.factory.tenant(roles={"x": Role.MEMBER})
        model = await platform.served_model(owner_org_id=owner.org_id)
        owner_key = await platform.factory.member_key(owner, "o", Role.MEMBER)
        other_key = await platform.factory.member_key(other, "x", Role.MEMBER)
        async with platform.client(other_key.key) as client:
            assert model not in {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
            assert (await client.post("/v1/chat/completions", json=chat(model))).status_code == 404

        async def owner_lists() -> bool:
            async with platform.client(owner_key.key) as client:
                return model in {m["id"] for m in (await client.get("/v1/models")).json()["data"]}

        await wait_until(owner_lists)


async def test_health_needs_no_key(platform: Platform) -> None:
    async with httpx.AsyncClient(base_url=platform.url) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/readyz")).status_code == 200
