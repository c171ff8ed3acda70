from __future__ import annotations

import csv
import io
from datetime import datetime

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response

from souverain.core.schemas.usage import StartupSums, UsageGroup, UsageRecord, UsageReport
from souverain.metering import usage_reports
from souverain.metering.usage_reports import UsageFilter
from souverain.server.deps import PrincipalDep, SessionDep

router = APIRouter(prefix="/api/usage", tags=["usage"])

CSV_COLUMNS = [
    "id", "created_at", "org_id", "project_id", "key_id", "endpoint", "model", "stream", "status",
    "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "datacenter_id", "country",
    "cost", "currency", "energy_j", "energy_estimate_j", "co2e_g", "energy_source",
    "prompt_language", "reasoning_language", "answer_language", "languages_agree",
]  # fmt: skip


@router.get("", response_model=None)
async def get_usage(
    principal: PrincipalDep,
    session: SessionDep,
    org: str | None = Query(default=None, max_length=64),
    since: datetime | None = Query(default=None, alias="from"),
    until: datetime | None = Query(default=None, alias="to"),
    model: str | None = Query(default=None, max_length=128),
    project: str | None = Query(default=None, max_length=32, description="Project id."),
    key: str | None = Query(default=None, max_length=16, description="Key id."),
    group_by: str = Query(
        default="model", pattern="^(day|model|project|key|datacenter|status|language)$"
    ),
    limit: int = Query(default=100, ge=0, le=100_000),
    format: str = Query(default="json", pattern="^(json|csv)$"),
) -> UsageReport | Response:
    """Requests, tokens, cost, energy and CO2e grouped by day, model, project, key,
    datacenter, status or language (reasoning requests per model and prompt language, with
    how many had prompt, thinking and answer in one language), plus the latest records. `format=csv` exports the records.
    Members see their own usage; admins and auditors see their whole organisation, and
    with it `startup`: the energy, CO2e and CPU seconds of its own deployments' replica
    starts (placement to first ready) in the range, which no request's figures include."""
    where = UsageFilter(
        org_ref=org, since=since, until=until, model=model, project=project, key=key
    )
    records = await usage_reports.list_records(
        session, principal=principal, where=where, limit=limit
    )
    if format == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for record in records:
            writer.writerow([_cell(getattr(record, column)) for column in CSV_COLUMNS])
        return PlainTextResponse(out.getvalue(), media_type="text/csv")
    groups = await usage_reports.aggregate(
        session, principal=principal, where=where, group_by=group_by
    )
    starts = await usage_reports.startups_of(session, principal=principal, where=where)
    return UsageReport(
        group_by=group_by,
        groups=[UsageGroup.model_validate(group) for group in groups],
        records=[UsageRecord.model_validate(r) for r in records],
        startup=StartupSums.model_validate(starts) if starts is not None else None,
    )


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
