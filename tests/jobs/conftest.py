"""State tests of long work: a migrated database (SQLite always, PostgreSQL when set), no
server, and the in-memory cluster in place of Ray."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.ids import new_id
from souverain.db.engine import create_engine_unpooled, session_factory, upgrade
from souverain.db.jobs import FileRow, FineTuningJobRow
from souverain.db.metering import BudgetRow
from souverain.db.tables import DatacenterRow, ModelRow, utcnow
from souverain.files import service as files
from souverain.jobs.runner import build_snapshot
from souverain.scheduler.placer import Placer
from souverain.settings import normalise_database_url
from souverain.testing.factories import Factory, Tenant
from souverain.testing.memory_cluster import MemoryCluster
from tests.conftest import DATABASES, MASTER_KEY, fresh_database_url

KEY = MASTER_KEY.encode()


@pytest.fixture(scope="session", params=DATABASES)
async def sessions(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    async for made in migrated(request, tmp_path_factory, "jobs"):
        yield made


async def migrated(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, name: str
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A new, migrated database of `request.param`'s kind (on PostgreSQL one named
    `souverain_{name}`), for a fixture to yield."""
    directory = tmp_path_factory.mktemp(f"{name}-{request.param}")
    url = await fresh_database_url(request.param, directory, database=f"souverain_{name}")
    engine = create_engine_unpooled(normalise_database_url(url))
    await upgrade(engine)
    yield session_factory(engine)
    await engine.dispose()


@dataclass
class World:
    """A tenant with a training file, a base model and a datacenter with one node."""

    sessions: async_sessionmaker[AsyncSession]
    tenant: Tenant
    datacenter_id: str
    cluster: MemoryCluster
    base_model_id: str
    file_id: str

    async def placer(self) -> Placer:
        async with self.sessions() as session:
            dcs = list((await session.execute(select(DatacenterRow))).scalars())
        return Placer(build_snapshot(self.cluster.observe_nodes(), dcs))

    async def queued_job(self) -> str:
        """A supervised job, queued, as the API leaves it once its files are validated."""
        job_id = new_id("ftjob")
        async with self.sessions.begin() as session:
            kek = await files.organisation_kek(
                session, master_key=KEY, org_id=self.tenant.org_id, create=True
            )
            _, wrapped = files.new_data_key(kek, job_id)
            session.add(
                FineTuningJobRow(
                    id=job_id, org_id=self.tenant.org_id, project_id=None, key_id=None,
                    shape="openai", method="supervised", base_model_id=self.base_model_id,
                    base_model="base", training_files=[{"file_id": self.file_id, "weight": 1}],
                    hyperparameters={}, resolved={"max_steps": 3, "seed": 1}, seed=1,
                    cpus=1.0, gpus=0, status="queued", status_reason="", wanted="run",
                    wrapped_key=wrapped, total_steps=3, result_files=[], created_at=utcnow(),
                )
            )  # fmt: skip
        return job_id

    async def job(self, job_id: str) -> FineTuningJobRow:
        async with self.sessions() as session:
            row = await session.get(FineTuningJobRow, job_id)
            assert row is not None
            return row


@pytest.fixture
async def world(sessions: async_sessionmaker[AsyncSession]) -> World:
    return await new_world(sessions)


async def new_world(sessions: async_sessionmaker[AsyncSession]) -> World:
    """A world in this database (a live server's too: its route table then knows it)."""
    factory = Factory(sessions)
    tenant = await factory.tenant()
    dc = await factory.datacenter(country="FR")
    model, _ = await factory.served_model(url="http://127.0.0.1:1", datacenter_id=dc)
    cluster = MemoryCluster()
    cluster.add_node(new_id("node"), dc)
    file_id = files.new_file_id()
    async with sessions.begin() as session:
        base = (await session.execute(select(ModelRow).where(ModelRow.name == model))).scalar_one()
        kek = await files.organisation_kek(
            session, master_key=KEY, org_id=tenant.org_id, create=True
        )
        _, wrapped = files.new_data_key(kek, file_id)
        session.add(
            FileRow(
                id=file_id, org_id=tenant.org_id, filename="train.jsonl", purpose="fine-tune",
                bytes=10, stored_bytes=38, sha256="0" * 64, num_lines=1, datacenter_id=dc,
                store_uri=f"file://{os.devnull}", object_key=file_id, wrapped_key=wrapped,
                status="processed", expires_at=utcnow() + timedelta(days=1),
            )
        )  # fmt: skip
        # An energy budget: placing a job reserves on it (a write, before the actor starts).
        session.add(BudgetRow(id=new_id("bud"), org_id=tenant.org_id, energy_kwh=1000.0))
    return World(sessions, tenant, dc, cluster, base.id, file_id)
