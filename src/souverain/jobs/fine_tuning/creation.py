"""Creating a fine-tuning job: what a tenant asks for, checked before any compute is used.

A job is created `validating_files`: its files are the tenant's own (404 otherwise),
uploaded for `fine-tune`, within the dataset limits, stored where the policy in force
allows; its hyperparameters are resolved ("auto" included) and bounded by the settings;
at most `max_active_jobs` of an organisation's jobs are active at once (counted under a
lock on the organisation's row). Then it is `queued` (or, in Mistral's shape with
`auto_start: false`, `validated` until started).
"""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog import models
from souverain.core.access import check_scope
from souverain.core.errors import (
    GoneError,
    InvalidRequestError,
    NotFoundError,
    PolicyRefusedError,
    RateLimitedError,
    UnprocessableError,
    quoted,
)
from souverain.core.ids import new_id
from souverain.core.policy import Policy, check_may_keep
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.db.jobs import FileRow, FineTuningJobRow
from souverain.db.tables import ModelAdapterRow, ModelArtifactRow, ModelRow, OrganisationRow, utcnow
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
from souverain.jobs.fine_tuning.service import ACTIVE, add_event, job_policy
from souverain.sovereignty import policies
from souverain.storage.crypto import wrap

TRAINABLE_FORMATS = frozenset({"gguf", "safetensors", "hf"})


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
    await _check_room(session, org_id=principal.org_id, limits=limits)
    base, start_from = await _base_of(session, principal, asked)
    train_rows, every = await _data_of(session, principal, asked, limits)
    samples = sum(row.num_lines or 0 for row in train_rows)
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
    job = _job_row(job_id, principal, asked, base=base, resolved=resolved, limits=limits,
                   project_id=project_id, wrapped_key=wrap(kek, os.urandom(32), job_id).hex())  # fmt: skip
    session.add(job)
    await session.flush()
    await _validate(session, job, principal, asked, every=every, samples=samples)
    return job


async def _check_room(session: AsyncSession, *, org_id: str, limits: Limits) -> None:
    """Refuses a job beyond the organisation's active jobs (counted under a lock)."""
    active = await _active_jobs_locked(session, org_id=org_id)
    if active >= limits.max_active_jobs:
        raise RateLimitedError(
            f"Your organisation has {active} fine-tuning jobs that have not ended; at most "
            f"{limits.max_active_jobs} at once. Cancel one or wait for one to finish.",
            retry_after_s=60,
        )


def _job_row(
    job_id: str,
    principal: Principal,
    asked: Asked,
    *,
    base: ModelRow,
    resolved: dict[str, Any],
    limits: Limits,
    project_id: str | None,
    wrapped_key: str,
) -> FineTuningJobRow:
    """The new job, validating its files."""
    org_id = principal.org_id
    assert org_id is not None  # checked first
    return FineTuningJobRow(
        id=job_id,
        org_id=org_id,
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
        wrapped_key=wrapped_key,
        total_steps=resolved["max_steps"],
        result_files=[],
        created_at=utcnow(),
    )


async def _base_of(
    session: AsyncSession, principal: Principal, asked: Asked
) -> tuple[ModelRow, dict[str, Any] | None]:
    """The base model the job trains, and where a reinforcement job carries on from when it
    was asked for a fine-tuned model of the caller's organisation (its adapter)."""
    base = await models.find_model(session, principal=principal, ref=asked.model)
    if base is None:
        raise NotFoundError(f"The model {quoted(asked.model)} does not exist", param="model")
    start_from: dict[str, Any] | None = None
    if base.base_model_id is not None:
        if asked.method == "supervised":
            raise InvalidRequestError(
                "Fine-tune the base model: adapters of fine-tuned models cannot be stacked "
                "yet (a reinforcement job can carry on from a fine-tuned model's adapter).",
                param="model",
            )
        if base.owner_org_id != principal.org_id:
            raise NotFoundError(f"The model {quoted(asked.model)} does not exist", param="model")
        if await session.get(ModelAdapterRow, base.id) is None:  # crypto-erased
            raise GoneError(
                f"The adapter of {quoted(asked.model)} was erased; it cannot be trained further.",
                param="model",
            )
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
    return base, start_from


async def _data_of(
    session: AsyncSession, principal: Principal, asked: Asked, limits: Limits
) -> tuple[list[FileRow], list[FileRow]]:
    """The training files, and every file the job reads (validation too), checked against
    the job's bounds on bytes, samples and weights."""
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
    return train_rows, every


async def _validate(
    session: AsyncSession,
    job: FineTuningJobRow,
    principal: Principal,
    asked: Asked,
    *,
    every: list[FileRow],
    samples: int,
) -> None:
    """The job's files and the adapter it carries on from, where its policy allows them:
    then queued (or validated, waiting to be started), audited."""
    resolved, start_from = job.resolved, job.resolved.get("start_from")
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
            f"this job does not allow ({reason}); nothing was started. A file is kept where "
            "its uploader's policy allows: upload it with a key of a project whose policy "
            "allows only where this job may run.",
            param="training_file",
        )


def _suffix_ok(suffix: str) -> bool:
    return 0 < len(suffix) <= 40 and all(c.isalnum() or c in "-_" for c in suffix)
