"""/v1/fine_tuning/jobs in OpenAI's and Mistral's shapes: one implementation.

The shape is recognised from the body, not guessed: OpenAI's has `training_file` (and
`method`), Mistral's has `training_files`; a body with both, or neither, is refused.
Jobs created in one shape are shown in that shape.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import Field, ValidationError

from souverain.catalog import evaluations, models
from souverain.core.errors import InvalidRequestError
from souverain.core.schemas.common import Metadata, StrictRequest
from souverain.db.jobs import FineTuningCheckpointRow, FineTuningEventRow, FineTuningJobRow
from souverain.gateway.errors import validation_message
from souverain.jobs.fine_tuning import recipe
from souverain.jobs.fine_tuning import service as fine_tuning
from souverain.server.deps import PrincipalDep, SessionDep, StateDep

router = APIRouter(tags=["fine-tuning"])

Auto = Literal["auto"]
MISTRAL_STATUS = {
    "validating_files": "VALIDATING", "validated": "VALIDATED", "queued": "QUEUED",
    "running": "RUNNING", "paused": "QUEUED", "succeeded": "SUCCESS", "failed": "FAILED",
    "cancelled": "CANCELLED",
}  # fmt: skip


class SupervisedHyperparameters(StrictRequest):
    n_epochs: int | Auto | None = None
    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None


class Supervised(StrictRequest):
    hyperparameters: SupervisedHyperparameters | None = None


class ReinforcementHyperparameters(StrictRequest):
    """OpenAI's reinforcement hyperparameters, and souverain's GRPO ones (training/grpo.py);
    bounds are checked by the fine-tuning service."""

    n_epochs: int | Auto | None = None
    batch_size: int | Auto | None = None
    learning_rate_multiplier: float | Auto | None = None
    eval_samples: int | Auto | None = None
    eval_interval: int | Auto | None = None  # accepted; evaluation runs before and after
    compute_multiplier: float | Auto | None = None  # accepted; no effect
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None  # accepted
    training_steps: int | None = None
    seq_len: int | None = None
    group_size: int | None = None
    max_tokens: int | None = None
    length_cache: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    epsilon_low: float | None = None
    epsilon_high: float | None = None
    beta: float | None = None
    minibatches: int | None = None


class Reinforcement(StrictRequest):
    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparameters | None = None


class Method(StrictRequest):
    type: Literal["supervised", "reinforcement"]
    supervised: Supervised | None = None
    reinforcement: Reinforcement | None = None


class OpenAIJobRequest(StrictRequest):
    model: str = Field(max_length=128)
    training_file: str = Field(max_length=64)
    validation_file: str | None = Field(default=None, max_length=64)
    suffix: str | None = Field(default=None, max_length=64)
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    metadata: Metadata = None
    method: Method | None = None
    hyperparameters: SupervisedHyperparameters | None = None  # the older, top-level form
    integrations: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    jurisdictions: list[str] | None = Field(default=None, max_length=32)  # souverain


class MistralFile(StrictRequest):
    file_id: str = Field(max_length=64)
    weight: float = 1.0


class MistralHyperparameters(StrictRequest):
    training_steps: int | None = Field(default=None, ge=1)
    learning_rate: float | None = Field(default=None, gt=0, le=1)
    epochs: float | None = Field(default=None, gt=0)
    seq_len: int | None = Field(default=None, ge=16)
    warmup_fraction: float | None = Field(default=None, ge=0, le=1)
    weight_decay: float | None = Field(default=None, ge=0, le=1)
    fim_ratio: float | None = None


class MistralJobRequest(StrictRequest):
    model: str = Field(max_length=128)
    training_files: list[MistralFile] = Field(min_length=1, max_length=32)
    validation_files: list[str] | None = Field(default=None, max_length=1)
    hyperparameters: MistralHyperparameters
    suffix: str | None = Field(default=None, max_length=64)
    auto_start: bool = True
    job_type: Literal["completion"] | None = None
    integrations: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    repositories: list[dict[str, Any]] | None = Field(default=None, max_length=0)
    classifier_targets: None = None
    invalid_sample_skip_percentage: float | None = Field(default=None, ge=0, le=0)
    jurisdictions: list[str] | None = Field(default=None, max_length=32)  # souverain


def _auto(value: Any) -> Any:
    return None if value == "auto" else value


def _asked_reinforcement(body: OpenAIJobRequest) -> recipe.Asked:
    assert body.method is not None
    if body.method.reinforcement is None:
        raise InvalidRequestError(
            "method.reinforcement (with its grader) is needed for a reinforcement job.",
            param="method.reinforcement",
        )
    hp = body.method.reinforcement.hyperparameters or ReinforcementHyperparameters()
    own = {
        name: value
        for name, value in hp.model_dump(exclude_none=True).items()
        if name in recipe.RL_DEFAULTS and value != "auto"
    }
    return recipe.Asked(
        shape="openai", model=body.model, training_files=[(body.training_file, 1.0)],
        validation_file=body.validation_file, n_epochs=_auto(hp.n_epochs),
        batch_size=_auto(hp.batch_size), learning_rate_multiplier=_auto(hp.learning_rate_multiplier),
        training_steps=hp.training_steps, seq_len=hp.seq_len,
        suffix=body.suffix, seed=body.seed, metadata=body.metadata,
        jurisdictions=body.jurisdictions, method="reinforcement",
        grader=body.method.reinforcement.grader, reinforcement=own,
        hyperparameters=hp.model_dump(exclude_none=True),
    )  # fmt: skip


def _asked_openai(body: OpenAIJobRequest) -> recipe.Asked:
    if body.method is not None and body.method.type == "reinforcement":
        return _asked_reinforcement(body)
    hp = body.hyperparameters
    if body.method is not None and body.method.supervised is not None:
        hp = body.method.supervised.hyperparameters or hp
    hp = hp or SupervisedHyperparameters()
    return recipe.Asked(
        shape="openai", model=body.model, training_files=[(body.training_file, 1.0)],
        validation_file=body.validation_file, n_epochs=_auto(hp.n_epochs),
        batch_size=_auto(hp.batch_size), learning_rate_multiplier=_auto(hp.learning_rate_multiplier),
        suffix=body.suffix, seed=body.seed, metadata=body.metadata,
        jurisdictions=body.jurisdictions,
        hyperparameters={"n_epochs": hp.n_epochs or "auto", "batch_size": hp.batch_size or "auto",
                         "learning_rate_multiplier": hp.learning_rate_multiplier or "auto"},
    )  # fmt: skip


def _asked_mistral(body: MistralJobRequest) -> recipe.Asked:
    hp = body.hyperparameters
    if hp.training_steps is not None and hp.epochs is not None:
        raise InvalidRequestError(
            "Give training_steps or epochs, not both.", param="hyperparameters"
        )
    epochs = None if hp.epochs is None else max(1, round(hp.epochs))
    return recipe.Asked(
        shape="mistral", model=body.model,
        training_files=[(f.file_id, f.weight) for f in body.training_files],
        validation_file=body.validation_files[0] if body.validation_files else None, n_epochs=epochs,
        learning_rate=hp.learning_rate if hp.learning_rate is not None else 1e-4,
        training_steps=hp.training_steps, seq_len=hp.seq_len,
        warmup_fraction=hp.warmup_fraction if hp.warmup_fraction is not None else 0.05,
        weight_decay=hp.weight_decay if hp.weight_decay is not None else 0.1,
        suffix=body.suffix, auto_start=body.auto_start, jurisdictions=body.jurisdictions,
        hyperparameters=hp.model_dump(exclude_none=True),
    )  # fmt: skip


def _ts(moment: Any) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def openai_job(job: FineTuningJobRow) -> dict[str, Any]:
    hp = {
        "n_epochs": job.resolved.get("n_epochs"),
        "batch_size": job.resolved.get("batch_size"),
        "learning_rate_multiplier": round(
            job.resolved.get("learning_rate", 0)
            / (
                recipe.BASE_RL_LEARNING_RATE
                if job.method == "reinforcement"
                else recipe.BASE_LEARNING_RATE
            ),
            6,
        ),
    }
    return {
        "id": job.id,
        "object": "fine_tuning.job",
        "created_at": _ts(job.created_at),
        "error": job.error,
        "fine_tuned_model": job.fine_tuned_model,
        "finished_at": _ts(job.finished_at),
        "hyperparameters": hp,
        "model": job.base_model,
        "organization_id": job.org_id,
        "result_files": list(job.result_files),
        "seed": job.seed,
        "status": "queued" if job.status == "validated" else job.status,
        "trained_tokens": job.trained_tokens if job.status == "succeeded" else None,
        "training_file": job.training_files[0]["file_id"],
        "validation_file": job.validation_file_id,
        "estimated_finish": _estimated_finish(job),
        "integrations": [],
        "metadata": job.metadata_,
        "method": _method(job, hp),
        "souverain": _extras(job),
    }


def _method(job: FineTuningJobRow, hp: dict[str, Any]) -> dict[str, Any]:
    if job.method == "evaluation":  # souverain: an evaluation job, listed with its model
        return {"type": "evaluation", "evaluation": {"grader": job.resolved.get("grader")}}
    if job.method != "reinforcement":
        return {"type": "supervised", "supervised": {"hyperparameters": hp}}
    resolved = job.resolved
    own = {name: resolved.get(name) for name in recipe.RL_DEFAULTS}
    return {
        "type": "reinforcement",
        "reinforcement": {
            "grader": resolved.get("grader"),
            "hyperparameters": hp | own | {"training_steps": resolved.get("max_steps")},
        },
    }


def mistral_job(job: FineTuningJobRow, *, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "id": job.id,
        "object": "job",
        "auto_start": job.auto_start,
        "model": job.base_model,
        "status": MISTRAL_STATUS[job.status],
        "job_type": "completion",
        "created_at": _ts(job.created_at),
        "modified_at": _ts(job.finished_at or job.heartbeat_at or job.created_at),
        "training_files": [f["file_id"] for f in job.training_files],
        "validation_files": [job.validation_file_id] if job.validation_file_id else [],
        "hyperparameters": {
            "training_steps": job.resolved.get("max_steps"),
            "learning_rate": job.resolved.get("learning_rate"),
            "weight_decay": job.resolved.get("weight_decay"),
            "warmup_fraction": job.resolved.get("warmup_fraction"),
            "epochs": job.resolved.get("n_epochs"),
            "seq_len": job.resolved.get("seq_len"),
        },
        "fine_tuned_model": job.fine_tuned_model,
        "suffix": job.suffix,
        "integrations": [],
        "trained_tokens": job.trained_tokens,
        "metadata": {
            "expected_duration_seconds": None,
            "cost": None,
            "cost_currency": None,
            "train_tokens_per_step": None,
            "train_tokens": job.trained_tokens,
            "data_tokens": None,
            "estimated_start_time": None,
        },
        "repositories": [],
        **(details or {}),
        "souverain": _extras(job),
    }


def _extras(job: FineTuningJobRow) -> dict[str, Any]:
    return {
        "state": job.status,  # the one status set behind both shapes
        "status_reason": job.status_reason,
        "wanted": job.wanted,
        "step": job.step,
        "total_steps": job.total_steps,
        "tokens": job.trained_tokens,
        "tokens_per_s": job.tokens_per_s,
        "train_loss": job.train_loss,
        "datacenter": job.datacenter_id,
        "attempt": job.attempt,
        "cpu_seconds": round(job.cpu_seconds + job.live_cpu_seconds, 2),
        "energy_j": round(job.energy_j + job.live_energy_j, 2),
        "energy_source": job.energy_source,
        "model_id": job.result_model_id,
    }


def _estimated_finish(job: FineTuningJobRow) -> int | None:
    if job.status != "running" or not job.step or not job.started_at or not job.heartbeat_at:
        return None
    elapsed = (job.heartbeat_at - job.started_at).total_seconds()
    remaining = elapsed / job.step * max(0, job.total_steps - job.step)
    return int(job.heartbeat_at.timestamp() + remaining)


def openai_event(event: FineTuningEventRow) -> dict[str, Any]:
    return {
        "id": event.id,
        "object": "fine_tuning.job.event",
        "created_at": _ts(event.created_at),
        "level": event.level,
        "message": event.message,
        "data": event.data,
        "type": event.type,
    }


def openai_checkpoint(job: FineTuningJobRow, row: FineTuningCheckpointRow) -> dict[str, Any]:
    metrics = {k: v for k, v in (row.metrics or {}).items() if v is not None}
    return {
        "id": row.id,
        "object": "fine_tuning.job.checkpoint",
        "created_at": _ts(row.created_at),
        "fine_tuned_model_checkpoint": fine_tuning.checkpoint_model_name(job, row.step),
        "fine_tuning_job_id": job.id,
        "metrics": {"step": float(row.step), **metrics},
        "step_number": row.step,
    }


def _limits(state: Any) -> recipe.Limits:
    s = state.settings
    return recipe.Limits(
        max_steps=s.finetune_max_steps, max_epochs=s.finetune_max_epochs,
        max_seq_len=s.finetune_max_seq_len, max_dataset_bytes=s.finetune_max_dataset_bytes,
        max_samples=s.finetune_max_samples, cpus=s.finetune_cpus,
        max_active_jobs=s.finetune_max_active_jobs,
    )  # fmt: skip


@router.post("/v1/fine_tuning/jobs", summary="Create a fine-tuning job")
async def create_job(
    request: Request, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    """OpenAI's body (`training_file`, `method`) or Mistral's (`training_files`,
    `hyperparameters.training_steps`…): the same job either way."""
    try:
        raw = await request.json()
    except ValueError:
        raise InvalidRequestError("The body is not valid JSON.") from None
    if not isinstance(raw, dict) or ("training_file" in raw) == ("training_files" in raw):
        raise InvalidRequestError(
            "Give training_file (OpenAI's shape) or training_files (Mistral's), not both.",
            param="training_file",
        )
    try:
        if "training_file" in raw:
            asked = _asked_openai(OpenAIJobRequest.model_validate(raw))
        else:
            asked = _asked_mistral(MistralJobRequest.model_validate(raw))
    except ValidationError as error:
        message, param = validation_message(error.errors())
        raise InvalidRequestError(message, param=param) from None
    job = await fine_tuning.create_job(
        session, principal=principal, asked=asked, limits=_limits(state),
        master_key=state.master_key, project_id=state.routes.project_of(principal),
    )  # fmt: skip
    await session.commit()
    return openai_job(job) if job.shape == "openai" else mistral_job(job)


def _shown(job: FineTuningJobRow) -> dict[str, Any]:
    return openai_job(job) if job.shape == "openai" else mistral_job(job)


@router.get("/v1/fine_tuning/jobs", summary="List fine-tuning jobs")
async def list_jobs(
    principal: PrincipalDep,
    session: SessionDep,
    limit: int = Query(default=20, ge=1, le=100),
    after: str | None = Query(default=None, max_length=64),
    page: int | None = Query(default=None, ge=0, le=0),
    page_size: int | None = Query(default=None, ge=1, le=100),
) -> dict[str, Any]:
    """OpenAI's cursor (`after`, `limit`) or Mistral's page (`page_size`)."""
    if page is not None or page_size is not None:
        rows = await fine_tuning.list_jobs(session, principal=principal, limit=page_size or 100,
                                        after=None)  # fmt: skip
        return {"object": "list", "data": [mistral_job(r) for r in rows], "total": len(rows)}
    rows = await fine_tuning.list_jobs(session, principal=principal, limit=limit, after=after)
    return {"object": "list", "data": [openai_job(r) for r in rows], "has_more": len(rows) == limit}


@router.get("/v1/fine_tuning/jobs/{job_id}", summary="Retrieve a fine-tuning job")
async def retrieve_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    job = await fine_tuning.get_job(session, principal=principal, job_id=job_id)
    if job.shape == "openai":
        return openai_job(job)
    events = await fine_tuning.events(session, principal=principal, job_id=job_id, limit=100,
                                   after=None)  # fmt: skip
    checkpoints = await fine_tuning.checkpoints(session, principal=principal, job_id=job_id)
    return mistral_job(job, details={
        "events": [{"name": e.message, "data": e.data, "created_at": _ts(e.created_at)}
                   for e in reversed(events)],
        "checkpoints": [{"metrics": {"train_loss": c.metrics.get("train_loss"),
                                     "valid_loss": c.metrics.get("valid_loss")},
                         "step_number": c.step, "created_at": _ts(c.created_at)}
                        for c in checkpoints],
    })  # fmt: skip


async def _change(job_id: str, action: str, principal: Any, session: Any) -> dict[str, Any]:
    job = await fine_tuning.change(session, principal=principal, job_id=job_id, action=action)
    await session.commit()
    return _shown(job)


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel", summary="Cancel a fine-tuning job")
async def cancel_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    return await _change(job_id, "cancel", principal, session)


@router.post("/v1/fine_tuning/jobs/{job_id}/pause", summary="Pause a fine-tuning job")
async def pause_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    """It saves a checkpoint and stops; `resume` carries on from there."""
    return await _change(job_id, "pause", principal, session)


@router.post("/v1/fine_tuning/jobs/{job_id}/resume", summary="Resume a paused job")
async def resume_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    return await _change(job_id, "resume", principal, session)


@router.post("/v1/fine_tuning/jobs/{job_id}/start", summary="Start a validated job (Mistral)")
async def start_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    return await _change(job_id, "start", principal, session)


@router.get("/v1/fine_tuning/jobs/{job_id}/events", summary="List a job's events")
async def list_events(
    job_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    limit: int = Query(default=20, ge=1, le=1000),
    after: str | None = Query(default=None, max_length=64),
) -> dict[str, Any]:
    rows = await fine_tuning.events(session, principal=principal, job_id=job_id, limit=limit,
                                 after=after)  # fmt: skip
    return {
        "object": "list",
        "data": [openai_event(r) for r in rows],
        "has_more": len(rows) == limit,
    }


@router.get("/v1/fine_tuning/jobs/{job_id}/checkpoints", summary="List a job's checkpoints")
async def list_checkpoints(
    job_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    limit: int = Query(default=10, ge=1, le=100),
    after: str | None = Query(default=None, max_length=64),
) -> dict[str, Any]:
    job = await fine_tuning.get_job(session, principal=principal, job_id=job_id)
    rows = await fine_tuning.checkpoints(session, principal=principal, job_id=job_id, limit=100)
    if after is not None:
        ids = [r.id for r in rows]
        rows = rows[ids.index(after) + 1 :] if after in ids else []
    data = [openai_checkpoint(job, r) for r in rows[:limit]]
    return {"object": "list", "data": data, "has_more": len(rows) > limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}  # fmt: skip


# -- evaluations: any model, on a held-out file -----------------------------------------


class EvaluationRequest(StrictRequest):
    file_id: str = Field(max_length=64)
    grader: dict[str, Any] = Field(default_factory=lambda: {"type": "magistral"})
    max_tokens: int | None = None
    samples: int | None = None
    seq_len: int | None = None
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    jurisdictions: list[str] | None = Field(default=None, max_length=32)


def evaluation_view(job: FineTuningJobRow, result: dict[str, Any] | None) -> dict[str, Any]:
    start = job.resolved.get("start_from") or {}
    return {
        "id": job.id,
        "object": "evaluation",
        "model": start.get("model") or job.base_model,
        "file_id": job.training_files[0]["file_id"],
        "grader": job.resolved.get("grader"),
        "max_tokens": job.resolved.get("max_tokens"),
        "status": job.status,
        "created_at": _ts(job.created_at),
        "finished_at": _ts(job.finished_at),
        "error": job.error,
        "result": result,
        "souverain": _extras(job),
    }


@router.post("/api/models/{model:path}/evaluations", status_code=201,
             summary="Evaluate a model on a held-out file")  # fmt: skip
async def create_evaluation(
    model: str, body: EvaluationRequest, principal: PrincipalDep, session: SessionDep,
    state: StateDep,
) -> dict[str, Any]:  # fmt: skip
    """Each prompt of the file answered greedily once and graded (by default the magistral
    grader): pass@1, format rate, mean reward and language consistency, overall and per
    language. Runs as a job on the organisation's fleet, where its policy allows; the
    result is listed with the model and shown on its card."""
    own = {name: value for name, value in (("max_tokens", body.max_tokens),
                                           ("eval_samples", body.samples)) if value is not None}  # fmt: skip
    asked = recipe.Asked(
        shape="openai", model=model, training_files=[(body.file_id, 1.0)],
        validation_file=body.file_id, seq_len=body.seq_len, seed=body.seed,
        jurisdictions=body.jurisdictions, method="evaluation", grader=body.grader,
        reinforcement=own, hyperparameters=body.model_dump(exclude_none=True),
    )  # fmt: skip
    job = await fine_tuning.create_job(
        session, principal=principal, asked=asked, limits=_limits(state),
        master_key=state.master_key, project_id=state.routes.project_of(principal),
    )  # fmt: skip
    await session.commit()
    return evaluation_view(job, None)


@router.get("/api/models/{model:path}/evaluations", summary="A model's evaluations")
async def list_evaluations(
    model: str, principal: PrincipalDep, session: SessionDep
) -> dict[str, Any]:
    """Your organisation's evaluations of this model, newest first, with their results."""
    row = await models.get_model(session, principal=principal, ref=model)
    found = await evaluations.evaluations_of(session, principal=principal, model=row)
    return {"object": "list", "data": [evaluation_view(job, result) for job, result in found]}
