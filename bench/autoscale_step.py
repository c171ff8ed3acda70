"""A step load on an autoscaled deployment, then a sawtooth: how fast replicas come, how fast
time to first token recovers, how fast the count comes back down, and whether it flaps.

    python bench/autoscale_step.py [--streams 32] [--step-s 40] [--idle-s 10]
                                   [--parallel 12] [--token-delay 0.05] [--cycles 4]

A local Ray cluster of three worker nodes (processes of this one machine, 2 CPUs each,
all labelled `par1`), a server with its controller in this process, and a deployment of
`min_replicas` 1, `max_replicas` 3 on the stand-in engine: a real engine process per
replica, streaming canned tokens every `--token-delay` seconds, with `--parallel` slots
(the gateway queues what exceeds them, as it does for llama-server). The stand-in, not
llama.cpp: three llama.cpp engines on a 2-core machine share the same two cores, so a
second replica adds no compute and TTFT could not recover for reasons that are not the
autoscaler's. Every wait is bounded.

  idle       TTFT p50 of one stream at a time on one replica (the reference)
  step       `--streams` client loops (stream 16 tokens, then the next) for `--step-s`:
             when the controller wanted more replicas, when each one was ready, and the
             first 2 s window from which TTFT p50 stays under 2× idle
  release    after the load, seconds until the deployment is back at its minimum (the
             idle period `--idle-s`, then draining)
  sawtooth   `--cycles` bursts of `--streams` for half the idle period, each followed by
             a pause as long: scaling decisions taken meanwhile (flapping would show as
             downs and ups)
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import openai
import ray
from ray.cluster_utils import Cluster
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.fleet import DATACENTER_LABEL
from souverain.db.audit import AuditEventRow
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.db.tables import DeploymentRow, ReplicaRow
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.cluster import controller_hook
from souverain.testing.factories import Factory
from souverain.testing.live import LiveServer, free_port

MASTER = "bench-master-key-0123456789abcdef0123456789abcdef"
MODEL = "stepped"
WINDOW_S = 2.0


async def wait_for(check: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> float:
    """Seconds until `check` held."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)
    return time.monotonic() - start


