"""A running fine-tuning job (or a paused one whose worker still runs), followed.

load     whether the datacenter it runs in is still allowed by the policy in force
process  the actor's status since the last event the job has (Ray: no transaction)
apply    its new events and sealed checkpoints are written, with its progress; an
         actor that ended or is gone ends the attempt (`ended.py`); more energy is
         reserved as it consumes (`budget.top_up`), and a budget with no room pauses it;
         a datacenter the policy no longer allows makes the job checkpoint and move
after    pause and cancel are passed on to the actor, and an ended actor is stopped,
         once the apply has committed what they follow from
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.fleet import SealedObject, TrainingStatus, training_actor_name
from souverain.core.ids import new_id
from souverain.core.status import TRAINING_ENDED, Wanted
from souverain.db.jobs import FineTuningCheckpointRow, FineTuningJobRow
from souverain.db.tables import utcnow
from souverain.fleet import datacenters
from souverain.jobs.fine_tuning import budget as training_budget
from souverain.jobs.fine_tuning import ended
from souverain.jobs.fine_tuning import service as fine_tuning
from souverain.jobs.fine_tuning.context import Context, Effect, Effects
from souverain.jobs.fine_tuning.events import event_words

BUDGET_SPENT = "the energy budget has no room left for this job; raise it, then resume the job"


@dataclass
class Following:
    job_id: str
    event_seq: int
    moved: str | None  # why the policy no longer allows where it runs


async def load(session: AsyncSession, job: FineTuningJobRow) -> Following:
    moved = None
    if job.wanted != Wanted.MOVE and job.datacenter_id is not None:
        policy = await fine_tuning.job_policy(session, job=job)
        moved = await datacenters.exclusion_at(
            session, policy=policy, datacenter_id=job.datacenter_id
        )
    return Following(job.id, job.event_seq, moved)


async def process(ctx: Context, following: Following) -> TrainingStatus | None:
    name = training_actor_name(following.job_id)
    return await asyncio.to_thread(ctx.cluster.training_status, name, following.event_seq)


async def apply(
    session: AsyncSession,
    ctx: Context,
    following: Following,
    status: TrainingStatus | None,
    after: Effects,
) -> None:
    job = await session.get(FineTuningJobRow, following.job_id)
    assert job is not None  # the fence matched it
    name = training_actor_name(job.id)
    if status is None:
        await ended.lost(session, ctx, job)
        return
    if status.state == "starting" and status.node_id is None:
        return  # the actor is being created (or not answering for a moment)
    await _record(session, job, status)
    if status.state in TRAINING_ENDED:
        await ended.ended(session, ctx, job, status)
        after.append(Effect("stop", name))
        return
    if job.wanted == Wanted.RUN and not await _top_up(session, ctx, job):
        job.wanted = Wanted.PAUSE
        job.status_reason = BUDGET_SPENT
        await fine_tuning.add_event(session, job, f"Pausing: {BUDGET_SPENT}", level="warn")
    if job.wanted == Wanted.CANCEL:
        after.append(Effect("cancel", name))
    elif job.wanted == Wanted.PAUSE and status.state != "pausing":
        # paused by its budget: stopped at once, past its last checkpoint, at what it holds
        limit = (
            training_budget.held_j(job, watts_per_core=ctx.defaults.watts_per_core)
            if job.status_reason == BUDGET_SPENT
            else None
        )
        after.append(Effect("pause", name, limit))
    elif following.moved is not None and job.wanted != Wanted.MOVE:
        job.wanted = Wanted.MOVE
        await fine_tuning.add_event(
            session, job, f"The policy in force no longer allows {job.datacenter_id} "
            f"({following.moved}): checkpointing to carry on elsewhere", level="warn",
        )  # fmt: skip
        after.append(Effect("pause", name))


async def _top_up(session: AsyncSession, ctx: Context, job: FineTuningJobRow) -> bool:
    """More energy reserved as the attempt consumes; False when the budget has no room."""
    return await training_budget.top_up(
        session, job=job, cpu_hours_per_job=ctx.defaults.cpu_hours_per_job,
        watts_per_core=ctx.defaults.watts_per_core,
    )  # fmt: skip


async def _record(session: AsyncSession, job: FineTuningJobRow, status: TrainingStatus) -> None:
    for event in status.events:
        if event["type"] == "validated" and "thinking_fraction" in event:
            job.resolved = {**job.resolved, "thinking_fraction": event["thinking_fraction"]}
        message, kind, data = event_words(event)
        if message:
            await fine_tuning.add_event(session, job, message, kind=kind, data=data,
                                     level="error" if event["type"] in ("invalid", "collapsed") else "info")  # fmt: skip
    job.event_seq = max(job.event_seq, status.event_seq)
    await _checkpoints(session, job, status.sealed)
    job.step = max(job.step, status.step)
    job.total_steps = status.total_steps or job.total_steps
    job.trained_tokens = max(job.trained_tokens, status.tokens)
    job.tokens_per_s = status.tokens_per_s or job.tokens_per_s
    job.train_loss = status.train_loss if status.train_loss is not None else job.train_loss
    job.live_cpu_seconds, job.live_energy_j = status.cpu_seconds, status.energy_j
    job.energy_source = status.energy_source
    job.node_id = status.node_id or job.node_id
    job.wall_s = status.wall_s
    job.heartbeat_at = utcnow()
    await session.flush()


async def _checkpoints(
    session: AsyncSession, job: FineTuningJobRow, sealed: tuple[SealedObject, ...]
) -> None:
    query = select(FineTuningCheckpointRow.step).where(FineTuningCheckpointRow.job_id == job.id)
    known = set((await session.execute(query)).scalars())
    for item in sealed:
        if item.name.startswith("checkpoint-") and item.step not in known:
            session.add(_checkpoint_row(job, item))
            known.add(item.step)


def _checkpoint_row(job: FineTuningJobRow, sealed: SealedObject) -> FineTuningCheckpointRow:
    return FineTuningCheckpointRow(
        id=f"ftckpt-{new_id('c')[-16:]}", job_id=job.id, store_uri=job.store_uri or "", step=sealed.step, metrics=dict(sealed.metrics),
        object_key=sealed.object_key, object_id=sealed.object_id, sha256=sealed.sha256,
        size_bytes=sealed.size, created_at=utcnow(),
    )  # fmt: skip
