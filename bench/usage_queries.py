"""What /api/usage costs over 10 million usage records in PostgreSQL: answered from the
usage rollups, against the same questions answered by a GROUP BY over the raw records.

    python bench/usage_queries.py [--records 10000000] [--repeats 30] [--raw-repeats 5]
        [--server postgresql://postgres@127.0.0.1:5432] [--keep]

Creates the database `souverain_bench_usage` on that server (dropped at the end unless
`--keep`), migrates it to 0015, loads the records with INSERT … SELECT over
generate_series, then upgrades it to 0016, whose backfill builds the rollups the way an
existing install gets them (timed). The platform is synthetic but shaped like one: a year
of traffic in time order, 20 organisations (the measured one, with real users and keys,
has 30 % of it), 420 keys that each use a main model and a second one, 8 models (2 of
them reasoning, whose requests are tagged with a prompt language), each served mostly from
one of 4 datacenters, 3 % of requests not `ok`, and the last 50 requests still open.

A real server (`souverain server`, uvicorn) then answers the questions the web console
asks (`limit=0`, `from` = the start of the month or now minus 7, 30 or 365 days), through
HTTP with real API keys: an organisation admin's, an operator's (the whole platform) and
a member's (their own usage). Each is asked `--repeats` times, one at a time: p50 and p95.
The same question is then answered in this process by the raw GROUP BY (the query
/api/usage ran before rollups) `--raw-repeats` times; both answers must be equal.
Prints milliseconds and raw ÷ rollups. Traffic stays on 127.0.0.1; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from _processes import spawn, wait_http
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from souverain.core.principal import Principal
from souverain.core.roles import Role, scopes_of
from souverain.db.engine import create_engine, create_engine_unpooled, session_factory, upgrade
from souverain.metering import usage_reports
from souverain.metering.usage_reports import Group, UsageFilter
from souverain.settings import normalise_database_url
from souverain.testing.factories import Factory, Key, Tenant
from souverain.testing.live import free_port

DATABASE = "souverain_bench_usage"
MASTER = "c" * 64
CHUNK = 1_000_000  # records per INSERT … SELECT
MODELS = ["magistral-small", "magistral-medium", "mistral-small", "mistral-large",
          "llama-3.1-8b", "llama-3.3-70b", "qwen2.5-32b", "gemma-2-27b"]  # fmt: skip
DATACENTERS = ["fr-par-1", "fr-par-2", "de-fra-1", "nl-ams-1"]
LANGUAGES = ["en", "en", "fr", "fr", "de", "es", "it", "nl"]

# One record per i: its org (the measured one, index 0, for 30 %), key, main or second
# model, datacenter, status, tokens, cost, energy, languages and time (a year, in order).
LOAD = """
INSERT INTO usage_records (
    id, org_id, project_id, key_id, user_id, endpoint, model, stream, datacenter_id, country,
    status, error, prompt_tokens, completion_tokens, tokens_counted_by, latency_ms, ttft_ms,
    cost, currency, energy_estimate_j, energy_j, co2e_g, energy_source, reserved_tokens,
    reserved_cost, reserved_energy_j, ledger_ids, server_id, created_at, settled_at,
    prompt_language, reasoning_language, answer_language, languages_agree)
SELECT
    'req_' || substr(md5(i::text), 1, 24), org, project, key, usr, 'chat', model, r_stream < 0.6,
    dc, 'FR', CASE WHEN is_open THEN 'open' ELSE status END, '',
    CASE WHEN is_open THEN 0 ELSE prompt END, CASE WHEN is_open THEN 0 ELSE completion END,
    'engine', 300 + r_tok * 3000, 40 + r_tok * 200,
    CASE WHEN is_open THEN 0 ELSE (prompt * 0.2 + completion * 0.6) / 1e6 END, 'EUR',
    CASE WHEN is_open THEN NULL ELSE (prompt + 3 * completion) * 0.3 END,
    CASE WHEN is_open OR r_energy < 0.02 THEN NULL
         ELSE (prompt + 3 * completion) * 0.3 * (0.8 + 0.4 * r_energy) END,
    CASE WHEN is_open OR r_energy < 0.02 THEN NULL
         ELSE (prompt + 3 * completion) * 0.3 * (0.8 + 0.4 * r_energy) / 3.6e6 * 50 END,
    'rapl', 0, 0, 0, '[]', 'bench-load', created_at,
    CASE WHEN is_open THEN NULL ELSE created_at + interval '2 seconds' END,
    lang, CASE WHEN lang IS NULL THEN NULL WHEN agree THEN lang ELSE 'en' END, lang,
    CASE WHEN lang IS NULL THEN NULL ELSE agree END