async def setup(url: str, factory: Factory, operator: str, args: argparse.Namespace) -> None:
    await factory.stand_in_model(MODEL)
    headers = {"Authorization": f"Bearer {operator}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as http:
        (await http.post("/api/datacenters", json={
            "id": "par1", "name": "Paris 1", "country": "FR", "operator_name": "dc-op",
            "operator_country": "FR"})).raise_for_status()  # fmt: skip
        (await http.post("/api/deployments", json={
            "name": MODEL, "model": MODEL, "cpus": 1, "min_replicas": 1, "max_replicas": 3,
            "scale_down_idle_s": args.idle_s, "engine_args": {
                "token_delay": args.token_delay, "parallel": args.parallel}},
        )).raise_for_status()  # fmt: skip


class Fleet:
    """What the deployment looks like in the database."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def wanted(self) -> int:
        async with self.sessions() as session:
            query = select(DeploymentRow.replicas).where(DeploymentRow.name == MODEL)
            return int((await session.execute(query)).scalar_one())

    async def serving(self) -> tuple[int, int]:
        """(ready replicas not draining, replica rows)."""
        async with self.sessions() as session:
            rows = list((await session.execute(select(ReplicaRow))).scalars())
        ready = sum(1 for r in rows if r.state == "ready" and r.draining_since is None)
        return ready, len(rows)

    async def decisions(self) -> list[str]:
        async with self.sessions() as session:
            query = (
                select(AuditEventRow.details)
                .where(AuditEventRow.action == "deployment.scale")
                .order_by(AuditEventRow.seq)
            )
            return [str(d) for d in (await session.execute(query)).scalars()]


async def first_token(sdk: openai.AsyncOpenAI) -> float:
    sent = time.perf_counter()
    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hello"}], max_tokens=16, stream=True
    )
    seen = None
    async for chunk in stream:
        if seen is None and chunk.choices and chunk.choices[0].delta.content:
            seen = time.perf_counter() - sent
    return seen if seen is not None else time.perf_counter() - sent


async def load(sdk: openai.AsyncOpenAI, streams: int, seconds: float,
               samples: list[tuple[float, float]], origin: float) -> None:  # fmt: skip
    """`streams` loops of one stream after another for `seconds`: (sent, TTFT) samples."""

    async def loop() -> None:
        while time.monotonic() - origin < seconds:
            sent = time.monotonic() - origin
            samples.append((sent, await first_token(sdk)))

    await asyncio.gather(*(loop() for _ in range(streams)))


async def watch_step(fleet: Fleet, origin: float, marks: dict[str, float],
                     stop: asyncio.Event) -> None:  # fmt: skip
    while not stop.is_set():
        wanted, (ready, _) = await fleet.wanted(), await fleet.serving()
        now = time.monotonic() - origin
        if wanted > 1:
            marks.setdefault("decided", now)
        for count in (2, 3):
            if ready >= count:
                marks.setdefault(f"{count} ready", now)
        await asyncio.sleep(0.1)


def recovered_at(samples: list[tuple[float, float]], idle: float) -> float | None:
    """Start of the first window from which every window's TTFT p50 is under 2× idle."""
    windows: dict[int, list[float]] = {}
    for sent, ttft in samples:
        windows.setdefault(int(sent // WINDOW_S), []).append(ttft)
    under = [(k, statistics.median(v) < 2 * idle) for k, v in sorted(windows.items())]
    for index, (key, _) in enumerate(under):
        if all(ok for _, ok in under[index:]):
            return key * WINDOW_S
    return None


async def step(sdk: openai.AsyncOpenAI, fleet: Fleet, args: argparse.Namespace,
               idle: float) -> None:  # fmt: skip
    samples: list[tuple[float, float]] = []
    marks: dict[str, float] = {}
    origin, stop = time.monotonic(), asyncio.Event()
    watcher = asyncio.create_task(watch_step(fleet, origin, marks, stop))
    await load(sdk, args.streams, args.step_s, samples, origin)
    stop.set()
    await watcher
    early = [t for s, t in samples if s < WINDOW_S]
    late = [t for s, t in samples if s >= args.step_s - 10]
    print(f"step 1 → {args.streams} streams for {args.step_s:.0f} s ({len(samples)} requests)")
    for name in ("decided", "2 ready", "3 ready"):
        print(f"  {name:<9} {marks.get(name, float('nan')):6.2f} s after the step")
    print(f"  TTFT p50 first {WINDOW_S:.0f} s {statistics.median(early):.3f} s "
          f"({statistics.median(early) / idle:.1f}× idle); last 10 s "
          f"{statistics.median(late):.3f} s ({statistics.median(late) / idle:.2f}× idle)")  # fmt: skip
    back = recovered_at(samples, idle)
    print(f"  TTFT p50 under 2× idle from {back if back is not None else float('nan'):.0f} s "
          f"after the step on (goal: within 60 s)")  # fmt: skip


async def release(fleet: Fleet, args: argparse.Namespace) -> None:
    async def at_minimum() -> bool:
        ready, rows = await fleet.serving()
        return ready == 1 and rows == 1

    took = await wait_for(at_minimum, args.idle_s + 180, "the minimum after the load")
    print(f"release: back to 1 replica {took:.1f} s after the load ended "
          f"(idle period {args.idle_s} s, then draining)")  # fmt: skip


async def sawtooth(sdk: openai.AsyncOpenAI, fleet: Fleet, args: argparse.Namespace) -> None:
    before = len(await fleet.decisions())
    half = args.idle_s / 2
    for _ in range(args.cycles):
        await load(sdk, args.streams, half, [], time.monotonic())
        await asyncio.sleep(half)
    changes = (await fleet.decisions())[before:]
    print(f"sawtooth: {args.cycles} × ({half:.0f} s of {args.streams} streams, {half:.0f} s "
          f"pause): {len(changes)} scaling decision(s)")  # fmt: skip
    for change in changes:
        print(f"  {change}")


async def run(args: argparse.Namespace) -> None:
    directory = Path(tempfile.mkdtemp(prefix="bench-step-"))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    for _ in range(3):
        cluster.add_node(num_cpus=2, labels={DATACENTER_LABEL: "par1"})
    cluster.wait_for_nodes()
    settings = Settings(data_dir=directory, database_url=f"sqlite:///{directory / 'b.db'}",
                        secret_key=MASTER, port=free_port())  # type: ignore[arg-type]  # fmt: skip
    try:
        app = create_app(settings, hooks=[controller_hook(cluster.address)])
        with LiveServer(app, port=settings.port) as server:
            engine = create_engine_unpooled(settings.sqlalchemy_url)
            fleet = Fleet(session_factory(engine))
            factory = Factory(fleet.sessions)
            operator = (await factory.operator()).key
            await setup(server.url, factory, operator, args)
            await wait_for(lambda: _one_ready(fleet), 120, "the first replica")
            sdk = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=operator,
                                     max_retries=0, timeout=300)  # fmt: skip
            idle = statistics.median([await first_token(sdk) for _ in range(10)])
            print(f"idle TTFT p50 on one replica: {idle:.3f} s")
            await step(sdk, fleet, args, idle)
            await release(fleet, args)
            await sawtooth(sdk, fleet, args)
            await engine.dispose()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


async def _one_ready(fleet: Fleet) -> bool:
    return (await fleet.serving())[0] >= 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--streams", type=int, default=32)
    parser.add_argument("--step-s", type=float, default=40.0)
    parser.add_argument("--idle-s", type=int, default=10)
    parser.add_argument("--parallel", type=int, default=12, help="slots per replica")
    parser.add_argument("--token-delay", type=float, default=0.05)
    parser.add_argument("--cycles", type=int, default=4)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
