"""Scale to zero: the first streamed token from a deployment at zero replicas, and its parts.

    python bench/autoscale.py [--rounds 5] [--engine stand-in|llamacpp] [--idle-s 2]

A local Ray cluster (one node labelled `par1`), a server with its controller in this
process, a deployment with `min_replicas` 0, `max_replicas` 1. Each round waits until the
deployment has released its replica, then sends one streamed chat request and times, from
the moment it was sent (wall clock; database timestamps are this host's):

  demand    the server's demand row says a request waits
  decision  the controller wants one replica (`scaled_at`)
  placed    the replica row exists (the actor's creation was asked of Ray)
  actor     the actor runs on its node (a Ray worker started, souverain imported)
  spawned   the engine process was started
  listening the engine's first HTTP answer (often "loading")
  answered  the engine answered the readiness probe (a one-token generation)
  ready     the supervisor calls the replica ready
  observed  the replica row says ready (the controller's observer wrote it)
  token     the client's first streamed token (the gateway noticed, queued, prefilled)

(`actor` to `ready` are the supervisor's own marks, `ReplicaStatus.start_marks`.)

and the same request's first token once the replica is warm. Prints the medians and
cold ÷ warm (goal: cold start ≤ 3 s to the first token with the built-in model, engine
start included). `--engine llamacpp` serves the built-in SmolLM2 (needs the engine
installed); the stand-in engine measures the platform's own part. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import openai
import ray
from ray.cluster_utils import Cluster
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.cluster.ray_cluster import RayCluster
from souverain.core.fleet import DATACENTER_LABEL
from souverain.db.demand import DeploymentDemandRow
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.db.tables import DeploymentRow, ReplicaRow
from souverain.node.artifacts import builtin_path, file_sha256
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.cluster import controller_hook
from souverain.testing.factories import Factory
from souverain.testing.live import LiveServer, free_port

MASTER = "bench-master-key-0123456789abcdef0123456789abcdef"
BUILTIN = "smollm2-135m-instruct"
PARTS = ("demand", "decision", "placed", "actor", "spawned", "listening", "answered", "ready",
         "observed", "token")  # fmt: skip
NODE_MARKS = ("actor", "spawned", "listening", "answered", "ready")


async def wait_for(check: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def setup(url: str, factory: Factory, operator: str, args: argparse.Namespace) -> str:
    headers = {"Authorization": f"Bearer {operator}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        (await http.post("/api/datacenters", json={
            "id": "par1", "name": "Paris 1", "country": "FR", "operator_name": "dc-op",
            "operator_country": "FR"})).raise_for_status()  # fmt: skip
        model = "sleepy"
        if args.engine == "stand-in":
            await factory.stand_in_model(model)
        else:
            (await http.post("/api/models", json={
                "name": model, "uri": f"builtin://{BUILTIN}", "license": "Apache-2.0",
                "sha256": file_sha256(builtin_path(BUILTIN))})).raise_for_status()  # fmt: skip
        (await http.post("/api/deployments", json={
            "name": model, "model": model, "cpus": 1, "min_replicas": 0, "max_replicas": 1,
            "scale_down_idle_s": args.idle_s})).raise_for_status()  # fmt: skip
    return model


async def deployment(sessions: async_sessionmaker[AsyncSession]) -> DeploymentRow:
    async with sessions() as session:
        query = select(DeploymentRow).where(DeploymentRow.name == "sleepy")
        return (await session.execute(query)).scalar_one()


async def first_token(sdk: openai.AsyncOpenAI, model: str) -> float:
    """Seconds from sending to the first streamed content."""
    sent = time.perf_counter()
    stream = await sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hello"}], max_tokens=8, stream=True
    )
    seen = None
    async for chunk in stream:
        if seen is None and chunk.choices and chunk.choices[0].delta.content:
            seen = time.perf_counter() - sent
    return seen if seen is not None else time.perf_counter() - sent


async def watch(sessions: async_sessionmaker[AsyncSession], deployment_id: str,
                marks: dict[str, float], actors: list[str]) -> None:  # fmt: skip
    """Record when each step first shows in the database (its own timestamps)."""
    while "observed" not in marks:
        async with sessions() as session:
            demand = (await session.execute(select(DeploymentDemandRow).where(
                DeploymentDemandRow.deployment_id == deployment_id,
                DeploymentDemandRow.waiting > 0))).scalars().first()  # fmt: skip
            row = await session.get(DeploymentRow, deployment_id)
            replica = (await session.execute(select(ReplicaRow).where(
                ReplicaRow.deployment_id == deployment_id))).scalars().first()  # fmt: skip
        if demand is not None:
            marks.setdefault("demand", _ts(demand.updated_at))
        if row is not None and row.replicas > 0 and row.scaled_at is not None:
            marks.setdefault("decision", _ts(row.scaled_at))
        if replica is not None:
            marks.setdefault("placed", _ts(replica.created_at))
            actors[:] = [replica.actor_name]
            if replica.state == "ready":
                marks.setdefault("observed", _ts(replica.updated_at))
        await asyncio.sleep(0.02)


def _ts(value: datetime) -> float:
    return value.timestamp()


async def one_round(sessions: async_sessionmaker[AsyncSession], sdk: openai.AsyncOpenAI,
                    model: str, args: argparse.Namespace) -> dict[str, float]:  # fmt: skip
    async def asleep() -> bool:  # its last replica drained and stopped
        row = await deployment(sessions)
        return row.status == "stopped" and row.replicas == 0

    await wait_for(asleep, args.idle_s + 120, "the deployment to scale to zero")
    row = await deployment(sessions)
    marks: dict[str, float] = {}
    actors: list[str] = []
    sent = time.time()
    watcher = asyncio.create_task(watch(sessions, row.id, marks, actors))
    token = await first_token(sdk, model)
    await asyncio.wait_for(watcher, 30)
    status = await asyncio.to_thread(RayCluster().replica_status, actors[0])
    if status is not None:
        marks |= {name: at for name, at in status.start_marks if name in NODE_MARKS}
    parts = {name: marks[name] - sent for name in PARTS[:-1] if name in marks}
    parts["token"] = token
    parts["warm"] = await first_token(sdk, model)
    return parts


async def run(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="bench-autoscale-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=4, labels={DATACENTER_LABEL: "par1"})
    cluster.wait_for_nodes()
    settings = Settings(data_dir=directory, database_url=f"sqlite:///{directory / 'b.db'}",
                        secret_key=MASTER, port=free_port())  # type: ignore[arg-type]  # fmt: skip
    try:
        app = create_app(settings, hooks=[controller_hook(cluster.address)])
        with LiveServer(app, port=settings.port) as server:
            engine = create_engine_unpooled(settings.sqlalchemy_url)
            sessions = session_factory(engine)
            factory = Factory(sessions)
            operator = (await factory.operator()).key
            model = await setup(server.url, factory, operator, args)
            sdk = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=operator,
                                     max_retries=0, timeout=300)  # fmt: skip
            rounds = [await one_round(sessions, sdk, model, args) for _ in range(args.rounds)]
            await engine.dispose()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    report(rounds, args)


def report(rounds: list[dict[str, float]], args: argparse.Namespace) -> None:
    print(f"engine {args.engine}, {len(rounds)} round(s); seconds after the request was sent")
    for name in (*PARTS, "warm"):
        values = [r[name] for r in rounds if name in r]
        if values:
            print(f"  {name:<9} median {statistics.median(values):7.3f}  "
                  f"min {min(values):7.3f}  max {max(values):7.3f}")  # fmt: skip
    cold = statistics.median(r["token"] for r in rounds)
    warm = statistics.median(r["warm"] for r in rounds)
    print(f"cold first token {cold:.3f} s, warm {warm:.3f} s: cold ÷ warm {cold / warm:.1f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--engine", choices=("stand-in", "llamacpp"), default="stand-in")
    parser.add_argument("--idle-s", type=int, default=2)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
