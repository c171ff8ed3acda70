"""Shared fixtures: a real database (SQLite always, PostgreSQL when
SOUVERAIN_TEST_POSTGRES_URL is set), a live souverain server on a real port, a stand-in
engine, and factories."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.ids import replica_secret
from souverain.core.roles import Role
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.gateway.state import AppState
from souverain.server.app import create_app
from souverain.settings import Settings, normalise_database_url
from souverain.testing.factories import Factory
from souverain.testing.live import LiveServer
from souverain.testing.stand_in import StandInEngine
from souverain.testing.tls import every_replica_files

MASTER_KEY = "0123456789abcdef" * 4
# The suite's Ray clusters (`ray.cluster_utils.Cluster`) start their workers at niceness 0,
# as every production node does (an embedded head sets it; the README's join command has
# it): at Ray's default of 15 an engine beside any busy process of the machine is starved.
# The name is written out: importing it from cluster/ray_cluster.py would import Ray here.
os.environ.setdefault("RAY_worker_niceness", "0")  # ray_cluster.WORKER_NICENESS_ENV
POSTGRES_URL = os.environ.get("SOUVERAIN_TEST_POSTGRES_URL")
# `make test` runs the suite as two streams at once; the light one names itself here, and
# its PostgreSQL databases carry its name so that neither stream resets the other's.
STREAM = os.environ.get("SOUVERAIN_TEST_STREAM", "")


def stream_database(name: str) -> str:
    """A PostgreSQL database's name as this stream uses it: the light stream's end in `_light`."""
    return f"{name}_{STREAM}" if STREAM else name


DATABASES = [pytest.param("sqlite", id="sqlite")]
if POSTGRES_URL:
    DATABASES.append(pytest.param("postgres", id="postgres", marks=pytest.mark.postgres))


def on_one_database(fixture: str = "platform") -> pytest.MarkDecorator:
    """Run a module, class or test on one database: PostgreSQL, the fleet's, when the
    suite has it, else SQLite. For tests whose cost is Ray nodes, engines or `souverain`
    processes rather than the database: the database code they reach is the platform's,
    which the other tests run on both."""
    return pytest.mark.parametrize(fixture, DATABASES[-1:], indirect=True)


async def reset_postgres(url: str) -> None:
    """Empty a test database. A transaction still open on it is a finished fixture's
    leftover (a database is claimed by one fixture at a time): it is disconnected first, as
    its locks would hold the drop forever, and a lock still in the way fails the reset."""
    engine = create_engine_unpooled(normalise_database_url(url))
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state LIKE 'idle in transaction%'"
            )
        )
        await connection.execute(text("SET LOCAL lock_timeout = '60s'"))
        await connection.execute(text("DROP SCHEMA public CASCADE"))
        await connection.execute(text("CREATE SCHEMA public"))
    await engine.dispose()


async def fresh_database_url(kind: str, directory: Path, *, database: str | None = None) -> str:
    """An empty database. On PostgreSQL, `database` names one of its own on the same
    server (created if missing), so a module can own it while the session's platform
    keeps the default one."""
    if kind == "postgres":
        assert POSTGRES_URL
        if STREAM:
            database = stream_database(database or "platform")
        url = POSTGRES_URL if database is None else await _own_database(POSTGRES_URL, database)
        await reset_postgres(url)
        return url
    return f"sqlite:///{directory / 'souverain.db'}"


async def _own_database(url: str, database: str) -> str:
    engine = create_engine_unpooled(normalise_database_url(url)).execution_options(
        isolation_level="AUTOCOMMIT"
    )
    async with engine.connect() as connection:
        exists = await connection.scalar(
            text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": database}
        )
        if not exists:
            await connection.execute(text(f'CREATE DATABASE "{database}"'))
    await engine.dispose()
    return url.rsplit("/", 1)[0] + "/" + database


@dataclass
class Platform:
    """A live server on a real database, with factories and a stand-in engine."""

    url: str
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    factory: Factory
    stand_in_url: str
    stand_in: StandInEngine
    master_key: bytes
    state: AppState  # the server's own, for what only it can tell (its connection pool)

    def secret_for(self, replica_id: str) -> str:
        return replica_secret(self.master_key, replica_id)

    async def served_model(self, **kwargs: object) -> str:
        """A model served by the stand-in engine through one ready replica; waits until routable."""
        from souverain.core.ids import new_id

        replica_id = new_id("rep")
        url = f"{self.stand_in_url}/r/{replica_id}"
        dc = await self.factory.datacenter("fr-test", country="FR")
        name, _ = await self.factory.served_model(
            url=url, datacenter_id=dc, replica_id=replica_id, **kwargs
        )  # type: ignore[arg-type]
        owner = kwargs.get("owner_org_id")
        if owner is None:
            watcher = await self.operator_key()
        else:  # only its own organisation can see a private model
            watcher = (await self.factory.new_member(str(owner), Role.MEMBER)).key
        async with self.client(watcher) as client:
            await wait_until(lambda: _listed(client, name))

        return name

    async def operator_key(self) -> str:
        if not hasattr(self, "_operator"):
            self._operator = (await self.factory.operator()).key
        return self._operator

    def client(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # Longer than the server's own waits (a pooled connection, SQLite's busy lock: 30 s),
        # so a request stuck on one is answered with its cause rather than cut off here.
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=60)


@pytest.fixture(scope="session")
def stand_in_secret() -> str:
    return "stand-in-secret-for-tests"


@pytest.fixture(scope="session", params=DATABASES)
async def platform(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Platform]:
    directory = tmp_path_factory.mktemp(f"platform-{request.param}")
    url = await fresh_database_url(request.param, directory)
    settings = Settings(
        data_dir=directory,
        database_url=url,
        secret_key=MASTER_KEY,  # type: ignore[arg-type]
        replica_refresh_s=0.2,
        key_cache_ttl_s=1.0,
        audit_window_s=0.3,
        key_mint_per_minute=10_000,  # the suite mints many keys; its limit has its own test
        file_stores={"files-fr": f"file://{directory / 'files' / 'files-fr'}"},
        port=8000,
    )
    stand_in = StandInEngine(
        secret_for=lambda replica: replica_secret(MASTER_KEY.encode(), replica)
    )
    with LiveServer(create_app(settings)) as server:
        engine_sessions = create_engine_unpooled(settings.sqlalchemy_url)
        sessions = session_factory(engine_sessions)
        tls = await every_replica_files(sessions, MASTER_KEY.encode(), directory / "engine-tls")
        engine = LiveServer(stand_in.app, tls=tls).start()
        await Factory(sessions).datacenter("files-fr", country="FR")  # where files are kept
        yield Platform(
            url=server.url,
            settings=settings,
            sessions=sessions,
            factory=Factory(sessions),
            stand_in_url=engine.url,
            stand_in=stand_in,
            master_key=MASTER_KEY.encode(),
            state=server.app.state.souverain,
        )
        engine.stop()
        await engine_sessions.dispose()


async def wait_until(
    predicate: Callable[[], object], timeout_s: float = 10.0, interval_s: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        outcome = predicate()
        if asyncio.iscoroutine(outcome):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(interval_s)


async def usage_records(
    sessions: async_sessionmaker[AsyncSession], expected: int, **where: object
) -> list[Any]:
    """Wait until `expected` settled usage records match `where` (usage reaches the
    database in batches, a few milliseconds after the answer), then return them."""
    from sqlalchemy import select

    from souverain.db.tables import UsageRecordRow

    found: list[Any] = []

    async def settled() -> bool:
        nonlocal found
        query = select(UsageRecordRow).filter_by(**where)
        async with sessions() as session:
            found = list((await session.execute(query)).scalars())
        return len(found) >= expected and all(r.status != "open" for r in found)

    await wait_until(settled, timeout_s=10)
    return found


async def _listed(client: httpx.AsyncClient, name: str) -> bool:
    response = await client.get("/v1/models")
    return any(m["id"] == name for m in response.json().get("data", []))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _isolated_cli_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SOUVERAIN_CONFIG", str(tmp_path / "cli-config.json"))
    yield


_SESSION_LOOP: list[asyncio.AbstractEventLoop] = []


@pytest.fixture(scope="session", autouse=True)
async def _session_loop() -> None:
    """The event loop every test shares, kept so that a test that times out reports what
    each of its tasks was waiting on (pytest-timeout shows the threads only)."""
    _SESSION_LOOP[:] = [asyncio.get_running_loop()]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and _SESSION_LOOP and "Timeout" in str(report.longrepr):
        report.sections.append(("asyncio tasks at the timeout", _tasks(_SESSION_LOOP[0])))


def _tasks(loop: asyncio.AbstractEventLoop, most: int = 40) -> str:
    lines = []
    for task in sorted(asyncio.all_tasks(loop), key=lambda t: t.get_name())[:most]:
        lines.append(f"{task.get_name()}: {task.get_coro()!r}")
        lines.extend(
            f"    {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
            for frame in task.get_stack(limit=8)
        )
    return "\n".join(lines)
