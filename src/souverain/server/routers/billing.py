from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog import models
from souverain.core.schemas.billing import BudgetOut, BudgetSetRequest, PriceOut, PriceSetRequest
from souverain.db.metering import BudgetLedgerRow, BudgetRow
from souverain.db.tables import utcnow
from souverain.metering import budgets, invoices, prices
from souverain.server.deps import PrincipalDep, SessionDep

router = APIRouter(prefix="/api", tags=["billing"])


@router.put("/models/{model}/price", response_model=PriceOut)
async def set_price(
    model: str, body: PriceSetRequest, principal: PrincipalDep, session: SessionDep
) -> PriceOut:
    """Set a model's price per million input and output tokens (operators). Requests are
    charged the price in force when they were admitted."""
    price, row = await prices.set_price(
        session,
        principal=principal,
        model_ref=model,
        currency=body.currency,
        input_per_million=body.input_per_million,
        output_per_million=body.output_per_million,
    )
    await session.commit()
    return PriceOut(
        model=row.name,
        **{
            k: getattr(price, k)
            for k in ("id", "currency", "input_per_million", "output_per_million", "created_at")
        },
    )


@router.get("/prices", response_model=list[PriceOut])
async def list_prices(principal: PrincipalDep, session: SessionDep) -> list[PriceOut]:
    """The current price of every model you can see."""
    visible = {m.id: m for m in await models.list_models(session, principal=principal)}
    current = await prices.current_prices(session)
    return [
        PriceOut(
            model=visible[model_id].name,
            **{
                k: getattr(p, k)
                for k in ("id", "currency", "input_per_million", "output_per_million", "created_at")
            },
        )
        for model_id, p in sorted(
            current.items(), key=lambda item: visible[item[0]].name if item[0] in visible else ""
        )
        if model_id in visible
    ]


@router.get("/orgs/{org}/invoices/{period}", response_model=None)
async def get_invoice(
    org: str,
    period: str,
    principal: PrincipalDep,
    session: SessionDep,
    format: str = Query(default="json", pattern="^(json|csv)$"),
) -> dict[str, Any] | Response:
    """The month's invoice (period like 2026-11): per model, then energy and CO2e lines.
    `format=csv` for a spreadsheet. Owners, admins and auditors."""
    document = await invoices.invoice(session, principal=principal, org_ref=org, period=period)
    if format == "csv":
        return PlainTextResponse(invoices.invoice_csv(document), media_type="text/csv")
    return document


@router.put("/orgs/{org}/budget", response_model=BudgetOut)
async def set_org_budget(
    org: str, body: BudgetSetRequest, principal: PrincipalDep, session: SessionDep
) -> BudgetOut:
    """The organisation's monthly budget (owners and operators). Requests that would
    exceed it are refused with 429 `insufficient_quota`; concurrent ones never overspend."""
    row = await budgets.set_budget(
        session, principal=principal, org_ref=org, project_ref=None, limits=_limits(body)
    )
    await session.commit()
    return await _out(session, row)


@router.put("/orgs/{org}/projects/{project}/budget", response_model=BudgetOut)
async def set_project_budget(
    org: str, project: str, body: BudgetSetRequest, principal: PrincipalDep, session: SessionDep
) -> BudgetOut:
    """A project's monthly budget (admins). Both the project's and the organisation's apply."""
    row = await budgets.set_budget(
        session, principal=principal, org_ref=org, project_ref=project, limits=_limits(body)
    )
    await session.commit()
    return await _out(session, row)


@router.get("/orgs/{org}/budgets", response_model=list[BudgetOut])
async def list_budgets(
    org: str,
    principal: PrincipalDep,
    session: SessionDep,
    period: str | None = Query(default=None, pattern=r"^\d{4}-\d{2}$"),
) -> list[BudgetOut]:
    """Budgets with what is used and reserved in the month (default: this month)."""
    month = period or budgets.period_of(utcnow())
    pairs = await budgets.ledgers_of(session, principal=principal, org_ref=org, period=month)
    return [_budget_out(budget, ledger, month) for budget, ledger in pairs]


def _limits(body: BudgetSetRequest) -> budgets.Limits:
    return budgets.Limits(tokens=body.tokens, cost=body.cost, energy_kwh=body.energy_kwh)


async def _out(session: AsyncSession, row: BudgetRow) -> BudgetOut:
    month = budgets.period_of(utcnow())
    query = select(BudgetLedgerRow).where(
        BudgetLedgerRow.budget_id == row.id, BudgetLedgerRow.period == month
    )
    return _budget_out(row, (await session.execute(query)).scalar_one_or_none(), month)


def _budget_out(budget: BudgetRow, ledger: BudgetLedgerRow | None, period: str) -> BudgetOut:
    return BudgetOut(
        id=budget.id,
        org_id=budget.org_id,
        project_id=budget.project_id,
        period=period,
        tokens=budget.tokens,
        cost=budget.cost,
        energy_kwh=budget.energy_kwh,
        used_tokens=ledger.used_tokens if ledger else 0,
        used_cost=ledger.used_cost if ledger else 0.0,
        used_energy_kwh=(ledger.used_energy_j if ledger else 0.0) / 3.6e6,
        reserved_tokens=ledger.reserved_tokens if ledger else 0,
    )
