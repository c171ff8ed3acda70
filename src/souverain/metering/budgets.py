"""Monthly budgets in tokens, cost and energy, per organisation and per project.

Admission reserves an estimate with one conditional UPDATE per applicable ledger,
in the same transaction that opens the usage record:

    UPDATE budget_ledgers SET reserved_x = reserved_x + :x
    WHERE id = :id AND (limit_x IS NULL OR used_x + reserved_x + :x <= limit_x) …

so concurrent requests can never overspend, on SQLite (one writer at a time) and on
PostgreSQL (a concurrent UPDATE re-checks the WHERE clause against the committed row).
Settlement moves the reservation to `used` with the actual amounts; a request a killed
server left open is charged its whole reservation (never less than it may have used).
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from sqlalchemy import BigInteger, Float, Update, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_org
from souverain.core.errors import PermissionDeniedError, QuotaExceededError
from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.db.metering import BudgetLedgerRow, BudgetRow
from souverain.db.tables import utcnow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import orgs, projects


@dataclass(frozen=True)
class Amounts:
    tokens: int = 0
    cost: float = 0.0
    energy_j: float = 0.0


class BudgetLimits(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def tokens(self) -> int | None: ...
    @property
    def cost(self) -> float | None: ...
    @property
    def energy_kwh(self) -> float | None: ...


@dataclass(frozen=True)
class Budget:
    """What the gateway needs to know of a budget, cached in its route table."""

    id: str
    org_id: str
    project_id: str | None
    tokens: int | None
    cost: float | None
    energy_kwh: float | None


async def all_budgets(session: AsyncSession) -> dict[str, list[Budget]]:
    """Organisation id -> its budgets (the organisation's own and its projects')."""
    result: dict[str, list[Budget]] = {}
    for row in (await session.execute(select(BudgetRow))).scalars():
        budget = Budget(row.id, row.org_id, row.project_id, row.tokens, row.cost, row.energy_kwh)
        result.setdefault(row.org_id, []).append(budget)
    return result


@dataclass(frozen=True)
class Limits:
    tokens: int | None
    cost: float | None
    energy_kwh: float | None


def period_of(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m")


def seconds_to_next_period(moment: datetime) -> float:
    moment = moment.astimezone(UTC)
    days = calendar.monthrange(moment.year, moment.month)[1]
    end = moment.replace(day=days, hour=23, minute=59, second=59, microsecond=0)
    return max(1.0, (end - moment).total_seconds() + 1)


async def set_budget(
    session: AsyncSession,
    *,
    principal: Principal,
    org_ref: str,
    project_ref: str | None,
    limits: Limits,
) -> BudgetRow:
    """Organisation budgets: owners and operators. Project budgets: admins and above.
    What the operator sets on an organisation is also its ceiling: tenants may lower their
    budgets (and set project budgets) within it, never raise or remove them."""
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.MANAGE if project_ref else Scope.OWN)
    project_id = None
    if project_ref is not None:
        project_id = (
            await projects.get_project(session, principal=principal, org_id=org.id, ref=project_ref)
        ).id
    org_row = await _budget_row(session, org.id, None)
    sets_ceiling = principal.is_operator and project_id is None
    if not sets_ceiling:
        _check_within_ceiling(limits, org_row)
    row = org_row if project_id is None else await _budget_row(session, org.id, project_id)
    if row is None:
        row = BudgetRow(id=new_id("bud"), org_id=org.id, project_id=project_id)
        session.add(row)
    row.tokens, row.cost, row.energy_kwh = limits.tokens, limits.cost, limits.energy_kwh
    if sets_ceiling:
        row.ceiling_tokens, row.ceiling_cost = limits.tokens, limits.cost
        row.ceiling_energy_kwh = limits.energy_kwh
    row.updated_at = utcnow()
    await session.flush()
    # The month in progress takes the new limits at once.
    await session.execute(
        update(BudgetLedgerRow)
        .where(BudgetLedgerRow.budget_id == row.id, BudgetLedgerRow.period == period_of(utcnow()))
        .values(**_ledger_limits(row))
    )
    await record(
        session,
        actor=actor_of(principal),
        action="budget.set",
        org_id=org.id,
        target_type="budget",
        target_id=row.id,
        details={
            "project_id": project_id,
            "tokens": limits.tokens,
            "cost": limits.cost,
            "energy_kwh": limits.energy_kwh,
        },
    )
    return row


async def _budget_row(
    session: AsyncSession, org_id: str, project_id: str | None
) -> BudgetRow | None:
    query = select(BudgetRow).where(BudgetRow.org_id == org_id, _project_is(project_id))
    return (await session.execute(query)).scalar_one_or_none()


def _check_within_ceiling(limits: Limits, org_row: BudgetRow | None) -> None:
    if org_row is None:
        return
    for name, wanted, ceiling in (
        ("tokens", limits.tokens, org_row.ceiling_tokens),
        ("cost", limits.cost, org_row.ceiling_cost),
        ("energy_kwh", limits.energy_kwh, org_row.ceiling_energy_kwh),
    ):
        if ceiling is not None and (wanted is None or wanted > ceiling):
            raise PermissionDeniedError(
                f"the operator's ceiling for {name} is {ceiling:g} a month; a budget may only "
                "be lowered within it",
                param=name,
            )


def _project_is(project_id: str | None):  # type: ignore[no-untyped-def]
    return (
        BudgetRow.project_id.is_(None) if project_id is None else BudgetRow.project_id == project_id
    )


def _ledger_limits(row: BudgetLimits) -> dict[str, float | int | None]:
    energy = None if row.energy_kwh is None else row.energy_kwh * 3.6e6
    return {"limit_tokens": row.tokens, "limit_cost": row.cost, "limit_energy_j": energy}


async def ensure_ledgers(
    session: AsyncSession, *, budgets: Sequence[BudgetLimits], period: str
) -> list[str]:
    """The ledger ids of these budgets for `period`, created on first use (concurrent
    creators do not conflict: INSERT … ON CONFLICT DO NOTHING, then read)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    ids = []
    for budget in budgets:
        values = {
            "id": new_id("led"),
            "budget_id": budget.id,
            "period": period,
            **_ledger_limits(budget),
        }
        values |= {
            f"{kind}_{what}": 0
            for kind in ("used", "reserved")
            for what in ("tokens", "cost", "energy_j")
        }
        await session.execute(insert(BudgetLedgerRow).values(**values).on_conflict_do_nothing())
        query = select(BudgetLedgerRow.id).where(
            BudgetLedgerRow.budget_id == budget.id, BudgetLedgerRow.period == period
        )
        ids.append((await session.execute(query)).scalar_one())
    return ids


