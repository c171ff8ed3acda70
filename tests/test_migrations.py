"""Migrations build the schema from empty, agree with the tables, and go back down."""

from __future__ import annotations

import dataclasses
import itertools
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, insert, inspect, make_url, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.core.roles import Role, scopes_of
from souverain.db.engine import create_engine_unpooled, downgrade, session_factory, upgrade
from souverain.db.metering import EnergyIntervalRow
from souverain.db.tables import Base, UsageRecordRow, UsageRollupRow
from souverain.metering import usage, usage_reports
from souverain.metering.usage import OpenRecord, Settlement
from souverain.metering.usage_reports import UsageFilter
from souverain.metering.usage_rollups import KEY, MEASURES, Bucket, Sums, contributions
from souverain.settings import normalise_database_url
from tests.conftest import DATABASES, POSTGRES_URL, stream_database

SCRATCH_DB = stream_database("souverain_migrations_test")

EXPECTED_TABLES = {
    "organisations",
    "projects",
    "users",
    "memberships",
    "api_keys",
    "datacenters",
    "nodes",
    "models",
    "model_artifacts",
    "deployments",
    "replicas",
    "usage_records",
    "leases",
}


async def empty_database(kind: str, tmp_path: Path) -> str:
    """A database of its own, so the shared test database of the live server is untouched."""
    if kind == "postgres":
        assert POSTGRES_URL
        url = make_url(normalise_database_url(POSTGRES_URL))
        admin = create_async_engine(url, isolation_level="AUTOCOMMIT")
        async with admin.connect() as connection:
            await connection.execute(text(f"DROP DATABASE IF EXISTS {SCRATCH_DB}"))
            await connection.execute(text(f"CREATE DATABASE {SCRATCH_DB}"))
        await admin.dispose()
        return url.set(database=SCRATCH_DB).render_as_string(hide_password=False)
    return normalise_database_url(f"sqlite:///{tmp_path / 'migrations.db'}")


def _diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


@pytest.mark.parametrize("kind", DATABASES)
async def test_upgrade_from_empty_matches_the_tables_and_downgrades(
    kind: str, tmp_path: Path
) -> None:
    engine = create_engine_unpooled(await empty_database(kind, tmp_path))
    try:
        await upgrade(engine)
        async with engine.connect() as connection:
            tables = set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
            assert tables >= EXPECTED_TABLES
            assert await connection.run_sync(_diff) == []
        await upgrade(engine)  # idempotent
        await downgrade(engine, "base")
        async with engine.connect() as connection:
            tables = set(await connection.run_sync(lambda c: inspect(c).get_table_names()))
            assert not (EXPECTED_TABLES & tables)
    finally:
        await engine.dispose()


@pytest.mark.parametrize("kind", DATABASES)
async def test_usage_rollups_are_backfilled_from_the_records(kind: str, tmp_path: Path) -> None:
    """An install upgraded to 0016 keeps its history: the rollups built from the records
    already there are those the platform keeps as records settle, so /api/usage answers
    what a GROUP BY over the records answers, and later settlements add to the same rows."""
    engine = create_engine_unpooled(await empty_database(kind, tmp_path))
    try:
        await upgrade(engine, "0015")
        rows = history(random.Random(3), 300)
        async with engine.begin() as connection:
            await connection.execute(insert(UsageRecordRow.__table__), rows)
        await upgrade(engine)
        sessions = session_factory(engine)
        expected: dict[Bucket, Sums] = {}
        for row in rows:
            for bucket, sums in contributions(row).items():
                expected[bucket] = expected.get(bucket, Sums()).plus(sums)
        assert await stored_rollups(sessions) == approx_sums(expected)
        operator = Principal(key_id="k", user_id="u", user_name="op", org_id=None,
                             project_id=None, role=Role.OPERATOR,
                             scopes=scopes_of(Role.OPERATOR))  # fmt: skip
        since = datetime(2026, 10, 5, 13, 47, tzinfo=UTC)
        async with sessions() as session:
            for group_by, where in itertools.product(
                sorted(usage_reports.GROUPS), (UsageFilter(), UsageFilter(since=since))
            ):
                answers = [
                    await usage_reports.aggregate(session, principal=operator, where=where,
                                                  group_by=group_by, from_records=raw)
                    for raw in (False, True)
                ]  # fmt: skip
                assert answers[0] == [approx_group(g) for g in answers[1]], group_by
        later = {**next(r for r in rows if r["status"] != "open"), "id": new_id("req")}
        async with sessions.begin() as session:
            await usage.insert_rows(session, rows=[later], if_absent=False)
        stored = await stored_rollups(sessions)
        assert len(stored) == len(expected)  # the same rows, one more request in each
        assert sum(s.requests for s in stored.values()) == sum(
            s.requests for s in expected.values()
        ) + len(contributions(later))
    finally:
        await engine.dispose()


