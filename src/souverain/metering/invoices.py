"""Monthly invoices: per model, requests, tokens and amount; then energy and CO2e lines.

Amounts are the sum of each request's cost at the price in force when it was admitted.
Energy and CO2e are the attributed values of the month's requests; for the organisation's
own deployments the idle energy of their replicas is a separate line.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_org, check_scope
from souverain.core.errors import InvalidRequestError
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.db.metering import EnergyIntervalRow
from souverain.db.tables import DeploymentRow, UsageRecordRow, utcnow
from souverain.metering.energy import STARTUP
from souverain.tenancy import orgs


def month_bounds(period: str) -> tuple[datetime, datetime]:
    try:
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        raise InvalidRequestError("period must look like 2026-11", param="period") from None
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


async def invoice(
    session: AsyncSession, *, principal: Principal, org_ref: str, period: str
) -> dict[str, Any]:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.READ)
    if not (principal.has(Scope.MANAGE) or principal.has(Scope.AUDIT)):
        check_scope(principal, Scope.MANAGE)
    return await invoice_of(session, org_id=org.id, org_name=org.name, period=period)


async def invoice_of(
    session: AsyncSession, *, org_id: str, org_name: str, period: str
) -> dict[str, Any]:
    """The month's invoice of an organisation (the caller checked who may read it)."""
    start, end = month_bounds(period)
    lines, total, energy_j, co2e_g, currencies = await _lines_by_model(
        session, org_id=org_id, start=start, end=end
    )
    idle_j, idle_g = await _idle_of_own_deployments(session, org_id=org_id, start=start, end=end)
    startup_j, startup_g = await _startups_of_own_deployments(
        session, org_id=org_id, start=start, end=end
    )
    return {
        "organisation": {"id": org_id, "name": org_name},
        "period": period,
        "issued_at": utcnow().isoformat(),
        "lines": lines,
        "total": round(total, 6),
        "currency": currencies.pop() if len(currencies) == 1 else ("mixed" if currencies else None),
        "energy": {
            "requests_kwh": energy_j / 3.6e6,
            "idle_kwh_own_deployments": idle_j / 3.6e6,
            "startup_kwh_own_deployments": startup_j / 3.6e6,
        },
        "co2e": {
            "requests_kg": co2e_g / 1000,
            "idle_kg_own_deployments": idle_g / 1000,
            "startup_kg_own_deployments": startup_g / 1000,
        },
    }


async def _lines_by_model(
    session: AsyncSession, *, org_id: str, start: datetime, end: datetime
) -> tuple[list[dict[str, Any]], float, float, float, set[str]]:
    """The month's settled requests per model and currency: the invoice's lines, their
    total, and the requests' energy (J) and CO2e (g)."""
    in_month = (
        UsageRecordRow.org_id == org_id,
        UsageRecordRow.created_at >= start,
        UsageRecordRow.created_at < end,
    )
    query = (
        select(
            UsageRecordRow.model,
            UsageRecordRow.currency,
            func.count(),
            func.sum(UsageRecordRow.prompt_tokens),
            func.sum(UsageRecordRow.completion_tokens),
            func.sum(UsageRecordRow.cost),
            func.sum(UsageRecordRow.energy_j),
            func.sum(UsageRecordRow.co2e_g),
        )
        .where(*in_month, UsageRecordRow.status != "open")
        .group_by(UsageRecordRow.model, UsageRecordRow.currency)
        .order_by(UsageRecordRow.model)
    )
    lines: list[dict[str, Any]] = []
    energy_j, co2e_g, total = 0.0, 0.0, 0.0
    currencies: set[str] = set()

    for model, currency, requests, prompt, completion, cost, joules, grams in (
        await session.execute(query)
    ).all():
        lines.append(
            {
                "model": model,
                "requests": int(requests),
                "input_tokens": int(prompt or 0),
                "output_tokens": int(completion or 0),
                "amount": round(float(cost or 0.0), 6),
                "currency": currency,
            }
        )
        total += float(cost or 0.0)
        energy_j += float(joules or 0.0)
        co2e_g += float(grams or 0.0)
        if currency:
            currencies.add(currency)
    return lines, total, energy_j, co2e_g, currencies


async def _idle_of_own_deployments(
    session: AsyncSession, *, org_id: str, start: datetime, end: datetime
) -> tuple[float, float]:
    own = select(DeploymentRow.id).where(DeploymentRow.org_id == org_id)
    query = select(
        func.sum(EnergyIntervalRow.idle_j),
        func.sum(
            EnergyIntervalRow.co2e_g
            * EnergyIntervalRow.idle_j
            / func.nullif(EnergyIntervalRow.energy_j, 0)
        ),
    ).where(
        EnergyIntervalRow.deployment_id.in_(own),
        EnergyIntervalRow.kind != STARTUP,  # on a line of its own
        EnergyIntervalRow.ended_at >= start,
        EnergyIntervalRow.ended_at < end,
    )
    joules, grams = (await session.execute(query)).one()
    return float(joules or 0.0), float(grams or 0.0)


async def _startups_of_own_deployments(
    session: AsyncSession, *, org_id: str, start: datetime, end: datetime
) -> tuple[float, float]:
    """The starts of the organisation's own replicas (placement to ready): its own, never
    the requests' (metering/energy.record_startup)."""
    own = select(DeploymentRow.id).where(DeploymentRow.org_id == org_id)
    query = select(func.sum(EnergyIntervalRow.energy_j), func.sum(EnergyIntervalRow.co2e_g)).where(
        EnergyIntervalRow.deployment_id.in_(own),
        EnergyIntervalRow.kind == STARTUP,
        EnergyIntervalRow.ended_at >= start,
        EnergyIntervalRow.ended_at < end,
    )
    joules, grams = (await session.execute(query)).one()
    return float(joules or 0.0), float(grams or 0.0)


def invoice_csv(document: dict[str, Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["line", "model", "requests", "input_tokens", "output_tokens", "amount", "currency"]
    )
    for line in document["lines"]:
        writer.writerow(
            [
                "usage",
                line["model"],
                line["requests"],
                line["input_tokens"],
                line["output_tokens"],
                line["amount"],
                line["currency"] or "",
            ]
        )
    writer.writerow(["total", "", "", "", "", document["total"], document["currency"] or ""])
    energy, co2e = document["energy"], document["co2e"]
    writer.writerow(["energy_kwh", "requests", "", "", "", f"{energy['requests_kwh']:.6f}", "kWh"])
    writer.writerow(
        [
            "energy_kwh",
            "idle_own_deployments",
            "",
            "",
            "",
            f"{energy['idle_kwh_own_deployments']:.6f}",
            "kWh",
        ]
    )
    writer.writerow(
        ["energy_kwh", "startup_own_deployments", "", "", "",
         f"{energy['startup_kwh_own_deployments']:.6f}", "kWh"]
    )  # fmt: skip
    writer.writerow(["co2e_kg", "requests", "", "", "", f"{co2e['requests_kg']:.6f}", "kg"])
    writer.writerow(
        [
            "co2e_kg",
            "idle_own_deployments",
            "",
            "",
            "",
            f"{co2e['idle_kg_own_deployments']:.6f}",
            "kg",
        ]
    )
    return out.getvalue()
