"""The fine-tuning loop: each job it follows goes through one load → process → apply
round (`jobs/cycle.py`) under its row's lease, handled by the module of its state:

    queued   `queued.py`   placed, budget reserved, training actor started
    running  `running.py`  events, checkpoints and progress written; pause, cancel and a
                          policy that no longer allows its datacenter passed on
    ended    `ended.py`    a model registered (and deployed) or the failure kept; what the
                          attempt used settled against the budget

Ray is called only in the process step and after the apply has committed (stopping an
ended actor, signals), never inside a transaction. The loop runs on its own, beside the
deployments loop, so a slow training start delays no replica placement.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.fleet import TrainingStatus
from souverain.core.status import FINE_TUNING_FOLLOWED, FineTuningStatus, Wanted
from souverain.db.jobs import FineTuningJobRow
from souverain.jobs.cycle import run_cycle
from souverain.jobs.facade import ClusterFacade
from souverain.jobs.fine_tuning import queued, running
from souverain.jobs.fine_tuning.context import Context, Effects, TrainingDefaults
from souverain.jobs.lease import Lease
from souverain.scheduler.placer import Placer

log = logging.getLogger(__name__)

__all__ = ["FineTuneReconciler", "TrainingDefaults"]

Loaded = queued.Placing | running.Following
Outcome = queued.Started | TrainingStatus | None


class FineTuneReconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cluster: ClusterFacade,
        *,
        master_key: bytes,
        defaults: TrainingDefaults,
        lease_s: float = 60.0,
    ) -> None:
        self._sessions = sessions
        self._ctx = Context(cluster, master_key, defaults)
        self._lease = Lease(
            FineTuningJobRow.id, FineTuningJobRow.lock_token, FineTuningJobRow.lock_expires_at,
            lease_s,
        )  # fmt: skip

    async def run_once(self, placer: Placer) -> None:
        async with self._sessions() as session:
            query = select(FineTuningJobRow.id).where(
                FineTuningJobRow.status.in_(FINE_TUNING_FOLLOWED)
                | (
                    (FineTuningJobRow.status == FineTuningStatus.PAUSED)
                    & FineTuningJobRow.node_id.is_not(None)
                )
            )
            ids = list(
                (await session.execute(query.order_by(FineTuningJobRow.created_at))).scalars()
            )
        for job_id in ids:
            try:
                await self.reconcile(job_id, placer)
            except Exception:  # one broken job must not stop the others
                log.exception("reconciling fine-tuning job %s failed", job_id)

    async def reconcile(self, job_id: str, placer: Placer) -> None:
        after: Effects = []

        async def load(session: AsyncSession) -> Loaded | None:
            return await self._load(session, job_id, placer)

        async def process(loaded: Loaded) -> Outcome:
            return await self._process(loaded, placer)

        async def apply(session: AsyncSession, loaded: Loaded, outcome: Outcome) -> None:
            await self._apply(session, loaded, outcome, after)

        done: tuple[Loaded, Outcome] | None = await run_cycle(
            self._sessions, self._lease, job_id, load=load, process=process, apply=apply
        )
        if done is None:
            return
        cluster = self._ctx.cluster
        for effect in after:  # the facts they follow from are committed
            if effect.what == "stop":
                await asyncio.to_thread(cluster.stop_training, effect.actor_name)
            else:
                await asyncio.to_thread(cluster.signal_training, effect.actor_name, effect.what,
                                        effect.energy_limit_j)  # fmt: skip

    async def _load(self, session: AsyncSession, job_id: str, placer: Placer) -> Loaded | None:
        job = await session.get(FineTuningJobRow, job_id)
        if job is None:
            return None
        if job.status == FineTuningStatus.QUEUED and job.wanted == Wanted.RUN:
            return await queued.load(session, self._ctx, job, placer)
        if job.status in (FineTuningStatus.RUNNING, FineTuningStatus.PAUSED):
            return await running.load(session, job)
        return None

    async def _process(self, loaded: Loaded, placer: Placer) -> Outcome:
        if isinstance(loaded, queued.Placing):
            return await queued.process(self._ctx, loaded, placer)
        return await running.process(self._ctx, loaded)

    async def _apply(
        self, session: AsyncSession, loaded: Loaded, outcome: Outcome, after: Effects
    ) -> None:
        if isinstance(loaded, queued.Placing):
            assert isinstance(outcome, queued.Started)
            await queued.apply(session, self._ctx, loaded, outcome, after)
        else:
            assert not isinstance(outcome, queued.Started)
            await running.apply(session, self._ctx, loaded, outcome, after)
