"""The serving-engines comparison of `python bench/e2e_tokens.py --engines` (see there)."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _processes import spawn
from e2e_tokens import MODEL, Sample, compare, first_token_after_start, start_up, stream_once

from souverain.core.ids import replica_secret
from souverain.core.reasoning import SYSTEM_PROMPT
from souverain.node.artifacts import builtin_path
from souverain.node.engines import llama_server
from souverain.testing.live import free_port

NAMES = ("souverain", "its engine", "llama-server", "llama-cpp-python")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def tenant(url: str, operator: str, name: str) -> str:
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {operator}"}
    ) as client:
        (
            await client.post("/api/orgs", json={"name": name, "owner": f"{name}-owner"})
        ).raise_for_status()
        minted = await client.post(
            "/api/keys", json={"org": name, "user": f"{name}-owner", "role": "owner"}
        )
        minted.raise_for_status()
        return str(minted.json()["key"])


async def ready(client: httpx.AsyncClient, url: str, secret: str, deadline_s: float = 120) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            if (await stream_once(client, url, secret, 2)).tokens:
                return
        except httpx.HTTPError as error:
            print(f"  {url} not answering yet: {type(error).__name__}", file=sys.stderr)
        await asyncio.sleep(0.3)
    raise SystemExit(f"{url} never answered")


def plain_engines(tmp: Path, slots: int, context: int) -> tuple[list[tuple[str, str]], list]:  # type: ignore[type-arg]
    """(c) llama-server as a user would start it, (d) the llama-cpp-python engine."""
    model, secret = builtin_path(MODEL), "bench-secret"
    binary = llama_server.binary()
    if binary is None:
        raise SystemExit("no llama-server: make setup builds it (scripts/build-llamacpp)")
    keys = tmp / "keys"
    keys.write_text(secret + "\n")
    c_port, d_port = free_port(), free_port()
    plain = spawn([str(binary), "-m", str(model), "--alias", MODEL, "--host", "127.0.0.1",
                   "--port", str(c_port), "-t", "2", "-tb", "2", "-np", str(slots),
                   "-c", str(slots * context), "--api-key-file", str(keys), "--no-webui"])  # fmt: skip
    python = spawn([sys.executable, "-m", "souverain.node.engines.llamacpp_main", "--model",
                    str(model), "--alias", MODEL, "--host", "127.0.0.1", "--port", str(d_port),
                    "--threads", "2", "--ctx", str(context)],
                   env={"SOUVERAIN_ENGINE_SECRET": secret})  # fmt: skip
    targets = [(f"http://127.0.0.1:{c_port}", secret), (f"http://127.0.0.1:{d_port}", secret)]
    return targets, [plain, python]


async def compare_engines(rounds: int, max_tokens: int, concurrencies: list[int]) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data_dir, port = tmp / "data", free_port()
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        process, output = start_up(data_dir, port, tmp / "cli.json", runtime="llama-server")
        processes = []
        try:
            operator, to_first = await first_token_after_start(
                url, output, process, started, tmp / "cli.json"
            )
            print(f"souverain up (llama-server runtime) → first streamed token: {to_first:.1f} s")
            with sqlite3.connect(data_dir / "souverain.db") as db:
                replica_id, engine_url, runtime, slots = db.execute(
                    "SELECT r.id, r.url, r.runtime, r.slots FROM replicas r JOIN deployments d "
                    "ON d.id = r.deployment_id WHERE r.state='ready' AND d.engine='llamacpp'"
                ).fetchone()
                (context,) = db.execute(
                    "SELECT context_length FROM models WHERE name = ?", (MODEL,)
                ).fetchone()
            assert runtime == "llama-server", runtime
            engine_key = replica_secret(
                (data_dir / "secret.key").read_text().strip().encode(), replica_id
            )
            key = await tenant(url, operator, "bench-a")
            plain, processes = plain_engines(tmp, int(slots), int(context))
            targets = [(url, key), (engine_url, engine_key), *plain]
            async with httpx.AsyncClient(timeout=600) as client:
                for target_url, secret in targets:
                    await ready(client, target_url, secret)
                    await ready(client, target_url, secret)  # warm
                results = {c: await compare(client, targets, rounds, max_tokens, c)
                           for c in concurrencies}  # fmt: skip
                report(results, rounds, max_tokens, int(slots), None, None)
                fairness = await fair_share(client, url, operator, max_tokens)
                prefix = await prefix_reuse(client, url, operator)
        finally:
            for engine in processes:
                engine.terminate()
                engine.wait(30)
            process.send_signal(signal.SIGINT)
            process.wait(60)
    report(results, rounds, max_tokens, int(slots), fairness, prefix)


async def fairness_alone(rounds: int, max_tokens: int) -> None:
    """`--fairness`: only the fairness measure, `rounds` times on one `souverain up` (with
    the llama-server runtime), each round with two new tenants."""
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp, port = Path(tmp_name), free_port()
        url = f"http://127.0.0.1:{port}"
        process, output = start_up(tmp / "data", port, tmp / "cli.json", runtime="llama-server")
        try:
            operator, _ = await first_token_after_start(
                url, output, process, time.perf_counter(), tmp / "cli.json"
            )
            async with httpx.AsyncClient(timeout=600) as client:
                await ready(client, url, operator)  # warm
                ratios = []
                for n in range(rounds):
                    measured = await fair_share(client, url, operator, max_tokens, f"-{n}")
                    ratios.append(measured["loaded_p50_ms"] / measured["idle_p50_ms"])
                    print(f"round {n}: tenant Y's TTFT p50 idle {measured['idle_p50_ms']:.0f} "
                          f"ms, beside X's 16 streams {measured['loaded_p50_ms']:.0f} ms "
                          f"({ratios[-1]:.2f}× idle)", flush=True)  # fmt: skip
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
    print(f"fairness: median of {rounds} rounds {statistics.median(ratios):.2f}× idle")


async def fair_share(
    client: httpx.AsyncClient, url: str, operator: str, max_tokens: int, suffix: str = ""
) -> dict[str, float]:
    """Tenant Y's time to first token alone, then while tenant X keeps 16 streams going.
    X's streams run in a process of their own, as another tenant's client would: in Y's
    event loop, parsing X's tokens would delay Y's own first token by the client's work."""
    burst = await tenant(url, operator, f"bench-x{suffix}")
    single = await tenant(url, operator, f"bench-y{suffix}")
    idle = [(await stream_once(client, url, single, 16)).ttft_s for _ in range(8)]
    context = multiprocessing.get_context("spawn")
    stop, refused = context.Event(), context.Queue()
    load = context.Process(target=burst_process, args=(url, burst, max_tokens, stop, refused))
    load.start()
    await asyncio.sleep(4.0)  # the process is up, every slot busy, the rest of the burst waiting
    loaded = []
    for _ in range(8):
        loaded.append((await stream_once(client, url, single, 16)).ttft_s)
        await asyncio.sleep(0.5)
    stop.set()
    await asyncio.get_running_loop().run_in_executor(None, load.join, 120)
    told = [] if refused.empty() else refused.get()
    if told:
        print(f"  tenant X was refused {len(told)} times, first: {told[0]}")
    return {"idle_p50_ms": statistics.median(idle) * 1000,
            "loaded_p50_ms": statistics.median(loaded) * 1000}  # fmt: skip


