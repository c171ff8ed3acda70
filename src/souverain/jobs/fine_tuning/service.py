"""Fine-tuning jobs: what a tenant asks for, checked before any compute is used.

A job is created `validating_files`: its files are the tenant's own (404 otherwise),
uploaded for `fine-tune`, within the dataset limits, stored where the policy in force
allows; its hyperparameters are resolved ("auto" included) and bounded by the settings.
Then it is `queued` (or, in Mistral's shape with `auto_start: false`, `validated` until
started). The controller places and runs it (`jobs/fine_tuning/reconciler.py`, a module per state); a request to
pause or cancel is desired state (`wanted`), acted on by the controller.

One implementation serves OpenAI's and Mistral's shapes; `shape` only picks how the job
is shown.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog import models
from souverain.core.access import Holding, check_scope, reach
from souverain.core.errors import (
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    PolicyRefusedError,
    RateLimitedError,
    UnprocessableError,
    quoted,
)
from souverain.core.ids import new_id
from souverain.core.policy import UNRESTRICTED, Policy, check_may_keep, intersect
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.status import FINE_TUNING_ACTIVE, FINE_TUNING_ENDED
from souverain.db.jobs import FileRow, FineTuningCheckpointRow, FineTuningEventRow, FineTuningJobRow
from souverain.db.pages import Page, page_of
from souverain.db.tables import ModelArtifactRow, ModelRow, OrganisationRow, utcnow
from souverain.db.visibility import visible
from souverain.evidence import audit
from souverain.files import service as files
from souverain.fleet import datacenters
from souverain.jobs.fine_tuning.recipe import (
    Asked,
    Limits,
    resolve_evaluation,
    resolve_hyperparameters,
    resolve_reinforcement,
)
from souverain.sovereignty import policies
from souverain.storage.crypto import unwrap, wrap

ACTIVE = FINE_TUNING_ACTIVE
ENDED = FINE_TUNING_ENDED
TRAINABLE_FORMATS = frozenset({"gguf", "safetensors", "hf"})


async def job_policy(session: AsyncSession, *, job: FineTuningJobRow) -> Policy:
    """Where the job may run and read its data: the policy in force for its owner (project
    policy ∩ organisation ceiling) ∩ the job's own jurisdictions."""
    if job.project_id is not None:
        base = await policies.effective(session, org_id=job.org_id, project_id=job.project_id)
    else:
        base = await policies.ceiling_of(session, org_id=job.org_id)
    own = Policy(jurisdictions=frozenset(job.jurisdictions)) if job.jurisdictions else UNRESTRICTED
    return intersect(base, own)


async def _active_jobs_locked(session: AsyncSession, *, org_id: str) -> int:
    """The organisation's jobs not ended, counted under a lock on its row held until the
    transaction ends, so concurrent creations are counted one after the other and the
    limit holds (a write: PostgreSQL's row lock, SQLite's write lock)."""
    await session.execute(
        update(OrganisationRow)
        .where(OrganisationRow.id == org_id)
        .values(display_name=OrganisationRow.display_name)
    )
    query = select(func.count()).select_from(FineTuningJobRow)
    query = query.where(FineTuningJobRow.org_id == org_id, FineTuningJobRow.status.in_(ACTIVE))
    return int((await session.execute(query)).scalar_one())


