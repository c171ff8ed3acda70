"""Each kind of long work runs in its own loop of the controller: a slow training start
does not delay replica placement."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.ids import new_id
from souverain.db.tables import DeploymentRow
from souverain.installation.authority import Issuer
from souverain.jobs.deployments.reconciler import EngineDefaults
from souverain.jobs.fine_tuning.reconciler import TrainingDefaults
from souverain.jobs.runner import Controller
from tests.conftest import DATABASES, wait_until
from tests.jobs.conftest import KEY, World, migrated


@pytest.fixture(scope="module", params=DATABASES)
async def sessions(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A database of this module's own: the controller reconciles every deployment it
    holds, so the other tests' leftovers would make its rounds theirs as well."""
    async for made in migrated(request, tmp_path_factory, "loops"):
        yield made


class TestLoops:
    async def test_a_replica_is_placed_while_a_training_actor_is_slow_to_start(
        self, world: World
    ) -> None:
        await world.queued_job()
        controller = Controller(
            world.sessions,
            world.cluster,
            master_key=KEY,
            issuer=Issuer(world.sessions, KEY),
            engine=EngineDefaults(threads=1, bind_host=None),
            interval_s=0.05,
            training=TrainingDefaults(threads=1, file_stores={world.datacenter_id: "file:///t"}),
        )
        world.cluster.hold_training()
        stop = asyncio.Event()
        running = asyncio.create_task(controller.run(stop))
        try:
            await wait_until(world.cluster.training_starting.is_set, timeout_s=10)
            deployment_id = await deploy(world)
            await wait_until(
                lambda: any(
                    spec.deployment_id == deployment_id
                    for spec in world.cluster.replica_specs.values()
                ),
                # the training start is held until the end, so any placement proves the
                # loops apart
                timeout_s=30,
            )
        finally:
            world.cluster.release_training()
            stop.set()
            await running


async def deploy(world: World) -> str:
    """A new deployment of the world's base model, one replica wanted."""
    deployment_id = new_id("dep")
    async with world.sessions.begin() as session:
        session.add(
            DeploymentRow(
                id=deployment_id, name=deployment_id, model_id=world.base_model_id,
                org_id=None, engine="stand-in", replicas=1, datacenters=[], cpus=1, gpus=0,
                engine_args={}, status="pending", status_reason="",
            )
        )  # fmt: skip
    return deployment_id
