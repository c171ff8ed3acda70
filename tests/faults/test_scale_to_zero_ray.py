"""Scale to zero on a real Ray cluster: a deployment with minimum 0 releases its replica
(no engine actor left) once idle, and the next request starts one, waits for it, and is
answered; both decisions are audited with their reason. The stand-in engine runs as a
real process in a Ray actor; the client is the official SDK."""

from __future__ import annotations

import openai
import pytest
import ray

from souverain.core.fleet import RAY_NAMESPACE, actor_name_for
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
