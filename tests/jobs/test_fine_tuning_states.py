"""Fine-tuning jobs move between states through load → process → apply, with the
in-memory cluster in place of Ray: no transaction is open while an actor starts, and the
budget reservation always ends released or held by a running attempt."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, select, update

from souverain.core.fleet import SealedObject, training_actor_name
from souverain.db.jobs import FineTuningJobRow
from souverain.db.metering import BudgetRow
from souverain.db.tables import ModelRow, OrganisationRow
from souverain.jobs.fine_tuning.reconciler import FineTuneReconciler, TrainingDefaults
from souverain.jobs.fine_tuning.running import BUDGET_SPENT
from tests.jobs.conftest import KEY, World


def reconciler(world: World) -> FineTuneReconciler:
    defaults = TrainingDefaults(file_stores={world.datacenter_id: "file:///tmp"})
    return FineTuneReconciler(world.sessions, world.cluster, master_key=KEY, defaults=defaults)


async def held_start(world: World, job_id: str) -> asyncio.Task[None]:
    """Reconcile the queued job with its actor's start held (as a slow Ray call)."""
    world.cluster.hold_training()
    task = asyncio.create_task(reconciler(world).reconcile(job_id, await world.placer()))
    for _ in range(500):
        if world.cluster.training_starting.is_set() or task.done():
            break
        await asyncio.sleep(0.01)
    assert world.cluster.training_starting.is_set(), "the training actor's start was never reached"
    return task


class TestPlacing:
    async def test_a_writer_is_not_blocked_while_a_training_actor_starts(
        self, world: World
    ) -> None:
        job_id = await world.queued_job()
        placing = await held_start(world, job_id)
        try:

            async def write() -> None:  # any writer: usage settlement, a rename…
                async with world.sessions.begin() as session:
                    await session.execute(
                        update(OrganisationRow)
                        .where(OrganisationRow.id == world.tenant.org_id)
                        .values(display_name="renamed while training starts")
                    )

            await asyncio.wait_for(write(), timeout=5)
        finally:
            world.cluster.release_training()
            await placing
        job = await world.job(job_id)
        assert job.status == "running" and job.datacenter_id == world.datacenter_id
        assert job.reserved_cpu_hours > 0 and job.lock_token is None

    async def test_a_job_cancelled_while_its_actor_starts_stops_it_and_frees_its_budget(
        self, world: World
    ) -> None:
        job_id = await world.queued_job()
        placing = await held_start(world, job_id)
        async with world.sessions.begin() as session:  # what the cancel route writes
            job = await session.get(FineTuningJobRow, job_id)
            assert job is not None
            job.wanted, job.status = "cancel", "cancelled"
        world.cluster.release_training()
        await placing
        job = await world.job(job_id)
        assert job.status == "cancelled" and job.reserved_cpu_hours == 0
        assert training_actor_name(job_id) in world.cluster.stopped

    async def test_a_failed_start_leaves_the_job_queued_with_nothing_reserved(
        self, world: World
    ) -> None:
        job_id = await world.queued_job()

        def refuse(spec: object) -> None:
            raise RuntimeError("no such node")

        world.cluster.start_training = refuse  # type: ignore[method-assign]
        await reconciler(world).reconcile(job_id, await world.placer())
        job = await world.job(job_id)
        assert (job.status, job.reserved_cpu_hours, job.lock_token) == ("queued", 0, None)

    async def test_a_worker_computes_on_the_cpus_its_job_reserved(self, world: World) -> None:
        threads = {}
        for cpus in (1.0, 2.5, 4.0):
            job_id = await world.queued_job()
            async with world.sessions.begin() as session:
                job = await session.get(FineTuningJobRow, job_id)
                assert job is not None
                job.cpus = cpus
            await reconciler(world).reconcile(job_id, await world.placer())
            spec = world.cluster.training_specs[training_actor_name(job_id)]
            assert spec.cpus == cpus  # what the node reserved for it
            threads[cpus] = spec.threads
        assert threads == {1.0: 1, 2.5: 2, 4.0: 4}  # not the engines' thread count