async def create_job(
    session: AsyncSession,
    *,
    principal: Principal,
    asked: Asked,
    limits: Limits,
    master_key: bytes,
    project_id: str | None,
) -> FineTuningJobRow:
    check_scope(principal, Scope.INFERENCE)
    if principal.org_id is None:
        raise InvalidRequestError(
            "Fine-tuning jobs belong to an organisation; use an organisation's key."
        )
    in_force = await policies.effective(session, org_id=principal.org_id, project_id=project_id)
    check_may_keep(in_force, "a fine-tuning job", param="training_file")
    active = await _active_jobs_locked(session, org_id=principal.org_id)
    if active >= limits.max_active_jobs:
        raise RateLimitedError(
            f"Your organisation has {active} fine-tuning jobs that have not ended; at most "
            f"{limits.max_active_jobs} at once. Cancel one or wait for one to finish.",
            retry_after_s=60,
        )
    base = await models.find_model(session, principal=principal, ref=asked.model)
    if base is None:
        raise NotFoundError(f"The model {quoted(asked.model)} does not exist", param="model")
    start_from = None
    if base.base_model_id is not None:
        if asked.method == "supervised":
            raise InvalidRequestError(
                "Fine-tune the base model: adapters of fine-tuned models cannot be stacked "
                "yet (a reinforcement job can carry on from a fine-tuned model's adapter).",
                param="model",
            )
        if base.owner_org_id != principal.org_id:
            raise NotFoundError(f"The model {quoted(asked.model)} does not exist", param="model")
        start_from = await _start_from(session, base)
        base = await session.get(ModelRow, base.base_model_id)
        assert base is not None
        start_from["base"] = base.name
    artifact = await _artifact(session, base)
    if "chat" not in base.capabilities or artifact is None:
        raise InvalidRequestError(
            f"The model {quoted(asked.model)} cannot be fine-tuned (a chat model with weights "
            "is needed).",
            param="model",
        )
    if not asked.training_files:
        raise InvalidRequestError("A training file is needed.", param="training_file")
    purposes = ("fine-tune", "evals") if asked.method == "evaluation" else ("fine-tune",)
    train_rows = [
        await _fine_tune_file(session, principal, file_id, "training_file", purposes)
        for file_id, _ in asked.training_files
    ]
    valid_row = (
        await _fine_tune_file(
            session, principal, asked.validation_file, "validation_file", purposes
        )
        if asked.validation_file and asked.validation_file != asked.training_files[0][0]
        else None
    )
    every = [*train_rows, *([valid_row] if valid_row else [])]
    size = sum(row.bytes for row in every)
    if size > limits.max_dataset_bytes:
        raise UnprocessableError(
            f"The training data are {size} bytes; jobs take at most {limits.max_dataset_bytes}.",
            param="training_file",
        )
    samples = sum(row.num_lines or 0 for row in train_rows)
    if not 1 <= samples <= limits.max_samples:
        raise UnprocessableError(
            f"The training data have {samples} samples; jobs take 1 to {limits.max_samples}.",
            param="training_file",
        )
    for weight in (w for _, w in asked.training_files):
        if not 0 < weight <= 100:
            raise UnprocessableError("file weights must be in (0, 100]", param="training_files")
    if asked.suffix is not None and not _suffix_ok(asked.suffix):
        raise InvalidRequestError("suffix: up to 40 letters, digits, '-' and '_'", param="suffix")
    resolve = {
        "supervised": resolve_hyperparameters,
        "reinforcement": resolve_reinforcement,
        "evaluation": resolve_evaluation,
    }[asked.method]
    resolved = resolve(asked, samples=samples, context_length=base.context_length, limits=limits)
    if start_from is not None:
        resolved["start_from"] = start_from
    job_id = new_id("ftjob")
    kek = await files.organisation_kek(
        session, master_key=master_key, org_id=principal.org_id, create=True
    )
    job = FineTuningJobRow(
        id=job_id,
        org_id=principal.org_id,
        project_id=project_id,
        key_id=principal.key_id,
        shape=asked.shape,
        method=asked.method,
        base_model_id=base.id,
        base_model=asked.model,
        training_files=[{"file_id": f, "weight": w} for f, w in asked.training_files],
        validation_file_id=asked.validation_file,
        hyperparameters=dict(asked.hyperparameters or {}),
        resolved=resolved,
        suffix=asked.suffix,
        seed=resolved["seed"],
        metadata_=asked.metadata,
        jurisdictions=list(asked.jurisdictions) if asked.jurisdictions else None,
        cpus=limits.cpus,
        gpus=0,
        status="validating_files",
        status_reason="",
        wanted="run",
        auto_start=asked.auto_start,
        wrapped_key=wrap(kek, os.urandom(32), job_id).hex(),
        total_steps=resolved["max_steps"],
        result_files=[],
        created_at=utcnow(),
    )
    session.add(job)
    await session.flush()
    await add_event(session, job, "Validating training file")
    policy = await job_policy(session, job=job)
    for row in every:
        await _check_residency(session, row, policy)
    if start_from is not None:
        reason = await datacenters.exclusion_at(
            session, policy=policy, datacenter_id=start_from["datacenter"]
        )
        if reason is not None:
            raise PolicyRefusedError(
                f"The adapter of {start_from['model']} is stored in {start_from['datacenter']}, "
                f"which the policy in force for this job does not allow ({reason}).",
                param="model",
            )
    job.status = "queued" if asked.auto_start else "validated"
    await add_event(
        session,
        job,
        f"Files validated: {samples} samples, {resolved['max_steps']} steps; "
        + ("moving job to queued state" if asked.auto_start else "waiting to be started"),
    )
    await audit.record(
        session,
        actor=audit.actor_of(principal),
        action="fine_tuning.create",
        org_id=job.org_id,
        target_type="fine_tuning_job",
        target_id=job.id,
        details={"model": asked.model, "files": [r.id for r in every], **resolved},
    )
    return job


