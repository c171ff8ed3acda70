"""Training counts against the organisation's monthly energy budgets (kWh).

A job reserves, when it is placed, the energy of the CPU-hours it may use
(`finetune_cpu_hours_per_job` × watts per core) on every budget that applies (its
organisation's and its project's), with the same conditional UPDATE as inference, so
concurrent jobs cannot overspend; when an attempt ends, what it used is settled and the
reservation released. A job that finds no room waits in `queued` with the reason.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import QuotaExceededError
from souverain.db.tables import BudgetRow, FineTuningJobRow, utcnow
from souverain.services import budgets

CPU_HOURS_PER_JOB = 8.0
WATTS_PER_CORE = 10.0


class NoRoom(Exception):
    pass


def configure(*, cpu_hours_per_job: float, watts_per_core: float) -> None:
    global CPU_HOURS_PER_JOB, WATTS_PER_CORE
    CPU_HOURS_PER_JOB, WATTS_PER_CORE = cpu_hours_per_job, watts_per_core


async def _ledgers(session: AsyncSession, job: FineTuningJobRow) -> list[str]:
    rows = list(
        (
            await session.execute(
                select(BudgetRow).where(
                    BudgetRow.org_id == job.org_id,
                    BudgetRow.project_id.is_(None) | (BudgetRow.project_id == job.project_id),
                )
            )
        ).scalars()
    )
    return await budgets.ensure_ledgers(session, budgets=rows, period=budgets.period_of(utcnow()))


def _joules(cpu_hours: float) -> float:
    return cpu_hours * 3600 * WATTS_PER_CORE


async def reserve(session: AsyncSession, *, job: FineTuningJobRow) -> float:
    """The CPU-hours reserved for this attempt, or NoRoom."""
    hours = CPU_HOURS_PER_JOB * max(job.cpus, 1.0)
    ledgers = await _ledgers(session, job)
    try:
        async with session.begin_nested():
            await budgets.reserve(
                session,
                ledger_ids=ledgers,
                amounts=budgets.Amounts(energy_j=_joules(hours)),
                now=utcnow(),
            )
    except QuotaExceededError:
        raise NoRoom(
            f"the organisation's energy budget has no room for this job "
            f"({_joules(hours) / 3.6e6:.3f} kWh reserved per attempt)"
        ) from None
    return hours


async def settle(session: AsyncSession, *, job: FineTuningJobRow) -> None:
    """Release this attempt's reservation; charge the energy the job used since the last
    settlement (`energy_j` grows with every attempt)."""
    if job.reserved_cpu_hours <= 0:
        return
    ledgers = await _ledgers(session, job)
    charged = float((job.resolved or {}).get("_charged_j", 0.0))
    used = max(0.0, job.energy_j - charged)
    await budgets.settle(
        session,
        ledger_ids=ledgers,
        reserved=budgets.Amounts(energy_j=_joules(job.reserved_cpu_hours)),
        used=budgets.Amounts(energy_j=used),
    )
    job.resolved = {**job.resolved, "_charged_j": charged + used}
    job.reserved_cpu_hours = 0.0