class TestFollowing:
    async def test_a_lost_worker_queues_the_job_again_and_settles_its_attempt(
        self, world: World
    ) -> None:
        job_id = await world.queued_job()
        loop = reconciler(world)
        await loop.reconcile(job_id, await world.placer())
        world.cluster.trainings.clear()  # the actor is gone (killed, its node lost)
        await loop.reconcile(job_id, await world.placer())
        job = await world.job(job_id)
        assert (job.status, job.node_id, job.reserved_cpu_hours) == ("queued", None, 0)

    async def test_cancel_reaches_the_actor_and_its_end_stops_it_after_the_commit(
        self, world: World
    ) -> None:
        job_id = await world.queued_job()
        loop, name = reconciler(world), training_actor_name(job_id)
        await loop.reconcile(job_id, await world.placer())
        async with world.sessions.begin() as session:
            job = await session.get(FineTuningJobRow, job_id)
            assert job is not None
            job.wanted = "cancel"
        await loop.reconcile(job_id, await world.placer())
        assert (name, "cancel") in world.cluster.signals
        world.cluster.set_training(name, state="cancelled", step=2)
        await loop.reconcile(job_id, await world.placer())
        job = await world.job(job_id)
        assert (job.status, job.step, job.reserved_cpu_hours) == ("cancelled", 2, 0)
        assert name in world.cluster.stopped

    async def test_a_job_cancelled_as_it_succeeds_registers_no_model(self, world: World) -> None:
        """Cancelled (or its organisation's keys erased) while its worker sealed the adapter:
        the job ends cancelled and no model appears that its keys could no longer open."""
        job_id = await world.queued_job()
        loop, name = reconciler(world), training_actor_name(job_id)
        await loop.reconcile(job_id, await world.placer())
        async with world.sessions.begin() as session:
            job = await session.get(FineTuningJobRow, job_id)
            assert job is not None
            job.wanted = "cancel"
        sealed = tuple(
            SealedObject(name, f"{job_id}/{name}", f"{job_id}/{name}", "0" * 64, 10, 3)
            for name in ("adapter.gguf", "adapter-peft.tar")
        )
        world.cluster.set_training(name, state="succeeded", step=3, sealed=sealed)
        await loop.reconcile(job_id, await world.placer())
        job = await world.job(job_id)
        assert (job.status, job.fine_tuned_model, job.reserved_cpu_hours) == ("cancelled", None, 0)
        async with world.sessions() as session:
            models = await session.scalar(
                select(func.count())
                .select_from(ModelRow)
                .where(ModelRow.owner_org_id == world.tenant.org_id)
            )
        assert models == 0


class TestTheBudgetRunsOut:
    async def test_a_job_paused_by_its_budget_is_given_what_it_holds_as_a_limit(
        self, world: World
    ) -> None:
        """One share of room (8 CPU-hours × 10 W = 288 kJ): the top-up at half finds none,
        and at three quarters the job is paused, with the energy it holds as the limit at
        which its node stops the worker; a pause asked by a person carries none."""
        async with world.sessions.begin() as session:
            session.add(BudgetRow(id="bud-ft", org_id=world.tenant.org_id, energy_kwh=0.08))
        job_id = await world.queued_job()
        loop, name = reconciler(world), training_actor_name(job_id)
        await loop.reconcile(job_id, await world.placer())
        held = (await world.job(job_id)).reserved_cpu_hours * 3600 * 10.0
        assert held == 288_000.0
        world.cluster.set_training(name, state="running", energy_j=0.6 * held)
        await loop.reconcile(job_id, await world.placer())
        assert (await world.job(job_id)).wanted == "run"  # no room for more, a quarter to go
        world.cluster.set_training(name, state="running", energy_j=0.8 * held)
        await loop.reconcile(job_id, await world.placer())
        job = await world.job(job_id)
        assert (job.wanted, job.status_reason) == ("pause", BUDGET_SPENT)
        assert (name, "pause") in world.cluster.signals
        assert world.cluster.energy_limits[name] == held

    async def test_a_pause_asked_by_a_person_carries_no_limit(self, world: World) -> None:
        job_id = await world.queued_job()
        loop, name = reconciler(world), training_actor_name(job_id)
        await loop.reconcile(job_id, await world.placer())
        async with world.sessions.begin() as session:  # what the pause route writes
            job = await session.get(FineTuningJobRow, job_id)
            assert job is not None
            job.wanted = "pause"
        world.cluster.set_training(name, state="running")
        await loop.reconcile(job_id, await world.placer())
        assert (name, "pause") in world.cluster.signals and name not in world.cluster.energy_limits
