"""One lease for all long work: a row is held by one holder at a time, a holder paused
past its expiry writes nothing, and the heartbeat keeps a working holder's lease."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.db.jobs import FineTuningJobRow
from souverain.jobs import leader
from souverain.jobs.cycle import run_cycle
from souverain.jobs.lease import Lease, LeaseLost
from tests.jobs.conftest import World


def job_lease(ttl_s: float) -> Lease:
    return Lease(
        FineTuningJobRow.id, FineTuningJobRow.lock_token, FineTuningJobRow.lock_expires_at, ttl_s
    )


class TestLease:
    async def test_one_holder_at_a_time_until_it_lets_go(self, world: World) -> None:
        job_id, lease = await world.queued_job(), job_lease(60)
        first = await lease.take(world.sessions, job_id)
        assert first is not None and await lease.take(world.sessions, job_id) is None
        await lease.let_go(world.sessions, job_id, first)
        assert await lease.take(world.sessions, job_id) is not None

    async def test_a_holder_whose_lease_expired_and_was_taken_writes_nothing(
        self, world: World
    ) -> None:
        job_id = await world.queued_job()
        stale = await job_lease(0.01).take(world.sessions, job_id)
        await asyncio.sleep(0.05)
        fresh = await job_lease(60).take(world.sessions, job_id)
        assert stale is not None and fresh is not None
        with pytest.raises(LeaseLost):
            async with world.sessions.begin() as session:
                await job_lease(60).fence(session, job_id, token=stale, status="failed")
        assert (await world.job(job_id)).status == "queued"

    async def test_the_heartbeat_keeps_the_lease_while_work_runs_past_its_life(
        self, world: World
    ) -> None:
        job_id, lease = await world.queued_job(), job_lease(0.3)
        token = await lease.take(world.sessions, job_id)
        assert token is not None
        work = asyncio.create_task(asyncio.sleep(1.0))
        assert await lease.heartbeat(world.sessions, job_id, token, work)
        assert await lease.take(world.sessions, job_id) is None  # still held

    async def test_work_is_cancelled_as_soon_as_its_lease_is_taken(self, world: World) -> None:
        job_id, lease = await world.queued_job(), job_lease(0.3)
        token = await lease.take(world.sessions, job_id)
        assert token is not None
        async with world.sessions.begin() as session:  # an operator's hand, or a bug
            row = (
                await session.execute(select(FineTuningJobRow).where(FineTuningJobRow.id == job_id))
            ).scalar_one()
            row.lock_token = "someone-else"
        work = asyncio.create_task(asyncio.sleep(30))
        assert not await lease.heartbeat(world.sessions, job_id, token, work)
        assert work.cancelled()


class LockedAtRelease(Lease):
    """A lease whose release write fails, as it does when the database stays locked."""

    async def let_go(
        self, sessions: async_sessionmaker[AsyncSession], key: str, token: str
    ) -> None:
        raise OperationalError("UPDATE fine_tuning_jobs", {}, Exception("database is locked"))


class TestCycle:
    async def test_a_round_cancelled_while_it_works_stays_cancelled_when_its_release_fails(
        self, world: World
    ) -> None:
        """The controller stops its loops by cancelling them: a release that fails must not
        turn the cancellation into an ordinary error that the loop survives."""
        job_id = await world.queued_job()
        lease = LockedAtRelease(
            FineTuningJobRow.id, FineTuningJobRow.lock_token, FineTuningJobRow.lock_expires_at, 60
        )
        working = asyncio.Event()

        async def load(session: AsyncSession) -> str:
            return job_id

        async def process(loaded: str) -> None:
            working.set()
            await asyncio.sleep(60)

        async def apply(session: AsyncSession, loaded: str, outcome: None) -> None:
            raise AssertionError("a cancelled round applies nothing")

        round_ = asyncio.create_task(
            run_cycle(world.sessions, lease, job_id, load=load, process=process, apply=apply)
        )
        await working.wait()
        round_.cancel()
        with pytest.raises(asyncio.CancelledError):
            await round_


class TestLeader:
    async def test_one_controller_leads_and_another_takes_over_once_it_lets_go(
        self, sessions: async_sessionmaker[AsyncSession]
    ) -> None:
        name = "controller-test"
        assert await leader.try_acquire(sessions, holder="a", ttl_s=60, name=name)
        assert not await leader.try_acquire(sessions, holder="b", ttl_s=60, name=name)
        assert await leader.try_acquire(sessions, holder="a", ttl_s=60, name=name)  # renewed
        await leader.release(sessions, holder="a", name=name)
        assert await leader.try_acquire(sessions, holder="b", ttl_s=60, name=name)
