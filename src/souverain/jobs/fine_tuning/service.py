"""Fine-tuning jobs as tenants see and steer them: reading, listing, pausing, resuming,
cancelling, their events and checkpoints, and the policy a job runs under.

Creating one (every check before any compute) is `creation.py`; the controller places and
runs it (`reconciler.py`, a module per state). A request to pause or cancel is desired
state (`wanted`), acted on by the controller. One implementation serves OpenAI's and
Mistral's shapes; `shape` only picks how the job is shown.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import Holding, check_scope, reach
from souverain.core.errors import (
    ConflictError,
    NotFoundError,
)
from souverain.core.ids import new_id
from souverain.core.policy import UNRESTRICTED, Policy, intersect
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.status import FINE_TUNING_ACTIVE, FINE_TUNING_ENDED
from souverain.db.jobs import FineTuningCheckpointRow, FineTuningEventRow, FineTuningJobRow
from souverain.db.pages import Page, page_of
from souverain.db.tables import utcnow
from souverain.db.visibility import visible
from souverain.evidence import audit
from souverain.sovereignty import policies
from souverain.storage.crypto import unwrap

ACTIVE = FINE_TUNING_ACTIVE
ENDED = FINE_TUNING_ENDED


async def job_policy(session: AsyncSession, *, job: FineTuningJobRow) -> Policy:
    """Where the job may run and read its data: the policy in force for its owner (project
    policy ∩ organisation ceiling) ∩ the job's own jurisdictions."""
    if job.project_id is not None:
        base = await policies.effective(session, org_id=job.org_id, project_id=job.project_id)
    else:
        base = await policies.ceiling_of(session, org_id=job.org_id)
    own = Policy(jurisdictions=frozenset(job.jurisdictions)) if job.jurisdictions else UNRESTRICTED
    return intersect(base, own)


def job_data_key(job: FineTuningJobRow, kek: bytes) -> bytes:
    return unwrap(kek, bytes.fromhex(job.wrapped_key), job.id)


# -- reading and changing jobs ----------------------------------------------------------


def visible_jobs(principal: Principal) -> ColumnElement[bool]:
    """Jobs are work run on the fleet: their creator's, the organisation's managers', and
    the operators' who run the fleet (the one rule, `core.access`)."""
    check_scope(principal, Scope.READ)
    return visible(
        reach(principal, Holding.WORK),
        org=FineTuningJobRow.org_id,
        project=FineTuningJobRow.project_id,
        key=FineTuningJobRow.key_id,
    )


async def get_job(session: AsyncSession, *, principal: Principal, job_id: str) -> FineTuningJobRow:
    query = select(FineTuningJobRow).where(FineTuningJobRow.id == job_id, visible_jobs(principal))
    job = (await session.execute(query)).scalar_one_or_none()
    if job is None:
        raise NotFoundError(f"No fine-tuning job found with id '{job_id}'", param="job_id")
    return job


async def list_jobs(
    session: AsyncSession, *, principal: Principal, limit: int, after: str | None
) -> Page[FineTuningJobRow]:
    query = select(FineTuningJobRow).where(
        FineTuningJobRow.method != "evaluation",  # listed with their model
        visible_jobs(principal),
    )
    return await page_of(session, query, table=FineTuningJobRow, limit=limit, after=after)


