"""Another tenant's latency beside each exhaustion attempt of a hostile tenant.

    python bench/hostile.py [--lines 50000] [--rounds 20]

`souverain server` (SQLite) and the engine stand-in run as their own processes. A
neighbour organisation measures, idle and then while the attacker works, three things it
depends on: a chat request (the gateway), a small file upload (a database write through
the API) and a renewal of the controller's leader lease (the control plane's write, made
here by the benchmark itself: `souverain server` runs no controller). The attacker:

1. uploads a batch file of one line more than the limit (expect a 400),
2. starts a batch of `--lines` lines (validation writes one item per line), then cancels it
   (every pending line answered),
3. keeps two long batches running while the neighbour runs a 2-line batch: its time to
   completion ÷ the same batch on an idle platform,
4. sends 12 fine-tuning job creations at once (expect 4 accepted, 8 refused with 429).

Each phase prints p50 and max of the neighbour's latencies and their ratio to idle.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from _processes import spawn, tls_stand_in, wait_http

from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.engine import create_engine, session_factory
from souverain.jobs import leader
from souverain.settings import Settings
from souverain.testing.factories import Factory
from souverain.testing.live import free_port

MASTER = "e" * 64
ENDED = ("completed", "failed", "expired", "cancelled")
Probe = Callable[[], Awaitable[None]]


def batch_lines(model: str, count: int, text: str) -> bytes:
    return b"".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": model, "max_tokens": 4,
                             "messages": [{"role": "user", "content": f"{text} {i}"}]}}).encode()
        + b"\n"
        for i in range(count)
    )  # fmt: skip


async def upload(client: httpx.AsyncClient, content: bytes, purpose: str = "batch") -> str:
    answer = await client.post("/v1/files", files={"file": ("in.jsonl", io.BytesIO(content))},
                               data={"purpose": purpose}, timeout=600)  # fmt: skip
    answer.raise_for_status()
    return str(answer.json()["id"])


async def start_batch(client: httpx.AsyncClient, content: bytes) -> str:
    created = await client.post("/v1/batches", json={
        "input_file_id": await upload(client, content), "endpoint": "/v1/chat/completions",
        "completion_window": "24h"})  # fmt: skip
    created.raise_for_status()
    return str(created.json()["id"])


async def status(client: httpx.AsyncClient, batch_id: str) -> str:
    return str((await client.get(f"/v1/batches/{batch_id}", timeout=120)).json()["status"])


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 900) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit("a phase did not end in time")
        await asyncio.sleep(0.05)


async def sample(
    probes: dict[str, Probe], busy: Callable[[], bool], rounds: int
) -> dict[str, list[float]]:
    """Latencies (s) of each probe, round after round, while `busy()` (at least one round,
    at most `rounds`)."""
    found: dict[str, list[float]] = {name: [] for name in probes}
    for _ in range(rounds):
        for name, probe in probes.items():
            started = time.perf_counter()
            try:
                await probe()
            except Exception:  # a refusal counts as the time it took, and is reported
                found.setdefault(f"{name} refused", []).append(0.0)
            found[name].append(time.perf_counter() - started)
        if not busy():
            break
    return found


def report(phase: str, found: dict[str, list[float]], idle: dict[str, list[float]]) -> None:
    for name, values in found.items():
        if name.endswith("refused"):
            print(f"  {phase:<28} {name:<22} {len(values)} refused")
            continue
        p50, worst = statistics.median(values), max(values)
        base = statistics.median(idle[name])
        print(f"  {phase:<28} {name:<22} p50 {p50 * 1000:8.1f} ms  max {worst * 1000:8.1f} ms"
              f"  p50/idle {p50 / base:5.2f}  max/idle {worst / base:6.2f}")  # fmt: skip


async def run(base_url: str, settings: Settings, engine_url: str, lines: int, rounds: int) -> None:
    sessions = session_factory(create_engine(settings.sqlalchemy_url))
    factory = Factory(sessions)
    dc = await factory.datacenter("bench-dc", country="FR")
    replica = new_id("rep")
    model, _ = await factory.served_model(url=f"{engine_url}/r/{replica}", replica_id=replica,
                                          datacenter_id=dc, name=new_id("bench"))  # fmt: skip
    keys = []
    for name in ("attacker", "neighbour"):
        tenant = await factory.tenant(roles={name: Role.OWNER})
        keys.append((tenant, (await factory.member_key(tenant, name, Role.OWNER)).key))
    (attacker_tenant, attacker), (_, neighbour) = keys
    auth = {"Authorization": f"Bearer {neighbour}"}
    async with (
        httpx.AsyncClient(base_url=base_url, headers=auth, timeout=120) as them,
        httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {attacker}"},
                          timeout=120) as hostile,
    ):  # fmt: skip
        await asyncio.sleep(1.5)  # the server's route table learns the model

        async def chat() -> None:
            answer = await them.post("/v1/chat/completions", json={
                "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]})  # fmt: skip
            answer.raise_for_status()

        async def write() -> None:
            await upload(them, b'{"custom_id": "a", "body": {}}\n')

        async def lease() -> None:
            await leader.try_acquire(sessions, holder="bench", ttl_s=30, name="bench-lease")

        probes = {"chat": chat, "file upload": write, "leader lease": lease}
        await sample(probes, lambda: True, 3)  # warm: connections, caches
        idle = await sample(probes, lambda: True, rounds)
        report("idle", idle, idle)

        over = await hostile.post("/v1/files", data={"purpose": "batch"}, files={
            "file": ("big.jsonl", io.BytesIO(b'{"body": {}}\n' * 50_001))})  # fmt: skip
        print(f"  a file of 50,001 lines: {over.status_code} {over.text[:120]}")

        await big_batch(hostile, model, lines, probes, idle, rounds)
        await fairness(them, hostile, model)
        await fine_tuning_burst(hostile, attacker_tenant.org_id, factory, engine_url, dc)


async def big_batch(
    hostile: httpx.AsyncClient,
    model: str,
    lines: int,
    probes: dict[str, Probe],
    idle: dict[str, list[float]],
    rounds: int,
) -> None:
    """The neighbour's probes while a batch of `lines` lines is validated, then cancelled."""
    started = time.perf_counter()
    big = await start_batch(hostile, batch_lines(model, lines, "#slow question"))
    state = {"status": "validating"}

    async def follow(until_not: tuple[str, ...]) -> None:
        while state["status"] in until_not:
            state["status"] = await status(hostile, big)
            await asyncio.sleep(0.2)

    for phase, waiting in (("validating", ("validating",)),
                           ("cancelling", ("cancelling", "in_progress", "finalizing"))):  # fmt: skip
        if phase == "cancelling":
            started = time.perf_counter()
            (await hostile.post(f"/v1/batches/{big}/cancel")).raise_for_status()
            state["status"] = "cancelling"
        follower = asyncio.create_task(follow(waiting))
        during = await sample(probes, lambda w=waiting: state["status"] in w, 10 * rounds)
        await follower
        print(f"  {phase} {lines} lines took {time.perf_counter() - started:.1f} s")
        report(f"{phase} {lines} lines", during, idle)


