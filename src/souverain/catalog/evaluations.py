"""A model's evaluations: the results of the evaluation jobs an organisation ran on it,
shown in its model card and listed by the API."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import Holding, check_scope, reach
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.db.jobs import FineTuningEventRow, FineTuningJobRow
from souverain.db.tables import ModelRow
from souverain.db.visibility import visible


async def evaluations_of(
    session: AsyncSession, *, principal: Principal, model: ModelRow, limit: int = 50
) -> list[tuple[FineTuningJobRow, dict[str, Any] | None]]:
    """The evaluation jobs of `model` the caller may see in its organisation (its own,
    or all of them for its managers), newest first, each with its result (None until it
    has one)."""
    check_scope(principal, Scope.READ)
    if principal.org_id is None:
        return []  # an operator reads evaluations in the jobs, not as the model's owner
    query = (
        select(FineTuningJobRow)
        .where(
            FineTuningJobRow.org_id == principal.org_id,
            FineTuningJobRow.method == "evaluation",
            visible(
                reach(principal, Holding.WORK),
                org=FineTuningJobRow.org_id,
                project=FineTuningJobRow.project_id,
                key=FineTuningJobRow.key_id,
            ),
        )
        .order_by(FineTuningJobRow.created_at.desc())
    )
    found = []
    for job in (await session.execute(query)).scalars():
        start = job.resolved.get("start_from") or {}
        evaluated = start.get("model_id") or job.base_model_id
        if evaluated != model.id:
            continue
        found.append((job, await evaluation_result(session, job.id)))
        if len(found) >= limit:
            break
    return found


async def evaluation_result(session: AsyncSession, job_id: str) -> dict[str, Any] | None:
    query = (
        select(FineTuningEventRow)
        .where(FineTuningEventRow.job_id == job_id)
        .order_by(FineTuningEventRow.seq.desc())
    )
    for event in (await session.execute(query)).scalars():
        if event.data and "evaluation" in event.data:
            return dict(event.data["evaluation"])
    return None
