"""/v1/fine_tuning/jobs in OpenAI's and Mistral's shapes: one implementation.

A job takes OpenAI's body or Mistral's (`server/fine_tuning_requests.py` tells them apart)
and is shown in the shape it was created in, both drawn from one `Job`
(`core/schemas/fine_tuning.py`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import InvalidRequestError
from souverain.core.principal import Principal
from souverain.core.schemas.common import ListPage, MistralList
from souverain.core.schemas.fine_tuning import (
    Evaluation,
    Hyperparameters,
    Job,
    JobError,
    JobExtras,
    Method,
    MistralCheckpoint,
    MistralCheckpointMetrics,
    MistralEvent,
    MistralJob,
    OpenAICheckpoint,
    OpenAIEvent,
    OpenAIJob,
    Reinforcement,
    Supervised,
)
from souverain.db.jobs import FineTuningCheckpointRow, FineTuningEventRow, FineTuningJobRow
from souverain.jobs.fine_tuning import creation, recipe
from souverain.jobs.fine_tuning import service as fine_tuning
from souverain.server.deps import PrincipalDep, SessionDep, StateDep
from souverain.server.fine_tuning_requests import asked_of, limits_of
from souverain.server.pagination import EVENTS, OBJECTS, Cursor, cursor, list_page, mistral_list
from souverain.training.configs import GRPOConfig, tenant_settings

router = APIRouter(tags=["fine-tuning"])

AnyJob = OpenAIJob | MistralJob


def _ts(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def job_of(job: FineTuningJobRow) -> Job:
    """The job read once: both shapes are drawn from it."""
    created = int(job.created_at.timestamp())
    hp = hyperparameters_of(job)
    return Job(
        id=job.id, status=job.status, created_at=created, finished_at=_ts(job.finished_at),
        modified_at=_ts(job.finished_at or job.heartbeat_at) or created,
        base_model=job.base_model, org_id=job.org_id,
        training_files=[f["file_id"] for f in job.training_files],
        validation_file=job.validation_file_id, fine_tuned_model=job.fine_tuned_model,
        suffix=job.suffix, seed=job.seed, auto_start=job.auto_start, metadata=job.metadata_,
        error=JobError.model_validate(job.error) if job.error else None,
        trained_tokens=job.trained_tokens, result_files=list(job.result_files),
        resolved=dict(job.resolved), hyperparameters=hp, method=method_of(job, hp),
        estimated_finish=_estimated_finish(job), extras=extras_of(job),
    )  # fmt: skip


def hyperparameters_of(job: FineTuningJobRow) -> Hyperparameters:
    base = (
        recipe.BASE_RL_LEARNING_RATE if job.method == "reinforcement" else recipe.BASE_LEARNING_RATE
    )
    return Hyperparameters(
        n_epochs=job.resolved.get("n_epochs"),
        batch_size=job.resolved.get("batch_size"),
        learning_rate_multiplier=round(job.resolved.get("learning_rate", 0) / base, 6),
    )


def method_of(job: FineTuningJobRow, hp: Hyperparameters) -> Method:
    resolved = job.resolved
    if job.method == "evaluation":  # souverain: an evaluation job, listed with its model
        return Method(type="evaluation", evaluation=Evaluation(grader=resolved.get("grader")))
    if job.method != "reinforcement":
        return Method(type="supervised", supervised=Supervised(hyperparameters=hp))
    own = {name: resolved.get(name) for name in tenant_settings(GRPOConfig)}
    return Method(
        type="reinforcement",
        reinforcement=Reinforcement(
            grader=resolved.get("grader"),
            hyperparameters=hp.model_dump() | own | {"training_steps": resolved.get("max_steps")},
        ),
    )


def extras_of(job: FineTuningJobRow) -> JobExtras:
    return JobExtras(
        state=job.status, status_reason=job.status_reason, wanted=job.wanted, step=job.step,
        total_steps=job.total_steps, tokens=job.trained_tokens, tokens_per_s=job.tokens_per_s,
        train_loss=job.train_loss, datacenter=job.datacenter_id, attempt=job.attempt,
        cpu_seconds=round(job.cpu_seconds + job.live_cpu_seconds, 2),
        energy_j=round(job.energy_j + job.live_energy_j, 2),
        energy_source=job.energy_source, model_id=job.result_model_id,
    )  # fmt: skip


def _estimated_finish(job: FineTuningJobRow) -> int | None:
    if job.status != "running" or not job.step or not job.started_at or not job.heartbeat_at:
        return None
    elapsed = (job.heartbeat_at - job.started_at).total_seconds()
    remaining = elapsed / job.step * max(0, job.total_steps - job.step)
    return int(job.heartbeat_at.timestamp() + remaining)


def shown(job: FineTuningJobRow) -> AnyJob:
    """A job in the shape it was created in."""
    return job_of(job).openai() if job.shape == "openai" else job_of(job).mistral()


def openai_event(event: FineTuningEventRow) -> OpenAIEvent:
    return OpenAIEvent(
        id=event.id,
        created_at=int(event.created_at.timestamp()),
        level=event.level,
        message=event.message,
        data=event.data,
        type=event.type,
    )


def openai_checkpoint(job: FineTuningJobRow, row: FineTuningCheckpointRow) -> OpenAICheckpoint:
    metrics = {k: v for k, v in (row.metrics or {}).items() if v is not None}
    return OpenAICheckpoint(
        id=row.id,
        created_at=int(row.created_at.timestamp()),
        fine_tuned_model_checkpoint=fine_tuning.checkpoint_model_name(job, row.step),
        fine_tuning_job_id=job.id,
        metrics={"step": float(row.step), **metrics},
        step_number=row.step,
    )


@router.post("/v1/fine_tuning/jobs", summary="Create a fine-tuning job")
async def create_job(
    request: Request, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> AnyJob:
    """OpenAI's body (`training_file`, `method`) or Mistral's (`training_files`,
    `hyperparameters.training_steps`…): the same job either way."""
    try:
        raw = await request.json()
    except ValueError:
        raise InvalidRequestError("The body is not valid JSON.") from None
    job = await creation.create_job(
        session, principal=principal, asked=asked_of(raw), limits=limits_of(state.settings),
        master_key=state.master_key, project_id=state.routes.project_of(principal),
    )  # fmt: skip
    await session.commit()
    return shown(job)


@router.get("/v1/fine_tuning/jobs", summary="List fine-tuning jobs")
async def list_jobs(
    principal: PrincipalDep, session: SessionDep, page: Annotated[Cursor, cursor(OBJECTS)]
) -> ListPage[OpenAIJob] | MistralList[MistralJob]:
    """Your jobs (all of your organisation's, for its managers), newest first: OpenAI's
    cursor (`after`, `limit`) or Mistral's page (`page_size`)."""
    found = await fine_tuning.list_jobs(
        session, principal=principal, limit=page.limit, after=page.after
    )
    if page.mistral:
        return mistral_list(found.rows, lambda row: job_of(row).mistral())
    return list_page([job_of(row).openai() for row in found.rows], has_more=found.has_more)


@router.get("/v1/fine_tuning/jobs/{job_id}", summary="Retrieve a fine-tuning job")
async def retrieve_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> AnyJob:
    job = await fine_tuning.get_job(session, principal=principal, job_id=job_id)
    if job.shape == "openai":
        return job_of(job).openai()
    events = await fine_tuning.events(
        session, principal=principal, job_id=job_id, limit=100, after=None
    )
    checkpoints = await fine_tuning.checkpoints(session, principal=principal, job_id=job_id)
    return job_of(job).mistral(
        events=[
            MistralEvent(name=e.message, data=e.data, created_at=int(e.created_at.timestamp()))
            for e in reversed(events)
        ],
        checkpoints=[
            MistralCheckpoint(
                metrics=MistralCheckpointMetrics(
                    train_loss=c.metrics.get("train_loss"), valid_loss=c.metrics.get("valid_loss")
                ),
                step_number=c.step,
                created_at=int(c.created_at.timestamp()),
            )
            for c in checkpoints
        ],
    )


async def _change(job_id: str, action: str, principal: Principal, session: AsyncSession) -> AnyJob:
    job = await fine_tuning.change(session, principal=principal, job_id=job_id, action=action)
    await session.commit()
    return shown(job)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel", summary="Cancel a fine-tuning job")
async def cancel_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> AnyJob:
    return await _change(job_id, "cancel", principal, session)


@router.post("/v1/fine_tuning/jobs/{job_id}/pause", summary="Pause a fine-tuning job")
async def pause_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> AnyJob:
    """It saves a checkpoint and stops; `resume` carries on from there."""
    return await _change(job_id, "pause", principal, session)


@router.post("/v1/fine_tuning/jobs/{job_id}/resume", summary="Resume a paused job")
async def resume_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> AnyJob:
    return await _change(job_id, "resume", principal, session)


@router.post("/v1/fine_tuning/jobs/{job_id}/start", summary="Start a validated job (Mistral)")
async def start_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> AnyJob:
    return await _change(job_id, "start", principal, session)


@router.get("/v1/fine_tuning/jobs/{job_id}/events", summary="List a job's events")
async def list_events(
    job_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    page: Annotated[Cursor, cursor(EVENTS)],
) -> ListPage[OpenAIEvent]:
    """Newest first; `after` is an event's id."""
    rows = await fine_tuning.events(
        session, principal=principal, job_id=job_id, limit=page.limit + 1, after=page.after
    )
    events = [openai_event(row) for row in rows[: page.limit]]
    return list_page(events, has_more=len(rows) > page.limit)


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", summary="List a job's checkpoints")
async def list_checkpoints(
    job_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    page: Annotated[Cursor, cursor(OBJECTS)],
) -> ListPage[OpenAICheckpoint]:
    """Newest first; `after` is a checkpoint's id."""
    job = await fine_tuning.get_job(session, principal=principal, job_id=job_id)
    rows = await fine_tuning.checkpoints(
        session, principal=principal, job_id=job_id, limit=page.limit + 1, after=page.after
    )
    data = [openai_checkpoint(job, r) for r in rows[: page.limit]]
    return list_page(data, has_more=len(rows) > page.limit)
