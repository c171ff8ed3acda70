"""Two `souverain controller` processes on one database and one Ray cluster: one leads;
SIGKILL it and the other takes over within the lease, adopts the running replicas by name,
starts nothing twice and loses nothing. Requests are served throughout: the data path
does not go through the controller."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray.cluster_utils import Cluster
from sqlalchemy import select

from souverain.core.fleet import RAY_NAMESPACE
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.db.jobs import LeaseRow
from souverain.db.tables import utcnow
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.factories import Factory
from souverain.testing.live import LiveServer, free_port
from tests.conftest import MASTER_KEY, usage_records, wait_until
from tests.faults.conftest import Tally, needs_authenticated_ray

pytestmark = [pytest.mark.ray, pytest.mark.slow, needs_authenticated_ray]

LEASE_S = 4.0


@dataclass
class ControllerProcess:
    process: subprocess.Popen[bytes]
    log: Path

    def holder(self) -> str | None:
        """Its lease-holder name, once it has logged that it leads."""
        for line in self.log.read_text(errors="replace").splitlines():
            if "is leading" in line:
                return line.split("controller ", 1)[1].split(" is leading")[0]
        return None


@dataclass
class Setup:
    url: str
    operator: str
    factory: Factory
    database_url: str
    controllers: list[ControllerProcess]

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url, headers={"Authorization": f"Bearer {self.operator}"}, timeout=30
        )

    async def lease_holder(self) -> str | None:
        async with self.factory.sessions() as session:
            lease = (await session.execute(select(LeaseRow))).scalars().first()
            if lease is None:
                return None
            return lease.holder if lease.expires_at > utcnow() else None

    async def deployment(self, name: str) -> dict[str, Any]:
        async with self.client() as client:
            return (await client.get(f"/api/deployments/{name}")).json()  # type: ignore[no-any-return]


def start_controller(directory: Path, database_url: str, address: str, n: int) -> ControllerProcess:
    log = directory / f"controller-{n}.log"
    env = {
        **os.environ,
        "SOUVERAIN_DATA_DIR": str(directory),
        "SOUVERAIN_DATABASE_URL": database_url,
        "SOUVERAIN_SECRET_KEY": MASTER_KEY,
        "SOUVERAIN_RAY_ADDRESS": address,  # authenticated: its token in SOUVERAIN_RAY_TOKEN_FILE
        "SOUVERAIN_CONTROLLER_LEASE_S": str(LEASE_S),
        "SOUVERAIN_RECONCILE_INTERVAL_S": "0.5",
        "SOUVERAIN_LOG_LEVEL": "INFO",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "souverain.cli.main", "controller"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return ControllerProcess(process, log)


@pytest.fixture(scope="module")
async def setup(
    par1_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Setup]:
    directory = tmp_path_factory.mktemp("failover")
    settings = Settings(
        data_dir=directory,
        database_url=f"sqlite:///{directory / 'souverain.db'}",
        secret_key=MASTER_KEY,  # type: ignore[arg-type]
        replica_refresh_s=0.25,
        port=free_port(),
    )
    with LiveServer(create_app(settings), port=settings.port) as server:
        engine = create_engine_unpooled(settings.sqlalchemy_url)
        factory = Factory(session_factory(engine))
        operator = (await factory.operator()).key
        controllers = [
            start_controller(directory, str(settings.database_url), par1_cluster.address, n)
            for n in (1, 2)
        ]
        found = Setup(server.url, operator, factory, str(settings.database_url), controllers)
        try:
            yield found
        finally:
            for controller in controllers:
                if controller.process.poll() is None:
                    controller.process.send_signal(signal.SIGTERM)
                    controller.process.wait(30)
            await engine.dispose()


def replica_actors() -> set[str]:
    return {
        actor["name"]
        for actor in ray.util.list_named_actors(all_namespaces=True)
        if actor["name"].startswith("souverain-replica-")
    }


def engine_pid(replica_id: str) -> int:
    actor = ray.get_actor(f"souverain-replica-{replica_id}", namespace=RAY_NAMESPACE)
    return int(ray.get(actor.engine_pid.remote(), timeout=10))


async def test_sigkill_of_the_leader_hands_over_within_the_lease(
    setup: Setup, tally: Tally
) -> None:
    async with setup.client() as client:
        datacenter = {"id": "par1", "name": "Paris 1", "country": "FR",
                      "operator_name": "dc-op", "operator_country": "FR"}  # fmt: skip
        assert (await client.post("/api/datacenters", json=datacenter)).status_code == 201
        await setup.factory.stand_in_model("failover-model")
        body = {"name": "steady", "model": "failover-model", "replicas": 2, "cpus": 0.5}
        assert (await client.post("/api/deployments", json=body)).status_code == 201

    async def ready(count: int) -> bool:
        found = await setup.deployment("steady")
        details = found["replica_details"]
        return (
            found["status"] == "ready"
            and len(details) == count
            and all(r["state"] == "ready" for r in details)
        )

    await wait_until(lambda: ready(2), timeout_s=90, interval_s=0.25)
    before = await setup.deployment("steady")
    replicas = {r["id"] for r in before["replica_details"]}
    pids = {replica: engine_pid(replica) for replica in replicas}
    assert len(replica_actors()) == 2

    holder = await setup.lease_holder()
    leader = next(c for c in setup.controllers if c.holder() == holder)
    follower = next(c for c in setup.controllers if c is not leader)

    stop = asyncio.Event()

    async def traffic() -> None:
        async with setup.client() as client:
            while not stop.is_set():
                body = {"model": "failover-model",
                        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}  # fmt: skip
                answer = await client.post("/v1/chat/completions", json=body)
                tally.saw(answer.status_code)
                await asyncio.sleep(0.05)

    running = asyncio.create_task(traffic())
    leader.process.send_signal(signal.SIGKILL)
    killed = time.monotonic()

    async def taken_over() -> bool:
        now_holder = await setup.lease_holder()
        return now_holder is not None and now_holder == follower.holder()

    await wait_until(taken_over, timeout_s=LEASE_S * 4, interval_s=0.1)
    failover_s = time.monotonic() - killed
    print(f"[fault] leader SIGKILL -> follower leads: {failover_s:.2f}s (lease {LEASE_S:.0f}s)")
    assert failover_s < LEASE_S + 3

    await asyncio.sleep(2.0)  # a few rounds of the new leader
    after = await setup.deployment("steady")
    assert {r["id"] for r in after["replica_details"]} == replicas  # adopted by name
    assert {replica: engine_pid(replica) for replica in replicas} == pids  # nothing restarted
    assert len(replica_actors()) == 2  # nothing started twice

    async with setup.client() as client:
        scaled = await client.patch("/api/deployments/steady", json={"replicas": 3})
        assert scaled.status_code == 200, scaled.text
    await wait_until(lambda: ready(3), timeout_s=60, interval_s=0.25)
    assert len(replica_actors()) == 3
    stop.set()
    await running
    assert tally.answered == tally.sent and tally.sent > 0
    records = await usage_records(setup.factory.sessions, tally.sent, model="failover-model")
    tally.records = len(records)
    assert tally.records == tally.sent