def history(pick: random.Random, count: int) -> list[dict[str, Any]]:
    """Records as an install has them: settled or open, some tagged or attributed, over a
    few months (some right at the edges of hours, days and months)."""
    edges = [datetime(2026, 10, 31, 23, 59, 59, 999_999, tzinfo=UTC),
             datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 14, 6, tzinfo=UTC)]  # fmt: skip
    rows = []
    for n in range(count):
        created = (
            edges[n]
            if n < len(edges)
            else datetime(2026, 9, 1, tzinfo=UTC) + timedelta(minutes=pick.randint(0, 130_000))
        )
        record = OpenRecord(
            id=new_id("req"), key_id=pick.choice(("ka", "kb")), user_id=pick.choice(("ua", "ub")),
            endpoint="chat", model=pick.choice(("m1", "m2")), stream=False, server_id="s",
            org_id=pick.choice(("org_a", "org_b", None)), project_id=pick.choice(("p", None)),
            created_at=created,
        )  # fmt: skip
        settlement = Settlement(
            status=pick.choice(("ok", "ok", "upstream_error", "open")),
            prompt_tokens=pick.randint(0, 900), completion_tokens=pick.randint(0, 900),
            datacenter_id=pick.choice(("dc", None)), cost=pick.random(),
            energy_estimate_j=pick.choice((None, pick.random() * 9)),
        )  # fmt: skip
        row = usage.row_values(record, settlement, settled_at=created)
        if pick.random() < 0.5:
            row |= {"energy_j": pick.random() * 9, "co2e_g": pick.random()}
        if pick.random() < 0.4:
            row |= {"prompt_language": pick.choice(("fr", "de", None)),
                    "languages_agree": pick.choice((True, False, None))}  # fmt: skip
        rows.append(row)
    return rows


async def stored_rollups(sessions: async_sessionmaker[AsyncSession]) -> dict[Bucket, Sums]:
    async with sessions() as session:
        stored = (await session.execute(select(UsageRollupRow))).scalars()
        return {
            Bucket(**{name: getattr(r, name) for name in KEY}): Sums(
                **{name: getattr(r, name) for name in MEASURES}
            )
            for r in stored
        }


def approx_sums(expected: dict[Bucket, Sums]) -> dict[Bucket, Any]:
    return {
        bucket: Sums(**{m: pytest.approx(getattr(s, m)) for m in MEASURES})
        for bucket, s in expected.items()
    }


def approx_group(group: usage_reports.Group) -> usage_reports.Group:
    values = {f.name: getattr(group, f.name) for f in dataclasses.fields(group)}
    return usage_reports.Group(
        **{k: pytest.approx(v) if isinstance(v, float) else v for k, v in values.items()}
    )


@pytest.mark.parametrize("kind", DATABASES)
async def test_starts_recorded_before_0029_keep_their_energy_without_cpu_time(
    kind: str, tmp_path: Path
) -> None:
    """0029 adds a start's CPU and wall-clock seconds: a start recorded before it keeps its
    energy and reads as not reported (null), and going back down keeps the interval."""
    engine = create_engine_unpooled(await empty_database(kind, tmp_path))
    moment = datetime(2026, 12, 1, 8, tzinfo=UTC)
    before = {"id": "nrg_before", "replica_id": "rep_1", "deployment_id": "dep_1",
              "datacenter_id": "dc", "source": "rapl", "started_at": moment,
              "ended_at": moment + timedelta(seconds=20), "energy_j": 80.0, "attributed_j": 0.0,
              "idle_j": 80.0, "requests": 0, "carbon_intensity": 50.0, "co2e_g": 0.001,
              "kind": "startup"}  # fmt: skip
    try:
        await upgrade(engine, "0028")
        async with engine.begin() as connection:
            # the columns 0028 has only: the row as a start was recorded before 0029
            await connection.execute(insert(EnergyIntervalRow.__table__), before)
        await upgrade(engine)
        async with session_factory(engine).begin() as session:
            row = await session.get(EnergyIntervalRow, "nrg_before")
            assert row is not None
            assert (row.energy_j, row.cpu_s, row.engine_s) == (80.0, None, None)
            row.cpu_s, row.engine_s = 3.5, 12.5
        await downgrade(engine, "0028")
        async with engine.connect() as connection:
            columns = await connection.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("energy_intervals")}
            )
            assert "cpu_s" not in columns
            kept = await connection.scalar(text("SELECT energy_j FROM energy_intervals"))
            assert kept == 80.0
    finally:
        await engine.dispose()
