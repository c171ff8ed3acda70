"""Engines that break while answering: killed mid-stream or mid-JSON, stalled past the read
timeout, gone before the request. Real engine processes; the server's read timeout is
1.5 s. A request the engine received is never sent again; one that could not be
delivered moves to another replica."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx
import pytest

from souverain.core.roles import Role
from tests.conftest import wait_until
from tests.faults.conftest import READ_TIMEOUT_S, FaultPlatform, Tally, fault_platform

pytestmark = pytest.mark.slow


def chat(model: str, prompt: str, **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], **extra}


async def stream_events(response: httpx.Response) -> list[str]:
    return [line[5:].strip() async for line in response.aiter_lines() if line.startswith("data:")]


class TestKilledEngines:
    async def test_engine_killed_mid_stream(self, faulty: FaultPlatform, tally: Tally) -> None:
        model, [engine] = await faulty.model_on_engines(1)
        async with faulty.client() as client:
            body = chat(model, "#die-mid-stream tell me", stream=True)
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                tally.saw(response.status_code)
                events = await stream_events(response)
        assert response.status_code == 200  # the headers had left: the error is in-stream
        assert [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:2]]
        assert "broke off" in json.loads(events[-1])["error"]["message"]
        assert "[DONE]" not in events
        [record] = await faulty.settled(model, 1)
        tally.records = 1
        assert record.status == "upstream_error"
        assert (record.completion_tokens, record.tokens_counted_by) == (2, "gateway")
        assert record.prompt_tokens == 3  # the engine said how long the prompt was
        assert engine.process.wait(5) == -signal.SIGKILL

    async def test_engine_killed_mid_json_answer(self, faulty: FaultPlatform, tally: Tally) -> None:
        model, [engine] = await faulty.model_on_engines(1)
        async with faulty.client() as client:
            answer = await client.post("/v1/chat/completions", json=chat(model, "#die-mid-json"))
        tally.saw(answer.status_code)
        assert answer.status_code == 502
        assert answer.json()["error"]["type"] == "upstream_error"
        [record] = await faulty.settled(model, 1)
        tally.records = 1
        assert record.status == "upstream_error"
        assert not engine.alive()

    async def test_a_request_the_engine_dropped_is_not_sent_to_another_replica(
        self, faulty: FaultPlatform, tally: Tally
    ) -> None:
        model, engines = await faulty.model_on_engines(2)
        async with faulty.client() as client:
            answer = await client.post("/v1/chat/completions", json=chat(model, "#die-mid-json"))
        tally.saw(answer.status_code)
        assert answer.status_code == 502
        assert (
            "not sent again" in answer.json()["error"]["message"]
            or "broke off" in (answer.json()["error"]["message"])
        )
        await faulty.settled(model, 1)
        tally.records = 1
        # Had the gateway resent it, the second engine would have died of it too.
        assert sorted(e.alive() for e in engines) == [False, True]

    async def test_an_engine_that_is_gone_is_skipped(
        self, faulty: FaultPlatform, tally: Tally
    ) -> None:
        model, [gone, alive] = await faulty.model_on_engines(2)
        gone.process.kill()
        gone.process.wait()
        async with faulty.client() as client:
            for i in range(10):
                answer = await client.post("/v1/chat/completions", json=chat(model, f"hi {i}"))
                tally.saw(answer.status_code)
        assert tally.answered == 10
        records = await faulty.settled(model, 10)
        tally.records = len(records)
        assert {r.status for r in records} == {"ok"}
        assert alive.alive()


class TestStalledEngines:
    async def test_engine_silent_before_its_headers_is_a_504(
        self, faulty: FaultPlatform, tally: Tally
    ) -> None:
        model, _ = await faulty.model_on_engines(1)
        started = time.monotonic()
        async with faulty.client() as client:
            answer = await client.post("/v1/chat/completions", json=chat(model, "#stall"))
        took = time.monotonic() - started
        tally.saw(answer.status_code)
        assert answer.status_code == 504
        assert answer.json()["error"]["code"] == "upstream_timeout"
        assert READ_TIMEOUT_S <= took < READ_TIMEOUT_S + 3
        [record] = await faulty.settled(model, 1)
        tally.records = 1
        assert record.status == "upstream_error" and "time" in record.error

    async def test_engine_stalling_mid_stream_ends_the_stream_with_an_error(
        self, faulty: FaultPlatform, tally: Tally
    ) -> None:
        model, _ = await faulty.model_on_engines(1)
        async with faulty.client() as client:
            body = chat(model, "#stall-stream", stream=True)
            async with client.stream("POST", "/v1/chat/completions", json=body) as response:
                tally.saw(response.status_code)
                events = await stream_events(response)
        assert len(events) == 3 and "error" in json.loads(events[-1])
        [record] = await faulty.settled(model, 1)
        tally.records = 1
        assert record.status == "upstream_error"
        assert record.completion_tokens == 2

    async def test_client_gone_while_the_engine_stalls_is_settled_cancelled(
        self, faulty: FaultPlatform, tally: Tally
    ) -> None:
        model, _ = await faulty.model_on_engines(1)
        async with faulty.client(timeout_s=0.5) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post("/v1/chat/completions", json=chat(model, "#stall"))
        tally.sent = 1
        [record] = await faulty.settled(model, 1)
        tally.records = 1
        assert record.status == "client_cancelled"
        assert await faulty.open_records() == 0


class TestKeysThatBreakEngines:
    async def test_a_key_that_keeps_breaking_engines_is_paused_and_audited(
        self, tmp_path: Path, tally: Tally
    ) -> None:
        async with fault_platform(
            tmp_path, "sqlite", engine_failures_per_key=3, audit_window_s=0.3
        ) as platform:
            model, engines = await platform.model_on_engines(4)
            async with platform.client() as client:
                for _ in range(3):
                    answer = await client.post(
                        "/v1/chat/completions", json=chat(model, "#die-mid-json")
                    )
                    tally.saw(answer.status_code)
                    assert answer.status_code == 502
                paused = await client.post("/v1/chat/completions", json=chat(model, "hello"))
                tally.saw(paused.status_code)
                assert paused.status_code == 429
                assert "paused" in paused.json()["error"]["message"]
                assert int(paused.headers["retry-after"]) > 0
            assert sum(e.alive() for e in engines) == 1  # the fourth was never reached
            other = await platform.factory.member_key(
                await platform.factory.tenant(roles={"bo": Role.OWNER}), "bo", Role.OWNER
            )
            async with httpx.AsyncClient(
                base_url=platform.url, headers={"Authorization": f"Bearer {other.key}"}
            ) as client:
                served = await client.post("/v1/chat/completions", json=chat(model, "hi"))
                assert served.status_code == 200  # other tenants are not punished

                async def audited() -> bool:
                    async with platform.client() as owner:
                        events = (
                            await owner.get("/api/audit", params={"action": "engine.failure"})
                        ).json()
                    return len(events["events"]) >= 1

                await wait_until(audited, timeout_s=10)
            tally.records = len(await platform.settled(model, 4))