async def _start_from(session: AsyncSession, model: ModelRow) -> dict[str, Any]:
    """Where a fine-tuned model's trainable adapter is: the job that made it."""
    lineage = model.lineage or {}
    parent = await session.get(FineTuningJobRow, lineage.get("job_id") or "")
    if parent is None or parent.org_id != model.owner_org_id or not parent.store_uri:
        raise InvalidRequestError(
            f"The model '{model.name}' has no trainable adapter to carry on from.",
            param="model",
        )
    return {
        "model": model.name,
        "model_id": model.id,
        "job_id": parent.id,
        "peft_sha256": (lineage.get("adapter") or {}).get("peft_sha256"),
        "datacenter": parent.datacenter_id or "",
    }


def job_data_key(job: FineTuningJobRow, kek: bytes) -> bytes:
    return unwrap(kek, bytes.fromhex(job.wrapped_key), job.id)


async def _artifact(session: AsyncSession, model: ModelRow) -> ModelArtifactRow | None:
    query = select(ModelArtifactRow).where(ModelArtifactRow.model_id == model.id)
    artifact = (await session.execute(query)).scalars().first()
    if artifact is None or artifact.format not in TRAINABLE_FORMATS:
        return None
    return artifact


async def _fine_tune_file(
    session: AsyncSession,
    principal: Principal,
    file_id: str,
    param: str,
    purposes: tuple[str, ...] = ("fine-tune",),
) -> FileRow:
    try:
        row = await files.get_file(session, principal=principal, file_id=file_id)
    except NotFoundError:
        raise NotFoundError(f"No such file: {file_id}", param=param) from None
    if row.purpose not in purposes:
        raise InvalidRequestError(
            f"File {file_id} was uploaded with purpose {row.purpose!r}, not "
            + " or ".join(repr(p) for p in purposes)
            + ".",
            param=param,
        )
    if row.status != "processed":
        raise InvalidRequestError(f"File {file_id} cannot be read ({row.status}).", param=param)
    return row


async def _check_residency(session: AsyncSession, row: FileRow, policy: Policy) -> None:
    reason = await datacenters.exclusion_at(session, policy=policy, datacenter_id=row.datacenter_id)
    if reason is not None:
        raise PolicyRefusedError(
            f"File {row.id} is stored in {row.datacenter_id}, which the policy in force for "
            f"this job does not allow ({reason}); nothing was started.",
            param="training_file",
        )


def _suffix_ok(suffix: str) -> bool:
    return 0 < len(suffix) <= 40 and all(c.isalnum() or c in "-_" for c in suffix)


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
