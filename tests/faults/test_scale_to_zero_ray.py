"""Scale to zero on a real Ray cluster: a deployment with minimum 0 releases its replica
(no engine actor left) once idle, and the next request starts one, waits for it, and is
answered; both decisions are audited with their reason. A replica released while it
streams drains: its streams end whole, new requests go elsewhere, and it stops after. The
stand-in engine runs as a real process in a Ray actor; the client is the official SDK."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import openai
import pytest
import ray

from souverain.core.fleet import RAY_NAMESPACE, actor_name_for
from tests.conftest import wait_until
from tests.faults.test_replica_faults import RayFleet, cluster, fleet

pytestmark = [pytest.mark.ray, pytest.mark.slow]
__all__ = ["cluster", "fleet"]  # the module's Ray cluster and server, shared with its faults


def named_actors() -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == RAY_NAMESPACE}  # fmt: skip


class TestScaleToZero:
    async def test_idle_releases_the_engine_and_a_request_wakes_it(self, fleet: RayFleet) -> None:
        await fleet.factory.stand_in_model("sleepy")
        body = {"name": "sleepy", "model": "sleepy", "cpus": 0.5, "min_replicas": 0,
                "max_replicas": 1, "scale_down_idle_s": 3}  # fmt: skip
        async with fleet.client() as client:
            created = await client.post("/api/deployments", json=body)
        assert created.status_code == 201, created.text

        ready = await fleet.wait_status("sleepy", "ready")
        engines = {actor_name_for(r["id"]) for r in ready["replica_details"]}
        assert engines and engines <= named_actors()
        stopped = await fleet.wait_status("sleepy", "stopped", timeout_s=60)
        assert stopped["replicas"] == 0 and stopped["replica_details"] == []
        assert "idle for" in stopped["scaling_reason"]
        assert not engines & named_actors()  # no engine holds memory at zero
        # its start, as the node read it: the engine process's CPU time, spawn to ready
        await wait_until(lambda: _started(fleet, "sleepy"), timeout_s=15)
        last = (await fleet.deployment("sleepy"))["startup"]["last"]
        assert last["cpu_s"] > 0 and last["engine_s"] > 0 and last["wall_s"] >= last["engine_s"]

        sdk = openai.AsyncOpenAI(
            base_url=f"{fleet.url}/v1", api_key=fleet.operator, max_retries=0, timeout=120
        )
        answer = await sdk.chat.completions.create(
            model="sleepy", messages=[{"role": "user", "content": "hello"}], max_tokens=4
        )
        assert answer.choices[0].message.content
        woken = await fleet.deployment("sleepy")
        assert woken["replicas"] == 1 and "waiting with no replica" in woken["scaling_reason"]

        async with fleet.client() as client:
            events = (await client.get("/api/audit", params={"limit": 500})).json()["events"]
        scaled = [e for e in events if e["action"] == "deployment.scale"
                  and e["target_id"] == woken["id"]]  # fmt: skip
        assert len(scaled) >= 2  # down to zero, then up for the request


async def _started(fleet: RayFleet, name: str) -> bool:
    return bool((await fleet.deployment(name))["startup"]["starts"])


async def streamed_words(sdk: openai.AsyncOpenAI, model: str) -> int:
    """Pieces of content of one streamed answer (the stand-in streams 16; a cut stream
    raises or has fewer)."""
    stream = await sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "tell me"}], max_tokens=16,
        stream=True,
    )  # fmt: skip
    pieces = 0
    async for chunk in stream:
        pieces += sum(bool(choice.delta.content) for choice in chunk.choices)
    return pieces


class TestScaleDownDrains:
    async def test_a_replica_released_while_it_streams_fails_no_request(
        self, fleet: RayFleet
    ) -> None:
        """Two replicas, each streaming an 8 s answer; the limits change so that one is too
        many. The released replica takes no new request, its stream ends whole, and it
        stops once drained; requests sent all along are all answered."""
        await fleet.factory.stand_in_model("drained")
        body = {"name": "drained", "model": "drained", "cpus": 0.5, "replicas": 2,
                "min_replicas": 1, "max_replicas": 2, "scale_down_idle_s": 3600,
                "engine_args": {"token_delay": 0.5}}  # fmt: skip
        async with fleet.client() as client:
            created = await client.post("/api/deployments", json=body)
        assert created.status_code == 201, created.text
        await fleet.wait_status("drained", "ready")
        sdk = openai.AsyncOpenAI(
            base_url=f"{fleet.url}/v1", api_key=fleet.operator, max_retries=0, timeout=120
        )
        streams = [asyncio.create_task(streamed_words(sdk, "drained")) for _ in range(2)]
        await wait_until(lambda: in_flight(fleet, 2), timeout_s=20)  # one on each replica
        async with fleet.client() as client:  # 2 streams (+1 request) need 1 replica at 3
            changed = await client.patch("/api/deployments/drained", json={
                "scale_down_idle_s": 1, "target_busy_per_replica": 3})  # fmt: skip
        assert changed.status_code == 200, changed.text

        answered = 0
        while not all(stream.done() for stream in streams):  # never fails, drained or not
            answer = await sdk.chat.completions.create(
                model="drained", messages=[{"role": "user", "content": "hi"}], max_tokens=1
            )
            answered += bool(answer.choices[0].message.content)
        assert [await stream for stream in streams] == [16, 16]
        assert answered >= 3

        drained = await wait_for_replicas(fleet, "drained", 1)
        async with fleet.client() as client:
            events = (await client.get("/api/audit", params={"limit": 500})).json()["events"]
        details = [(e, json.loads(e["details"])) for e in events if e["target_type"] == "replica"]
        replica_events = {(e["action"], e["target_id"]): d for e, d in details
                          if d.get("deployment") == drained["id"]}  # fmt: skip
        [released] = [rid for action, rid in replica_events if action == "replica.draining"]
        stop = replica_events[("replica.stop", released)]
        assert str(stop["reason"]).startswith("scaled down: drained in")


async def in_flight(fleet: RayFleet, count: int) -> bool:
    return sum(fleet.state.routes.outstanding.values()) >= count


async def wait_for_replicas(fleet: RayFleet, name: str, count: int) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal found
        found = await fleet.deployment(name)
        return len(found["replica_details"]) == count

    await wait_until(reached, timeout_s=60)
    return found