async def small_batch_s(client: httpx.AsyncClient, model: str) -> float:
    """Seconds from creating a 2-line batch to its completion (printed: when each status
    was first seen)."""
    started = time.perf_counter()
    batch_id = await start_batch(client, batch_lines(model, 2, "question"))
    seen: dict[str, float] = {}

    async def done() -> bool:
        now = await status(client, batch_id)
        seen.setdefault(now, time.perf_counter() - started)
        return now in ENDED

    await until(done)
    print("    " + ", ".join(f"{name} {at:.2f} s" for name, at in seen.items()))
    return time.perf_counter() - started


async def fairness(them: httpx.AsyncClient, hostile: httpx.AsyncClient, model: str) -> None:
    idle = statistics.median([await small_batch_s(them, model) for _ in range(3)])
    long = [
        await start_batch(hostile, batch_lines(model, 2000, "#slow question")) for _ in range(2)
    ]

    async def running() -> bool:
        return any([await status(hostile, batch_id) == "in_progress" for batch_id in long])

    await until(running)
    busy = await small_batch_s(them, model)
    print(f"  a 2-line batch: idle {idle:.2f} s, beside two long batches {busy:.2f} s, "
          f"ratio {busy / idle:.2f}")  # fmt: skip
    for batch_id in long:
        await hostile.post(f"/v1/batches/{batch_id}/cancel")


async def fine_tuning_burst(
    hostile: httpx.AsyncClient, org_id: str, factory: Factory, engine_url: str, dc: str
) -> None:
    model, _ = await factory.served_model(url=f"{engine_url}/r/{new_id('rep')}",
                                          datacenter_id=dc, owner_org_id=org_id)  # fmt: skip
    await asyncio.sleep(1.5)
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    file_id = await upload(hostile, json.dumps(chat).encode() + b"\n", "fine-tune")
    body = {"model": model, "training_file": file_id}
    answers = await asyncio.gather(
        *(hostile.post("/v1/fine_tuning/jobs", json=body) for _ in range(12))
    )
    codes = sorted(answer.status_code for answer in answers)
    print(
        f"  12 concurrent fine-tuning creations: {codes.count(200)} accepted, "
        f"{codes.count(429)} refused (429), others {[c for c in codes if c not in (200, 429)]}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'souverain.db'}"
        settings = Settings(data_dir=Path(directory), database_url=url, secret_key=MASTER,  # type: ignore[arg-type]
                            port=free_port())  # fmt: skip
        engine_port = free_port()
        server = spawn(
            [sys.executable, "-m", "souverain.cli.main", "server", "--port", str(settings.port)],
            {"SOUVERAIN_DATA_DIR": directory, "SOUVERAIN_DATABASE_URL": url,
             "SOUVERAIN_SECRET_KEY": MASTER, "SOUVERAIN_LOG_LEVEL": "WARNING",
             "SOUVERAIN_FILE_STORES": json.dumps({"bench-dc": f"file://{directory}/files"})},
        )  # fmt: skip
        stand_in = None
        try:
            await wait_http(f"{settings.base_url}/healthz")
            stand_in, _ = await tls_stand_in(url, MASTER, engine_port, Path(directory) / "tls")
            await wait_http(f"https://127.0.0.1:{engine_port}/v1/models")
            await run(settings.base_url, settings, f"https://127.0.0.1:{engine_port}",
                      args.lines, args.rounds)  # fmt: skip
        finally:
            for process in (server, stand_in):
                if process is not None:
                    process.terminate()
                    process.wait(30)


if __name__ == "__main__":
    asyncio.run(main())
