"""Replica faults on a real Ray cluster: an engine that dies on its first generation is
`failed` with its reason everywhere a person looks and never routed to; an engine that
exits is out of the gateway's routes within a second, and comes back by itself."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray.cluster_utils import Cluster

from souverain.core.fleet import DATACENTER_LABEL, RAY_NAMESPACE
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.gateway.state import AppState
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.cluster import controller_hook
from souverain.testing.factories import Factory
from souverain.testing.live import LiveServer, free_port
from tests.conftest import MASTER_KEY, usage_records, wait_until
from tests.faults.conftest import Tally

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@dataclass
class RayFleet:
    url: str
    operator: str
    factory: Factory
    server: LiveServer
    app: Any

    @property
    def state(self) -> AppState:
        return self.app.state.souverain  # type: ignore[no-any-return]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.operator}"}, timeout=30
        )

    async def deployment(self, name: str) -> dict[str, Any]:
        async with self.client() as client:
            return (await client.get(f"/api/deployments/{name}")).json()  # type: ignore[no-any-return]

    async def deploy(self, name: str, model: str, replicas: int, **engine_args: Any) -> None:
        await self.factory.stand_in_model(model)
        body = {
            "name": name,
            "model": model,
            "replicas": replicas,
            "cpus": 0.5,
            "engine_args": engine_args,
        }
        async with self.client() as client:
            created = await client.post("/api/deployments", json=body)
        assert created.status_code == 201, created.text

    async def wait_status(self, name: str, status: str, timeout_s: float = 90) -> dict[str, Any]:
        found: dict[str, Any] = {}

        async def reached() -> bool:
            nonlocal found
            found = await self.deployment(name)
            return found["status"] == status

        await wait_until(reached, timeout_s=timeout_s, interval_s=0.25)
        return found


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    fast_failure = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "_system_config": fast_failure}
    )
    cluster.add_node(num_cpus=4, labels={DATACENTER_LABEL: "par1"})
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
async def fleet(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RayFleet]:
    directory: Path = tmp_path_factory.mktemp("replica-faults")
    settings = Settings(
        data_dir=directory,
        database_url=f"sqlite:///{directory / 'souverain.db'}",
        secret_key=MASTER_KEY,  # type: ignore[arg-type]
        audit_window_s=0.3,  # the route refresh keeps its default: the 1 s bound is for it
        port=free_port(),
    )
    app = create_app(settings, hooks=[controller_hook(cluster.address)])
    with LiveServer(app, port=settings.port) as server:
        engine = create_engine_unpooled(settings.sqlalchemy_url)
        factory = Factory(session_factory(engine))
        operator = (await factory.operator()).key
        fleet = RayFleet(server.url, operator, factory, server, app)
        async with fleet.client() as client:
            datacenter = {
                "id": "par1",
                "name": "Paris 1",
                "country": "FR",
                "operator_name": "dc-op",
                "operator_country": "FR",
            }
            assert (await client.post("/api/datacenters", json=datacenter)).status_code == 201
        yield fleet
        await engine.dispose()


def chat(model: str, prompt: str = "hello") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 4}


class TestEngineThatDiesOnItsFirstGeneration:
    async def test_failed_with_the_reason_everywhere_and_never_routed(
        self, fleet: RayFleet, tally: Tally
    ) -> None:
        await fleet.deploy("sigill", "sigill-model", 1, fault="sigill")
        seen: set[str] = set()

        async def failed() -> bool:
            found = await fleet.deployment("sigill")
            seen.add(found["status"])
            return found["status"] == "failed"

        await wait_until(failed, timeout_s=90, interval_s=0.2)
        assert "ready" not in seen
        deployment = await fleet.deployment("sigill")
        assert "illegal instruction (SIGILL)" in deployment["status_reason"]
        [replica] = deployment["replica_details"]
        assert replica["state"] == "failed" and "without native flags" in replica["reason"]

        env = {**os.environ, "SOUVERAIN_URL": fleet.url, "SOUVERAIN_API_KEY": fleet.operator,
               "COLUMNS": "250"}  # fmt: skip
        listed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "souverain.cli.main", "deployments", "list"],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        assert "sigill" in listed.stdout and "failed" in listed.stdout
        assert "SIGILL" in listed.stdout

        async with fleet.client() as client:
            models = (await client.get("/v1/models")).json()["data"]
            assert "sigill-model" not in {m["id"] for m in models}
            for _ in range(5):
                answer = await client.post("/v1/chat/completions", json=chat("sigill-model"))
                tally.saw(answer.status_code)
                assert answer.status_code == 503
                assert "no ready replica" in answer.json()["error"]["message"]
            events = (await client.get("/api/audit", params={"limit": 500})).json()["events"]
        actions = {(e["action"], e["target_id"]) for e in events}
        assert ("replica.failed", replica["id"]) in actions
        assert any(
            e["action"] == "deployment.status" and json.loads(e["details"])["to"] == "failed"
            for e in events
        )
        tally.records = 0  # nothing was admitted: a 503 before admission opens no record


class TestEngineExit:
    async def test_gateway_stops_routing_within_a_second_and_the_replica_returns(
        self, fleet: RayFleet, tally: Tally
    ) -> None:
        await fleet.deploy("pair", "pair-model", 2)
        ready = await fleet.wait_status("pair", "ready")
        routes = fleet.state.routes
        await wait_until(lambda: routes.ready_replicas("pair-model") == 2, timeout_s=10)
        victim = ready["replica_details"][0]
        actor = ray.get_actor(f"souverain-replica-{victim['id']}", namespace=RAY_NAMESPACE)
        pid = ray.get(actor.engine_pid.remote(), timeout=10)

        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        while any(r.replica_id == victim["id"] for rs in routes.routes.values() for r in rs):
            assert time.monotonic() - killed < 5, "the gateway still routes to a dead engine"
            await asyncio.sleep(0.005)
        unrouted_after = time.monotonic() - killed
        print(f"[fault] engine SIGKILL -> gateway no longer routes to it: {unrouted_after:.3f}s")
        assert unrouted_after < 1.0

        async with fleet.client() as client:
            for i in range(10):
                answer = await client.post("/v1/chat/completions", json=chat("pair-model", f"{i}"))
                tally.saw(answer.status_code)
        assert tally.answered == 10

        async def revived() -> bool:
            found = await fleet.deployment("pair")
            replica = next(r for r in found["replica_details"] if r["id"] == victim["id"])
            return replica["state"] == "ready" and replica["engine_restarts"] == 1

        await wait_until(revived, timeout_s=60, interval_s=0.25)
        await wait_until(lambda: routes.ready_replicas("pair-model") == 2, timeout_s=10)
        records = await usage_records(fleet.factory.sessions, 10, model="pair-model")
        tally.records = len(records)
        assert len(records) == 10 and {r.status for r in records} == {"ok"}
