"""Training counts against the organisation's monthly energy budgets (kWh).

A job reserves, when it is placed, the energy of the CPU-hours it may use
(`finetune_cpu_hours_per_job` × its CPUs × watts per core) on every budget that applies (its
organisation's and its project's), with the same conditional UPDATE as inference, so
concurrent jobs cannot overspend; when an attempt ends, what it used is settled and the
reservation released. A job that finds no room waits in `queued` with the reason.

A running job reserves more as it consumes, as a stream reserves its upper bound: once
an attempt has used half of what it holds, another reservation of the same size is made
(`top_up`); when the budget has no room for it and three quarters are used, the job is
paused with the reason, the last quarter covering the time it takes to stop; a worker
whose step or checkpoint would take longer is stopped on its node when its energy reaches
what the job holds (`held_j`), and the job carries on from its last checkpoint once resumed.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import QuotaExceededError
from souverain.db.jobs import FineTuningJobRow
from souverain.db.metering import BudgetRow
from souverain.db.tables import utcnow
from souverain.metering import budgets


class NoRoom(Exception):
    pass


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


def _joules(cpu_hours: float, watts_per_core: float) -> float:
    return cpu_hours * 3600 * watts_per_core


async def reserve(
    session: AsyncSession, *, job: FineTuningJobRow, cpu_hours_per_job: float, watts_per_core: float
) -> float:
    """The CPU-hours reserved for this attempt, or NoRoom."""
    hours = cpu_hours_per_job * max(job.cpus, 1.0)
    joules = _joules(hours, watts_per_core)
    ledgers = await _ledgers(session, job)
    try:
        async with session.begin_nested():
            await budgets.reserve(
                session,
                ledger_ids=ledgers,
                amounts=budgets.Amounts(energy_j=joules),
                now=utcnow(),
            )
    except QuotaExceededError:
        raise NoRoom(
            f"the organisation's energy budget has no room for this job "
            f"({joules / 3.6e6:.3f} kWh reserved per attempt)"
        ) from None
    return hours


TOP_UP_AT = 0.5  # of what the attempt holds, used: reserve another share
STOP_AT = 0.75  # used, and no room for another share: stop, with a quarter left for stopping


async def top_up(
    session: AsyncSession, *, job: FineTuningJobRow, cpu_hours_per_job: float, watts_per_core: float
) -> bool:
    """Reserve more while the running attempt nears what it holds; False when the budget
    has no room left (the job must stop)."""
    if _joules(cpu_hours_per_job, watts_per_core) <= 0:
        return True  # nothing is ever reserved
    while job.live_energy_j >= TOP_UP_AT * _joules(job.reserved_cpu_hours, watts_per_core):
        try:
            job.reserved_cpu_hours += await reserve(
                session, job=job, cpu_hours_per_job=cpu_hours_per_job, watts_per_core=watts_per_core
            )
        except NoRoom:
            return job.live_energy_j < STOP_AT * _joules(job.reserved_cpu_hours, watts_per_core)
    return True


def held_j(job: FineTuningJobRow, *, watts_per_core: float) -> float:
    """The energy the running attempt holds on the budgets: it may not use more."""
    return _joules(job.reserved_cpu_hours, watts_per_core)


async def settle(session: AsyncSession, *, job: FineTuningJobRow, watts_per_core: float) -> None:
    """Release this attempt's reservation; charge the energy the job used since the last
    settlement (`energy_j` grows with every attempt)."""
    if job.reserved_cpu_hours <= 0:
        return
    used = max(0.0, job.energy_j - job.charged_energy_j)
    await budgets.settle(
        session,
        ledger_ids=await _ledgers(session, job),
        reserved=budgets.Amounts(energy_j=_joules(job.reserved_cpu_hours, watts_per_core)),
        used=budgets.Amounts(energy_j=used),
    )
    job.charged_energy_j += used
    job.reserved_cpu_hours = 0.0