FROM (
    SELECT i, k.*, m.model, m.model_index,
        CASE WHEN r_dc < 0.9 THEN (CAST(:datacenters AS text[]))[1 + m.model_index % 4]
             ELSE (CAST(:datacenters AS text[]))[1 + (m.model_index + 1) % 4] END AS dc,
        CASE WHEN r_status < 0.97 THEN 'ok' WHEN r_status < 0.985 THEN 'client_cancelled'
             WHEN r_status < 0.995 THEN 'upstream_error' ELSE 'interrupted' END AS status,
        50 + floor(r_tok * r_tok * 4000)::int AS prompt, 10 + floor(r_tok2 * 800)::int AS completion,
        CASE WHEN m.model_index < 2 AND r_lang < 0.97
             THEN (CAST(:languages AS text[]))[1 + floor(r_lang2 * 8)::int] END AS lang,
        r_agree < 0.9 AS agree, i > CAST(:records AS bigint) - 50 AS is_open,
        CAST(:start AS timestamptz)
            + (CAST(:span AS float8) * i / CAST(:records AS bigint)) * interval '1 second'
            AS created_at,
        r_stream, r_tok, r_energy
    FROM (
        SELECT i, random() AS r_org, random() AS r_key, random() AS r_model, random() AS r_dc,
            random() AS r_status, random() AS r_tok, random() AS r_tok2, random() AS r_lang,
            random() AS r_lang2, random() AS r_agree, random() AS r_energy, random() AS r_stream
        FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i
    ) r
    CROSS JOIN LATERAL (
        SELECT CASE WHEN r_org < 0.3 THEN 0 ELSE 1 + floor(r_key * 19)::int END AS org_index,
               floor(r_key * 30)::int AS own_key, floor(r_model * 20)::int AS other_key
    ) o
    CROSS JOIN LATERAL (
        SELECT
            CASE WHEN org_index = 0 THEN CAST(:org_id AS text) ELSE 'org_bench_' || org_index END AS org,
            CASE WHEN org_index = 0 THEN (CAST(:projects AS text[]))[1 + own_key % 4]
                 ELSE 'prj_bench_' || org_index || '_' || other_key % 3 END AS project,
            CASE WHEN org_index = 0 THEN (CAST(:keys AS text[]))[1 + own_key]
                 ELSE 'k' || org_index || '_' || other_key END AS key,
            CASE WHEN org_index = 0 THEN (CAST(:users AS text[]))[1 + own_key % 10]
                 ELSE 'usr_bench_' || org_index || '_' || other_key END AS usr,
            CASE WHEN org_index = 0 THEN own_key ELSE org_index * 20 + other_key END AS key_index
    ) k
    CROSS JOIN LATERAL (
        SELECT CASE WHEN r_model < 0.85 THEN key_index % 8 ELSE (key_index * 3 + 1) % 8 END
            AS model_index
    ) mi
    CROSS JOIN LATERAL (SELECT mi.model_index, (CAST(:models AS text[]))[1 + mi.model_index] AS model) m
) s
"""


@dataclass(frozen=True)
class Question:
    label: str
    who: str  # admin, operator, member
    group_by: str
    since: datetime | None


@dataclass(frozen=True)
class Caller:
    key: Key
    principal: Principal


@dataclass(frozen=True)
class Platform:
    """The measured organisation (4 projects, 10 users, 30 keys) and who asks."""

    tenant: Tenant
    keys: list[Key]
    callers: dict[str, Caller]  # admin, member, operator


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def questions(now: datetime) -> list[Question]:
    month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    days = {n: now - timedelta(days=n) for n in (7, 30, 365)}
    return [
        Question("org, this month by model", "admin", "model", month),
        Question("org, last 30 days by day", "admin", "day", days[30]),
        Question("org, last 12 months by day", "admin", "day", days[365]),
        Question("org, this month by datacenter", "admin", "datacenter", month),
        Question("org, last 30 days by project", "admin", "project", days[30]),
        Question("org, last 7 days by key", "admin", "key", days[7]),
        Question("org, last 12 months by key", "admin", "key", days[365]),
        Question("org, last 12 months by language", "admin", "language", days[365]),
        Question("org, all time by model", "admin", "model", None),
        Question("platform, this month by model", "operator", "model", month),
        Question("platform, last 30 days by day", "operator", "day", days[30]),
        Question("platform, last 12 months by datacenter", "operator", "datacenter", days[365]),
        Question("member, last 30 days by day", "member", "day", days[30]),
        Question("member, last 12 months by day", "member", "day", days[365]),
    ]


async def timed(repeats: int, call: Callable[[], Awaitable[Any]]) -> tuple[list[float], Any]:
    samples, answer = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        answer = await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples, answer


async def create_database(server: str) -> str:
    admin = create_engine_unpooled(normalise_database_url(f"{server}/postgres"))
    async with admin.execution_options(isolation_level="AUTOCOMMIT").connect() as connection:
        await connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE}"))
        await connection.execute(text(f"CREATE DATABASE {DATABASE}"))
    await admin.dispose()
    return f"{server}/{DATABASE}"


async def drop_database(server: str) -> None:
    admin = create_engine_unpooled(normalise_database_url(f"{server}/postgres"))
    async with admin.execution_options(isolation_level="AUTOCOMMIT").connect() as connection:
        await connection.execute(text(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)"))
    await admin.dispose()


async def platform(engine: AsyncEngine) -> Platform:
    factory = Factory(session_factory(engine))
    users = {f"user{n}": Role.ADMIN if n == 0 else Role.MEMBER for n in range(10)}
    tenant = await factory.tenant(roles=users)
    keys = [
        await factory.member_key(tenant, f"user{n % 10}", users[f"user{n % 10}"]) for n in range(30)
    ]  # key n is user n % 10's
    operator = await factory.operator()

    def caller(key: Key, role: Role, org_id: str | None) -> Caller:
        return Caller(key, Principal(key_id=key.id, user_id=key.user_id, user_name="bench",
                                     org_id=org_id, project_id=None, role=role,
                                     scopes=scopes_of(role)))  # fmt: skip

    callers = {
        "admin": caller(keys[0], Role.ADMIN, tenant.org_id),
        "member": caller(keys[1], Role.MEMBER, tenant.org_id),
        "operator": caller(operator, Role.OPERATOR, None),
    }
    return Platform(tenant, keys, callers)


async def load(engine: AsyncEngine, bench: Platform, records: int, now: datetime) -> None:
    projects = [bench.tenant.project_id] + [f"prj_bench_0_{n}" for n in range(1, 4)]
    params = {"org_id": bench.tenant.org_id, "projects": projects,
              "keys": [k.id for k in bench.keys], "users": [k.user_id for k in bench.keys[:10]],
              "models": MODELS, "datacenters": DATACENTERS, "languages": LANGUAGES,
              "records": records, "span": 365 * 86400, "start": now - timedelta(days=365)}  # fmt: skip
    async with engine.begin() as connection:
        await connection.execute(text("SELECT setseed(0.42)"))
        for first in range(1, records + 1, CHUNK):
            last = min(records, first + CHUNK - 1)
            await connection.execute(text(LOAD), params | {"first": first, "last": last})
            print(f"  loaded {last:,} records", flush=True)


async def sizes(engine: AsyncEngine) -> str:
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text("SELECT span, count(*) FROM usage_rollups GROUP BY span ORDER BY span")
            )
        ).all()
        megabytes = [
            (await connection.scalar(text(f"SELECT pg_total_relation_size('{t}')"))) / 2**20
            for t in ("usage_records", "usage_rollups")
        ]
    spans = ", ".join(f"{span} {n:,}" for span, n in rows)
    return (
        f"rollup rows: {spans}; usage_records {megabytes[0]:,.0f} MiB, "
        f"usage_rollups {megabytes[1]:,.0f} MiB (with indexes)"
    )


def same(api: list[dict[str, Any]], raw: list[Group]) -> bool:
    if len(api) != len(raw):
        return False
    for given, group in zip(api, raw, strict=True):
        if (given["key"], given["requests"], given["prompt_tokens"]) != (
            group.key, group.requests, group.prompt_tokens,
        ):  # fmt: skip
            return False
        if abs(given["cost"] - group.cost) > 1e-6 * max(1.0, abs(group.cost)):
            return False
    return True


async def measure(url: str, engine: AsyncEngine, bench: Platform, args: argparse.Namespace) -> None:
    print(f"{'question':40s} {'rollups p50':>11s} {'p95':>7s} {'raw p50':>9s} {'raw÷rollups':>11s}")
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for question in questions(datetime.now(UTC)):
            caller = bench.callers[question.who]
            await timed(3, lambda q=question, c=caller: ask(client, q, c))  # warm up
            api, answered = await timed(
                args.repeats, lambda q=question, c=caller: ask(client, q, c)
            )
            raw, reference = await timed(
                args.raw_repeats, lambda q=question, c=caller: group_raw(engine, q, c)
            )
            mark = "" if same(answered, reference) else "  ANSWERS DIFFER"
            print(
                f"{question.label:40s} {percentile(api, 50):9.1f}ms {percentile(api, 95):5.1f}ms "
                f"{percentile(raw, 50):7.0f}ms {percentile(raw, 50) / percentile(api, 50):10.0f}x"
                f"{mark}",
                flush=True,
            )


async def ask(client: httpx.AsyncClient, question: Question, caller: Caller) -> Any:
    """/api/usage, as the console asks it."""
    params: dict[str, Any] = {"group_by": question.group_by, "limit": 0}
    if question.since is not None:
        params["from"] = question.since.isoformat()
    headers = {"Authorization": f"Bearer {caller.key.key}"}
    response = await client.get("/api/usage", params=params, headers=headers)
    response.raise_for_status()
    return response.json()["groups"]


async def group_raw(engine: AsyncEngine, question: Question, caller: Caller) -> list[Group]:
    """The same question by GROUP BY over the raw records (what /api/usage ran before)."""
    async with session_factory(engine)() as session:
        return await usage_reports.aggregate(
            session, principal=caller.principal, group_by=question.group_by,
            where=UsageFilter(since=question.since), from_records=True,
        )  # fmt: skip


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=30, help="requests per question")
    parser.add_argument("--raw-repeats", type=int, default=5, help="raw GROUP BYs per question")
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument("--keep", action="store_true", help="keep the database afterwards")
    args = parser.parse_args()
    url = await create_database(args.server)
    engine = create_engine(normalise_database_url(url))
    try:
        await upgrade(engine, "0015")
        bench = await platform(engine)
        started = time.perf_counter()
        await load(engine, bench, args.records, datetime.now(UTC))
        print(f"{args.records:,} records loaded in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        await upgrade(engine)  # 0016: the rollups, backfilled from the records
        print(f"migration 0016 (backfill) in {time.perf_counter() - started:.0f} s")
        async with engine.execution_options(isolation_level="AUTOCOMMIT").connect() as c:
            await c.execute(text("VACUUM ANALYZE usage_records"))
            await c.execute(text("VACUUM ANALYZE usage_rollups"))
        print(await sizes(engine))
        await serve_and_measure(url, engine, bench, args)
    finally:
        await engine.dispose()
        if not args.keep:
            await drop_database(args.server)


async def serve_and_measure(
    url: str, engine: AsyncEngine, bench: Platform, args: argparse.Namespace
) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = spawn(
            [sys.executable, "-m", "souverain.cli.main", "server", "--port", str(port)],
            {
                "SOUVERAIN_DATA_DIR": str(Path(directory)),
                "SOUVERAIN_DATABASE_URL": url,
                "SOUVERAIN_SECRET_KEY": MASTER,
                "SOUVERAIN_LOG_LEVEL": "WARNING",
            },
        )
        try:
            await wait_http(f"http://127.0.0.1:{port}/healthz")
            await measure(f"http://127.0.0.1:{port}", engine, bench, args)
        finally:
            server.terminate()
            server.wait(30)


if __name__ == "__main__":
    asyncio.run(main())
