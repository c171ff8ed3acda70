"""Each kind of long work runs in its own loop of the controller: a slow training start
does not delay replica placement, and every loop ends when the controller steps down."""

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
from souverain.jobs.runner import Controller, Loop
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
            training=TrainingDefaults(file_stores={world.datacenter_id: "file:///t"}),
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

    async def test_a_loop_whose_body_turns_its_cancellation_into_an_error_still_ends(
        self,
    ) -> None:
        """As a round does whose clean-up write fails while it is cancelled (the database
        locked): the loop must not go on acting for a controller that stepped down."""
        rounds = 0
        entered = asyncio.Event()

        async def body() -> None:
            nonlocal rounds
            rounds += 1
            entered.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                raise RuntimeError("its clean-up write failed") from None

        stopping = asyncio.Event()
        task = asyncio.create_task(Loop("work", 0.01, body).run(stopping))
        await entered.wait()
        stopping.set()
        task.cancel()
        await asyncio.wait({task}, timeout=5)
        assert task.done(), "the loop went on after the controller stepped down"
        assert rounds == 1


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