def _reserve_statement() -> Update:
    ledger = BudgetLedgerRow
    tokens = bindparam("tokens", type_=BigInteger)
    cost = bindparam("cost", type_=Float)
    energy = bindparam("energy", type_=Float)

    return (
        update(ledger)
        .where(
            ledger.id == bindparam("ledger_id"),
            ledger.limit_tokens.is_(None)
            | (ledger.used_tokens + ledger.reserved_tokens + tokens <= ledger.limit_tokens),
            ledger.limit_cost.is_(None)
            | (ledger.used_cost + ledger.reserved_cost + cost <= ledger.limit_cost),
            ledger.limit_energy_j.is_(None)
            | (ledger.used_energy_j + ledger.reserved_energy_j + energy <= ledger.limit_energy_j),
        )
        .values(
            reserved_tokens=ledger.reserved_tokens + tokens,
            reserved_cost=ledger.reserved_cost + cost,
            reserved_energy_j=ledger.reserved_energy_j + energy,
        )
    )


def _settle_statement() -> Update:
    ledger = BudgetLedgerRow
    return (
        update(ledger)
        .where(ledger.id == bindparam("ledger_id"))
        .values(
            reserved_tokens=ledger.reserved_tokens - bindparam("r_tokens"),
            reserved_cost=ledger.reserved_cost - bindparam("r_cost"),
            reserved_energy_j=ledger.reserved_energy_j - bindparam("r_energy"),
            used_tokens=ledger.used_tokens + bindparam("u_tokens"),
            used_cost=ledger.used_cost + bindparam("u_cost"),
            used_energy_j=ledger.used_energy_j + bindparam("u_energy"),
        )
    )


# Built once; requests only bind values (SQLAlchemy caches the compiled statements).
_RESERVE = _reserve_statement()
_SETTLE = _settle_statement()


async def reserve(
    session: AsyncSession, *, ledger_ids: list[str], amounts: Amounts, now: datetime
) -> None:
    """Reserve on every ledger or raise QuotaExceededError (the caller's transaction rolls back)."""
    for ledger_id in ledger_ids:
        params = {
            "ledger_id": ledger_id,
            "tokens": amounts.tokens,
            "cost": amounts.cost,
            "energy": amounts.energy_j,
        }
        result = await session.execute(_RESERVE, params)
        if not result.rowcount:  # type: ignore[attr-defined]
            raise QuotaExceededError(
                "Your monthly budget has no room for this request (its estimate counts max_tokens). "
                "Lower max_tokens, or ask an administrator to raise the budget.",
                retry_after_s=seconds_to_next_period(now),
            )


async def settle(
    session: AsyncSession, *, ledger_ids: list[str], reserved: Amounts, used: Amounts
) -> None:
    params = {
        "r_tokens": reserved.tokens, "r_cost": reserved.cost, "r_energy": reserved.energy_j,
        "u_tokens": used.tokens, "u_cost": used.cost, "u_energy": used.energy_j,
    }  # fmt: skip
    for ledger_id in ledger_ids:
        await session.execute(_SETTLE, {**params, "ledger_id": ledger_id})


async def ledgers_of(
    session: AsyncSession, *, principal: Principal, org_ref: str, period: str
) -> list[tuple[BudgetRow, BudgetLedgerRow | None]]:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.READ)
    budgets = list(
        (await session.execute(select(BudgetRow).where(BudgetRow.org_id == org.id))).scalars()
    )
    result = []
    for budget in budgets:
        if principal.project_id is not None and budget.project_id not in (
            None,
            principal.project_id,
        ):
            continue
        query = select(BudgetLedgerRow).where(
            BudgetLedgerRow.budget_id == budget.id, BudgetLedgerRow.period == period
        )
        result.append((budget, (await session.execute(query)).scalar_one_or_none()))
    return result