async def change(
    session: AsyncSession, *, principal: Principal, job_id: str, action: str
) -> FineTuningJobRow:
    """cancel | pause | resume | start, as desired state the controller acts on."""
    job = await get_job(session, principal=principal, job_id=job_id)
    check_scope(principal, Scope.INFERENCE)
    if job.status in ENDED:
        if action == "cancel" and job.status == "cancelled":
            return job
        raise ConflictError(f"The job has already {job.status}.", param="job_id")
    if action == "cancel":
        job.wanted = "cancel"
        if job.status in ("validating_files", "validated", "queued", "paused"):
            job.status, job.finished_at = "cancelled", utcnow()  # nothing runs: at once
            await add_event(session, job, "Job cancelled")
    elif action == "pause":
        if job.status not in ("queued", "running"):
            raise ConflictError(f"A {job.status} job cannot be paused.", param="job_id")
        job.wanted = "pause"
        if job.status == "queued":
            job.status = "paused"
            await add_event(session, job, "Job paused")
    elif action == "resume":
        if job.status != "paused":
            raise ConflictError(f"A {job.status} job cannot be resumed.", param="job_id")
        job.wanted, job.status = "run", "queued"
        await add_event(session, job, "Job resumed: queued to carry on from its last checkpoint")
    elif action == "start":
        if job.status != "validated":
            raise ConflictError(f"A {job.status} job cannot be started.", param="job_id")
        job.status = "queued"
        await add_event(session, job, "Job started: moving to queued state")
    await audit.record(
        session,
        actor=audit.actor_of(principal),
        action=f"fine_tuning.{action}",
        org_id=job.org_id,
        target_type="fine_tuning_job",
        target_id=job.id,
    )
    await session.flush()
    return job


async def add_event(
    session: AsyncSession,
    job: FineTuningJobRow,
    message: str,
    *,
    level: str = "info",
    kind: str = "message",
    data: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> None:
    seq = (
        await session.execute(
            select(func.coalesce(func.max(FineTuningEventRow.seq), 0)).where(
                FineTuningEventRow.job_id == job.id
            )
        )
    ).scalar_one()
    session.add(
        FineTuningEventRow(
            id=new_id("ftevent"),
            job_id=job.id,
            seq=int(seq) + 1,
            level=level,
            type=kind,
            message=message,
            data=data,
            created_at=at or utcnow(),
        )
    )
    await session.flush()


async def events(
    session: AsyncSession, *, principal: Principal, job_id: str, limit: int, after: str | None
) -> list[FineTuningEventRow]:
    """Newest first, as OpenAI lists them; `after` an event id."""
    job = await get_job(session, principal=principal, job_id=job_id)
    query = select(FineTuningEventRow).where(FineTuningEventRow.job_id == job.id)
    if after is not None:
        anchor = await session.get(FineTuningEventRow, after)
        if anchor is None or anchor.job_id != job.id:
            raise NotFoundError("No such event", param="after")
        query = query.where(FineTuningEventRow.seq < anchor.seq)
    query = query.order_by(FineTuningEventRow.seq.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


async def checkpoints(
    session: AsyncSession,
    *,
    principal: Principal,
    job_id: str,
    limit: int = 100,
    after: str | None = None,
) -> list[FineTuningCheckpointRow]:
    """Latest step first; `after` a checkpoint id."""
    job = await get_job(session, principal=principal, job_id=job_id)
    query = select(FineTuningCheckpointRow).where(FineTuningCheckpointRow.job_id == job.id)
    if after is not None:
        anchor = await session.get(FineTuningCheckpointRow, after)
        if anchor is None or anchor.job_id != job.id:
            raise NotFoundError("No such checkpoint", param="after")
        query = query.where(FineTuningCheckpointRow.step < anchor.step)
    query = query.order_by(FineTuningCheckpointRow.step.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


def checkpoint_model_name(job: FineTuningJobRow, step: int) -> str:
    return f"{job.fine_tuned_model or fine_tuned_name(job)}:ckpt-step-{step}"


def fine_tuned_name(job: FineTuningJobRow) -> str:
    """OpenAI's form: ft:<base>:<organisation>:<suffix>:<job>."""
    suffix = job.suffix or "ft"
    base = (job.resolved.get("start_from") or {}).get("base") or job.base_model
    return f"ft:{base}:{job.org_id[-8:]}:{suffix}:{job.id[-8:]}"[:200]


# -- evaluations ------------------------------------------------------------------------
