"""The fault suite's parts: engine processes that misbehave on cue, a server with a short
engine read timeout, and a tally of what the client saw against what was recorded.

Every fault test asserts what a user would notice: each request answered or refused with a
clear error, and exactly one usage record per admitted request (none lost, none doubled).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
from ray.cluster_utils import Cluster
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.fleet import DATACENTER_LABEL, RAY_NAMESPACE
from souverain.core.ids import new_id, replica_secret
from souverain.core.roles import Role
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.db.tables import UsageRecordRow
from souverain.node.engines.base import TlsFiles
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.factories import Factory, Key
from souverain.testing.live import LiveServer, free_port
from souverain.testing.tls import every_replica_files
from tests.conftest import DATABASES, MASTER_KEY, fresh_database_url, wait_until

READ_TIMEOUT_S = 1.5


@dataclass
class Tally:
    """What one fault test sent, what came back, and what was recorded."""

    name: str
    sent: int = 0
    answered: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    records: int = 0

    def saw(self, status: int) -> None:
        self.sent += 1
        if status == 200:
            self.answered += 1
        else:
            self.refused[status] += 1

    def report(self) -> str:
        refused = ", ".join(f"{n}×{status}" for status, n in sorted(self.refused.items()))
        line = (
            f"[fault] {self.name}: sent {self.sent}, answered {self.answered}, "
            f"refused {self.sent - self.answered} ({refused or 'none'}), records {self.records}"
        )
        print(line)
        return line


@dataclass
class EngineProcess:
    url: str
    process: subprocess.Popen[bytes]

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class FaultPlatform:
    url: str
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    factory: Factory
    key: Key
    server: LiveServer
    tls: TlsFiles  # a certificate for every replica's name, from the installation's authority
    engines: list[EngineProcess] = field(default_factory=list)

    def client(self, timeout_s: float = 30.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.key.key}"},
            timeout=timeout_s,
        )

    def start_engine(self, replica_id: str) -> EngineProcess:
        """A stand-in engine process accepting only this replica's secret."""
        port = free_port()
        secret = replica_secret(MASTER_KEY.encode(), replica_id)
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "souverain.testing.stand_in",
                "--port",
                str(port),
                "--ssl-cert-file",
                str(self.tls.certificate),
                "--ssl-key-file",
                str(self.tls.key),
            ],
            env={**os.environ, "SOUVERAIN_ENGINE_SECRET": secret},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:  # only whether it listens: the gateway checks its certificate
                httpx.get(f"{url}/v1/models", timeout=1, verify=False)  # noqa: S501
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "stand-in engine did not start"
                time.sleep(0.05)
        engine = EngineProcess(url, process)
        self.engines.append(engine)
        return engine

    async def model_on_engines(self, count: int = 1) -> tuple[str, list[EngineProcess]]:
        """A model served by `count` replicas, each its own engine process."""
        dc = await self.factory.datacenter("fault-dc", country="FR")
        replica_ids = [new_id("rep") for _ in range(count)]
        engines = [self.start_engine(replica_id) for replica_id in replica_ids]
        more = tuple((e.url, r) for e, r in zip(engines[1:], replica_ids[1:], strict=True))
        name, _ = await self.factory.served_model(
            url=engines[0].url, datacenter_id=dc, replica_id=replica_ids[0], more_replicas=more
        )  # every replica routable at once
        async with self.client() as client:

            async def routable() -> bool:
                listed = (await client.get("/v1/models")).json().get("data", [])
                return any(m["id"] == name for m in listed)

            await wait_until(routable)
        return name, engines

    async def records(self, model: str) -> list[UsageRecordRow]:
        async with self.sessions() as session:
            query = select(UsageRecordRow).where(UsageRecordRow.model == model)
            return list((await session.execute(query)).scalars())

    async def settled(self, model: str, expected: int) -> list[UsageRecordRow]:
        """Wait until `expected` records of `model` are settled; fail if more appear."""
        found: list[UsageRecordRow] = []

        async def done() -> bool:
            nonlocal found
            found = await self.records(model)
            return len(found) >= expected and all(r.status != "open" for r in found)

        await wait_until(done, timeout_s=20)
        assert len(found) == expected, f"{len(found)} records for {expected} admitted requests"
        return found

    async def open_records(self) -> int:
        async with self.sessions() as session:
            query = select(func.count()).where(UsageRecordRow.status == "open")
            return int((await session.execute(query)).scalar_one())


@contextlib.asynccontextmanager
async def fault_platform(
    directory: Path, database: str, **overrides: Any
) -> AsyncIterator[FaultPlatform]:
    """A live server with a short engine read timeout, a tenant and its owner's key."""
    settings = Settings(
        data_dir=directory,
        database_url=await fresh_database_url(database, directory, database="faults"),
        secret_key=MASTER_KEY,  # type: ignore[arg-type]
        replica_refresh_s=0.2,
        key_cache_ttl_s=1.0,
        upstream_timeout_s=READ_TIMEOUT_S,
        port=free_port(),
        **overrides,
    )
    with LiveServer(create_app(settings), port=settings.port) as server:
        engine = create_engine_unpooled(settings.sqlalchemy_url)
        sessions = session_factory(engine)
        factory = Factory(sessions)
        tenant = await factory.tenant(roles={"ana": Role.OWNER})
        key = await factory.member_key(tenant, "ana", Role.OWNER)
        tls = await every_replica_files(sessions, MASTER_KEY.encode(), directory / "engine-tls")
        platform = FaultPlatform(server.url, settings, sessions, factory, key, server, tls)
        try:
            yield platform
        finally:
            for process in platform.engines:
                process.process.kill()
                process.process.wait()
            await engine.dispose()


@pytest.fixture(scope="module", params=DATABASES)
async def faulty(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[FaultPlatform]:
    directory: Path = tmp_path_factory.mktemp(f"faults-{request.param}")
    # These tests break engines on purpose with one key: the key is never paused here.
    async with fault_platform(directory, request.param, engine_failures_per_key=1000) as found:
        yield found


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Iterator[Tally]:
    found = Tally(request.node.name)
    yield found
    found.report()


AUTHENTICATED = os.environ.get("RAY_AUTH_MODE") == "token"
# Controllers refuse a Ray cluster without token authentication, and Ray reads its mode when
# it is imported: the tests that run controllers against `par1_cluster` run in a pytest of
# their own started with it (`test_authenticated_ray.py`).
needs_authenticated_ray = pytest.mark.skipif(
    not AUTHENTICATED, reason="run by tests/faults/test_authenticated_ray.py"
)


@pytest.fixture(scope="module")
def par1_cluster() -> Iterator[Cluster]:
    """A Ray cluster with one 4-CPU node in par1, this process connected as its driver."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    cluster.add_node(num_cpus=4, labels={DATACENTER_LABEL: "par1"})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=RAY_NAMESPACE, log_to_driver=False)
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
