"""/api/models/{model}/evaluations: a model evaluated on a held-out file, as a job.

An evaluation runs like a fine-tuning job (the same placement, policy and budget) but
trains nothing; its result is listed with the model and shown on its card.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from souverain.catalog import evaluations, models
from souverain.core.schemas.fine_tuning import EvaluationList, EvaluationObject, JobError
from souverain.db.jobs import FineTuningJobRow
from souverain.jobs.fine_tuning import creation
from souverain.server.deps import PrincipalDep, SessionDep, StateDep
from souverain.server.fine_tuning_requests import EvaluationRequest, asked_evaluation, limits_of
from souverain.server.routers.fine_tuning import extras_of

router = APIRouter(prefix="/api/models", tags=["models"])


def evaluation_of(job: FineTuningJobRow, result: dict[str, Any] | None) -> EvaluationObject:
    start = job.resolved.get("start_from") or {}
    return EvaluationObject(
        id=job.id,
        model=start.get("model") or job.base_model,
        file_id=job.training_files[0]["file_id"],
        grader=job.resolved.get("grader"),
        max_tokens=job.resolved.get("max_tokens"),
        status=job.status,
        created_at=int(job.created_at.timestamp()),
        finished_at=int(job.finished_at.timestamp()) if job.finished_at else None,
        error=JobError.model_validate(job.error) if job.error else None,
        result=result,
        souverain=extras_of(job),
    )


@router.post(
    "/{model:path}/evaluations", status_code=201, summary="Evaluate a model on a held-out file"
)
async def create_evaluation(
    model: str,
    body: EvaluationRequest,
    principal: PrincipalDep,
    session: SessionDep,
    state: StateDep,
) -> EvaluationObject:
    """Each prompt of the file answered greedily once and graded (by default the magistral
    grader): pass@1, format rate, mean reward and language consistency, overall and per
    language. Runs as a job on the organisation's fleet, where its policy allows; the
    result is listed with the model and shown on its card."""
    job = await creation.create_job(
        session, principal=principal, asked=asked_evaluation(model, body),
        limits=limits_of(state.settings), master_key=state.master_key,
        project_id=state.routes.project_of(principal),
    )  # fmt: skip
    await session.commit()
    return evaluation_of(job, None)


@router.get("/{model:path}/evaluations", summary="A model's evaluations")
async def list_evaluations(
    model: str, principal: PrincipalDep, session: SessionDep
) -> EvaluationList:
    """The evaluations of this model you may see (yours; all of your organisation's, for
    its managers), newest first, with their results."""
    row = await models.get_model(session, principal=principal, ref=model)
    found = await evaluations.evaluations_of(session, principal=principal, model=row)
    return EvaluationList(data=[evaluation_of(job, result) for job, result in found])