def burst_process(url: str, key: str, max_tokens: int, stop: Any, refused: Any) -> None:
    """Tenant X's 16 streams, until `stop` is set; the refusals go back on `refused`."""

    async def burst() -> list[str]:
        said: list[str] = []
        async with httpx.AsyncClient(timeout=600) as client:

            async def keep_streaming() -> None:
                while not stop.is_set():
                    try:
                        await stream_once(client, url, key, max_tokens)
                    except httpx.HTTPStatusError as error:  # counted and said, not fatal
                        said.append(f"{error.response.status_code} {error.response.text[:200]}")
                        await asyncio.sleep(0.5)

            await asyncio.gather(*(keep_streaming() for _ in range(16)))
        return said

    refused.put(asyncio.run(burst()))


async def prefix_reuse(client: httpx.AsyncClient, url: str, operator: str) -> dict[str, float]:
    """The reasoning system prompt (long) and a short question: each new tenant's first
    request (it may not reuse another tenant's cache) against the same tenant's next ones."""

    def messages(i: int) -> list[dict[str, str]]:
        return [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": f"What is {i} + {i + 1}?"}]  # fmt: skip

    cold, warm = [], []
    for i in range(6):
        key = await tenant(url, operator, f"bench-p{i}")
        cold.append((await stream_once(client, url, key, 4, messages(i))).ttft_s)
        warm.append((await stream_once(client, url, key, 4, messages(i + 10))).ttft_s)
    return {"cold_p50_ms": statistics.median(cold) * 1000,
            "warm_p50_ms": statistics.median(warm) * 1000}  # fmt: skip


def report(
    results: dict[int, list[tuple[list[Sample], float]]], rounds: int, max_tokens: int,
    slots: int, fairness: dict[str, float] | None, prefix: dict[str, float] | None,
) -> None:  # fmt: skip
    print(f"engines, {rounds} rounds, max_tokens={max_tokens}, {slots} slots per llama-server:")
    print(f"  {'':6}{'':18}{'tokens/s':>10}{'TTFT p50':>10}{'TTFT p99':>10}")
    summary: dict[int, dict[str, float]] = {}
    for concurrency, measured in results.items():
        for name, (samples, rate) in zip(NAMES, measured, strict=True):
            ttft = [s.ttft_s * 1000 for s in samples]
            print(f"  c={concurrency:<4}{name:18}{rate:10.1f}{statistics.median(ttft):10.0f}"
                  f"{quantile(ttft, 0.99):10.0f}")  # fmt: skip
        rates = [rate for _, rate in measured]
        summary[concurrency] = {"a/b": rates[0] / rates[1], "a/c": rates[0] / rates[2],
                                "a/d": rates[0] / rates[3]}  # fmt: skip
        print(f"  c={concurrency:<4}ratios: a/b {summary[concurrency]['a/b']:.3f}, "
              f"a/c {summary[concurrency]['a/c']:.3f}, a/d {summary[concurrency]['a/d']:.2f}")  # fmt: skip
    if fairness is None or prefix is None:
        return
    ratio = fairness["loaded_p50_ms"] / fairness["idle_p50_ms"]
    print(f"fairness: tenant Y's TTFT p50 idle {fairness['idle_p50_ms']:.0f} ms, while tenant X "
          f"streams 16: {fairness['loaded_p50_ms']:.0f} ms ({ratio:.2f}× idle)")  # fmt: skip
    print(f"prefix reuse (reasoning system prompt): TTFT p50 first request of a tenant "
          f"{prefix['cold_p50_ms']:.0f} ms, its next ones {prefix['warm_p50_ms']:.0f} ms "
          f"({prefix['cold_p50_ms'] / prefix['warm_p50_ms']:.1f}× faster)")  # fmt: skip
    print(json.dumps({"ratios": summary, "fairness": fairness, "prefix": prefix}))
