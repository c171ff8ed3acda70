"""Gateway overhead: souverain vs LiteLLM vs nothing, in front of the same engine stand-in.

    python bench/gateway_overhead.py [--litellm /path/to/venv/bin/litellm]
        [--postgres postgresql://postgres@127.0.0.1:5432/test] [--requests 400]

Every party runs as its own process on 127.0.0.1: a canned-token OpenAI-compatible engine
stand-in (16 tokens), `souverain server` (SQLite, and PostgreSQL when given; the full
pipeline: authentication, policy, admission with a usage record, routing, proxy,
settlement), the LiteLLM proxy when its executable is given (installed in a virtualenv
of its own, for the benchmark only; no database), and the client. For each target,
non-streamed and streamed, at concurrency 1, 8 and 64: latency p50/p99 (to the last byte)
and requests/s, then what each gateway adds over the direct call and the ratio
souverain / LiteLLM of the added latency. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from _processes import reset_postgres, share_authority, spawn, tls_stand_in, wait_http

from souverain.core.ids import new_id, replica_secret
from souverain.core.roles import Role
from souverain.db.engine import create_engine_unpooled, session_factory, upgrade
from souverain.settings import normalise_database_url
from souverain.testing.factories import Factory
from souverain.testing.live import free_port

MASTER = "d" * 64
LITELLM_KEY = "sk-litellm-bench-0123456789abcdef0123456789abcdef"
CONCURRENCY = (1, 8, 64)


@dataclass
class Target:
    name: str
    url: str  # …/v1/chat/completions
    key: str
    model: str


@dataclass
class Result:
    p50: float
    p99: float
    rps: float


async def measure(
    client: httpx.AsyncClient,
    target: Target,
    *,
    stream: bool,
    concurrency: int,
    total: int,
    budget_s: float,
) -> Result:
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 16,
        "stream": stream,
    }
    headers = {"Authorization": f"Bearer {target.key}"}
    samples: list[float] = []
    deadline = time.monotonic() + budget_s
    remaining = iter(range(total))

    async def one() -> None:
        started = time.perf_counter()
        if stream:
            async with client.stream("POST", target.url, json=body, headers=headers) as response:
                response.raise_for_status()
                async for _ in response.aiter_bytes():
                    pass
        else:
            (await client.post(target.url, json=body, headers=headers)).raise_for_status()
        samples.append((time.perf_counter() - started) * 1000)

    async def worker() -> None:
        for _ in remaining:
            if time.monotonic() > deadline:
                return
            await one()

    for _ in range(min(20, total)):
        await one()  # warm the connections and caches
    samples.clear()
    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    ordered = sorted(samples)
    return Result(
        statistics.median(ordered),
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        len(ordered) / wall,
    )


async def souverain_target(
    name: str, url: str, engine_url: str, directory: Path, *, authority_from: str | None = None
) -> tuple[Target, subprocess.Popen[bytes]]:
    """An installation serving the stand-in's model; `authority_from`: the database of an
    installation whose certificate authority it shares (one engine serves both)."""
    engine = create_engine_unpooled(normalise_database_url(url))
    await upgrade(engine)
    if authority_from is not None:
        await share_authority(authority_from, url)
    factory = Factory(session_factory(engine))
    tenant = await factory.tenant(roles={"bench": Role.OWNER})
    key = await factory.member_key(tenant, "bench", Role.OWNER)
    dc = await factory.datacenter("bench-dc", country="FR")
    replica_id = new_id("rep")
    model, _ = await factory.served_model(
        url=f"{engine_url}/r/{replica_id}",
        datacenter_id=dc,
        replica_id=replica_id,
        name=new_id("bench"),
    )
    await engine.dispose()
    port = free_port()
    server = spawn(
        [sys.executable, "-m", "souverain.cli.main", "server", "--port", str(port)],
        {
            "SOUVERAIN_DATA_DIR": str(directory),
            "SOUVERAIN_DATABASE_URL": url,
            "SOUVERAIN_SECRET_KEY": MASTER,
            "SOUVERAIN_LOG_LEVEL": "WARNING",
        },
    )
    await wait_http(f"http://127.0.0.1:{port}/healthz")
    await asyncio.sleep(1.5)  # the route table has the model
    return Target(name, f"http://127.0.0.1:{port}/v1/chat/completions", key.key, model), server


def litellm_target(
    executable: str, engine_url: str, directory: Path
) -> tuple[Target, subprocess.Popen[bytes]]:
    replica = "rep_litellm"
    config = directory / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: bench-model\n"
        "    litellm_params:\n"
        "      model: openai/bench-model\n"
        f"      api_base: {engine_url}/r/{replica}/v1\n"
        f"      api_key: {replica_secret(MASTER.encode(), replica)}\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
    )
    port = free_port()
    proxy = spawn(
        [
            executable,
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--num_workers",
            "1",
        ],
        {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"},
    )
    return Target(
        "litellm", f"http://127.0.0.1:{port}/v1/chat/completions", LITELLM_KEY, "bench-model"
    ), proxy


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--litellm", default=None, help="the litellm executable of its own virtualenv"
    )
    parser.add_argument(
        "--postgres", default=None, help="a PostgreSQL URL whose public schema may be reset"
    )
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--seconds", type=float, default=20.0, help="time bound per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    args = parser.parse_args()
    processes: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        engine_port = free_port()
        engine_url = f"https://127.0.0.1:{engine_port}"
        try:
            sqlite_dir = directory / "sqlite"
            sqlite_dir.mkdir()
            sqlite_url = f"sqlite:///{sqlite_dir / 'bench.db'}"
            target, server = await souverain_target(
                "souverain-sqlite", sqlite_url, engine_url, sqlite_dir
            )
            processes.append(server)
            engine, _ = await tls_stand_in(sqlite_url, MASTER, engine_port, directory / "tls")
            processes.append(engine)
            await wait_http(f"{engine_url}/v1/models")
            direct_replica = "rep_direct"
            targets = [
                Target(
                    "direct",
                    f"{engine_url}/r/{direct_replica}/v1/chat/completions",
                    replica_secret(MASTER.encode(), direct_replica),
                    "bench-model",
                ),
                target,
            ]
            if args.postgres:
                await reset_postgres(args.postgres)
                target, server = await souverain_target(
                    "souverain-postgres", args.postgres, engine_url, directory,
                    authority_from=sqlite_url,
                )  # fmt: skip
                targets.append(target)
                processes.append(server)
            if args.litellm:
                target, proxy = litellm_target(args.litellm, engine_url, directory)
                processes.append(proxy)
                await wait_http(target.url.replace("/v1/chat/completions", "/health/liveliness"))
                targets.append(target)
            await report(targets, args.requests, args.seconds, tuple(args.concurrency))
        finally:
            for process in processes:
                process.terminate()
                process.wait(30)


async def report(
    targets: list[Target], requests: int, seconds: float, levels: tuple[int, ...]
) -> None:
    limits = httpx.Limits(max_connections=128, max_keepalive_connections=128)
    results: dict[tuple[str, bool, int], Result] = {}
    # `direct` calls the engine over its TLS, as the gateway does; this client measures and
    # trusts what it started (the gateway checks the engine's certificate itself)
    async with httpx.AsyncClient(limits=limits, timeout=120, verify=False) as client:  # noqa: S501
        for stream in (False, True):
            for concurrency in levels:
                for target in targets:
                    results[(target.name, stream, concurrency)] = await measure(
                        client,
                        target,
                        stream=stream,
                        concurrency=concurrency,
                        total=requests,
                        budget_s=seconds,
                    )
    print(
        f"{'mode':<8}{'c':>4}  {'target':<20}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}{'added p50':>11}{'added p99':>11}"
    )
    for stream in (False, True):
        for concurrency in levels:
            base = results[("direct", stream, concurrency)]
            for target in targets:
                r = results[(target.name, stream, concurrency)]
                added = (
                    ""
                    if target.name == "direct"
                    else f"{r.p50 - base.p50:>11.2f}{r.p99 - base.p99:>11.2f}"
                )
                mode = "stream" if stream else "json"
                print(
                    f"{mode:<8}{concurrency:>4}  {target.name:<20}{r.p50:>9.2f}{r.p99:>9.2f}{r.rps:>9.0f}{added}"
                )
            if ("litellm", stream, concurrency) in results:
                lite = results[("litellm", stream, concurrency)]
                own = results[("souverain-sqlite", stream, concurrency)]
                lite_added = max(lite.p50 - base.p50, 1e-9)
                print(
                    f"{'':<14}souverain-sqlite / litellm added p50: {(own.p50 - base.p50) / lite_added:.2f}"
                )


if __name__ == "__main__":
    asyncio.run(main())
