from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query

from souverain.core.schemas.usage import UsageGroup, UsageRecord, UsageReport
from souverain.gateway.deps import PrincipalDep, SessionDep
from souverain.services import usage

router = APIRouter(prefix="/api/usage", tags=["usage"])


@router.get("", response_model=UsageReport)
async def get_usage(
    principal: PrincipalDep,
    session: SessionDep,
    org: str | None = Query(default=None, max_length=64),
    since: datetime | None = Query(default=None, alias="from"),
    until: datetime | None = Query(default=None, alias="to"),
    group_by: str = Query(default="model", pattern="^(day|model|project|key|datacenter|status)$"),
    limit: int = Query(default=100, ge=0, le=10_000),
) -> UsageReport:
    """Requests and tokens, grouped, plus the latest records. Members see their own usage;
    admins and auditors see their whole organisation."""
    groups = await usage.aggregate(
        session, principal=principal, org_ref=org, since=since, until=until, group_by=group_by
    )
    records = await usage.list_records(
        session, principal=principal, org_ref=org, since=since, until=until, limit=limit
    )
    return UsageReport(
        group_by=group_by,
        groups=[
            UsageGroup(key=k, requests=r, prompt_tokens=p, completion_tokens=c)
            for k, r, p, c in groups
        ],
        records=[UsageRecord.model_validate(r) for r in records],
    )
