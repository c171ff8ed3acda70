"""Migrations build the schema from empty, agree with the tables, and go back down."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection, inspect, make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from souverain.db.engine import create_engine_unpooled, downgrade, upgrade
from souverain.db.tables import Base
from souverain.settings import normalise_database_url
from tests.conftest import DATABASES, POSTGRES_URL

SCRATCH_DB = "souverain_migrations_test"

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
