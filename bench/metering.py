"""What admission and settlement add to a request, on SQLite and PostgreSQL.

    python bench/metering.py [--requests 600] [--postgres postgresql://postgres@127.0.0.1/test]

Two measurements, each at concurrency 1 and 32:

* admission + settlement alone: rate-limit check, budget reservation (conditional UPDATE),
  usage record insert, then settlement (guarded UPDATE + ledger correction), exactly the
  calls the gateway makes, against a real database with a budget in force;
* a whole request through souverain (non-streamed, canned-token stand-in engine) versus the
  same request straight to the stand-in, in the same run: the difference is everything the
  gateway adds (authentication, policy, routing, admission, proxy, settlement).

Prints p50 and p99 in milliseconds. Traffic stays on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from _processes import reset_postgres, spawn, tls_stand_in, wait_http

from souverain.core.ids import new_id, replica_secret
from souverain.core.roles import Role
from souverain.db.engine import create_engine, session_factory
from souverain.gateway import admission
from souverain.gateway.state import AppState
from souverain.metering import usage
from souverain.metering.budgets import Amounts
from souverain.metering.usage import OpenRecord, Settlement
from souverain.settings import Settings
from souverain.testing.factories import Factory
from souverain.testing.live import free_port

MASTER = "b" * 64


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def timed(concurrency: int, total: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    samples: list[float] = []
    remaining = iter(range(total))

    async def worker() -> None:
        for _ in remaining:
            started = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - started) * 1000)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples


async def bench_database(label: str, url: str, directory: Path, requests: int) -> None:
    settings = Settings(data_dir=directory, database_url=url, secret_key=MASTER, port=free_port())
    engine_port = free_port()
    engine_url = f"https://127.0.0.1:{engine_port}"
    server = spawn(
        [sys.executable, "-m", "souverain.cli.main", "server", "--port", str(settings.port)],
        {
            "SOUVERAIN_DATA_DIR": str(directory),
            "SOUVERAIN_DATABASE_URL": url,
            "SOUVERAIN_SECRET_KEY": MASTER,
            "SOUVERAIN_LOG_LEVEL": "WARNING",
        },
    )
    stand_in = None
    try:
        await wait_http(f"{settings.base_url}/healthz")
        stand_in, authority = await tls_stand_in(url, MASTER, engine_port, directory / "tls")
        await wait_http(f"{engine_url}/v1/models")
        await run_measurements(label, settings, engine_url, requests, authority)
    finally:
        for process in (server, stand_in):
            if process is not None:
                process.terminate()
                process.wait(30)


async def run_measurements(
    label: str, settings: Settings, engine_url: str, requests: int, authority: bytes
) -> None:
    pooled = create_engine(settings.sqlalchemy_url)
    sessions = session_factory(pooled)
    factory = Factory(sessions)
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
    async with httpx.AsyncClient(
        base_url=settings.base_url, headers={"Authorization": f"Bearer {key.key}"}
    ) as client:
        assert (
            await client.put(f"/api/orgs/{tenant.org_name}/budget", json={"tokens": 10**12})
        ).status_code == 200
        await asyncio.sleep(1.5)  # the server's route table learns the model and the budget
    state = direct_state(settings, pooled, sessions, authority)
    await state.routes.refresh(state.sessions)
    principal = await state.keys.authenticate(key.key)

    async def admit_and_settle() -> None:
        record = OpenRecord(
            id=new_id("req"), org_id=tenant.org_id, project_id=tenant.project_id, key_id=key.id,
            user_id=principal.user_id, endpoint="chat", model=model, stream=False, server_id="bench",
        )  # fmt: skip
        admitted = await admission.admit(
            state, principal=principal, record=record, amounts=Amounts(tokens=100),
            rate_tokens=100, price=None,
        )  # fmt: skip
        async with state.sessions.begin() as session:
            done = Settlement(
                status="ok", prompt_tokens=10, completion_tokens=16, replica_id=replica_id
            )
            await usage.settle_record(
                session,
                record_id=admitted.record_id,
                settlement=done,
                reservation=(admitted.ledger_ids, admitted.reserved),
            )

    body = {
        "model": model,
        "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": 16,
    }
    secret = replica_secret(MASTER.encode(), replica_id)
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    engine_tls = ssl.create_default_context(cadata=authority.decode())
    engine_tls.check_hostname = (
        False  # the baseline trusts the authority; the gateway also pins the replica
    )
    async with (
        httpx.AsyncClient(limits=limits, timeout=60) as client,
        httpx.AsyncClient(limits=limits, timeout=60, verify=engine_tls) as to_engine,
    ):

        async def through_souverain() -> None:
            response = await client.post(
                f"{settings.base_url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {key.key}"},
            )
            response.raise_for_status()

        async def straight() -> None:
            response = await to_engine.post(
                f"{engine_url}/r/{replica_id}/v1/chat/completions", json=body,
                headers={"Authorization": f"Bearer {secret}"},
            )  # fmt: skip
            response.raise_for_status()

        for concurrency in (1, 32):
            await timed(concurrency, 20, admit_and_settle)  # warm up
            micro = percentiles(await timed(concurrency, requests, admit_and_settle))
            await timed(concurrency, 20, straight)
            await timed(concurrency, 20, through_souverain)
            direct = percentiles(await timed(concurrency, requests, straight))
            gateway = percentiles(await timed(concurrency, requests, through_souverain))
            print(
                f"{label:<10} c={concurrency:<3} admission+settlement p50 {micro[0]:6.2f} p99 {micro[1]:6.2f} │ "
                f"stand-in p50 {direct[0]:6.2f} p99 {direct[1]:6.2f} │ via souverain p50 {gateway[0]:6.2f} "
                f"p99 {gateway[1]:6.2f} │ added p50 {gateway[0] - direct[0]:6.2f} p99 {gateway[1] - direct[1]:6.2f}"
            )
    await pooled.dispose()


def direct_state(
    settings: Settings, pooled: object, sessions: object, authority: bytes
) -> AppState:
    """The pieces of a server's state that admission and settlement use, in this process."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from souverain.gateway.auditing import AuditTrail
    from souverain.gateway.demand import DemandBoard
    from souverain.gateway.journal import UsageJournal
    from souverain.gateway.languages import LanguageTagger
    from souverain.gateway.meter import Meter
    from souverain.gateway.metrics import Metrics
    from souverain.gateway.queueing import FairQueue
    from souverain.gateway.ratelimit import RateLimiter
    from souverain.gateway.routing import RouteTable
    from souverain.gateway.upstream import Upstream
    from souverain.tenancy.auth import KeyCache

    routes = RouteTable()
    queue = FairQueue(
        routes,
        per_org=settings.queue_per_org,
        total=settings.queue_total,
        wait_s=settings.queue_wait_s,
    )
    journal = UsageJournal(Path(tempfile.mkdtemp()), sessions)  # type: ignore[arg-type]
    return AppState(
        settings=settings,
        engine=pooled,  # type: ignore[arg-type]
        sessions=sessions,  # type: ignore[arg-type]
        keys=KeyCache(sessions, ttl_s=2.0),  # type: ignore[arg-type]
        routes=routes,
        upstream=Upstream(timeout_s=60, authority=authority),
        master_key=MASTER.encode(),
        server_id="bench",
        signing_key=Ed25519PrivateKey.generate(),
        limiter=RateLimiter("memory://"),
        metrics=Metrics(routes),
        audit_trail=AuditTrail(sessions),  # type: ignore[arg-type]
        journal=journal,
        languages=LanguageTagger(journal, sessions),  # type: ignore[arg-type]
        meter=Meter.from_settings(settings),
        file_stores=settings.file_stores_or_default,
        queue=queue,
        demand=DemandBoard(routes, queue, "bench"),
    )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument(
        "--postgres", default=None, help="a PostgreSQL URL whose public schema may be reset"
    )
    args = parser.parse_args()
    print("latencies in ms")
    with tempfile.TemporaryDirectory() as tmp:
        await bench_database(
            "sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", Path(tmp), args.requests
        )
        if args.postgres:
            await reset_postgres(args.postgres)
            await bench_database("postgresql", args.postgres, Path(tmp), args.requests)


if __name__ == "__main__":
    asyncio.run(main())
