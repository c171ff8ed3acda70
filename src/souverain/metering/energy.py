"""Energy intervals and carbon series in the database; the arithmetic is in `energy/`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_operator
from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.db.metering import BudgetRow, CarbonIntensityRow, EnergyIntervalRow
from souverain.db.tables import DatacenterRow, DeploymentRow, ReplicaRow, UsageRecordRow
from souverain.energy.attribution import Served, Split, co2e_grams
from souverain.energy.carbon import hour_of
from souverain.evidence.audit import actor_of, record
from souverain.fleet.datacenters import get_datacenter
from souverain.metering import budgets, usage
from souverain.metering.usage_rollups import Changes

STARTUP = "startup"  # an interval's kind: a replica's start, its deployment owner's
SERVING = "serving"  # an interval's kind: requests served, split between them


@dataclass(frozen=True)
class Interval:
    replica_id: str
    deployment_id: str
    datacenter_id: str
    source: str
    started_at: datetime
    ended_at: datetime
    energy_j: float


async def unattributed(session: AsyncSession, *, replica_id: str, until: datetime) -> list[Served]:
    query = select(
        UsageRecordRow.id, UsageRecordRow.prompt_tokens, UsageRecordRow.completion_tokens
    ).where(
        UsageRecordRow.replica_id == replica_id,
        UsageRecordRow.energy_j.is_(None),
        UsageRecordRow.status != "open",
        UsageRecordRow.settled_at <= until,
    )
    return [Served(record_id, p, c) for record_id, p, c in (await session.execute(query)).all()]


async def intensity_at(session: AsyncSession, *, datacenter_id: str, moment: datetime) -> float:
    """The hourly series value if one is loaded for that hour, else the static value."""
    query = select(CarbonIntensityRow.g_per_kwh).where(
        CarbonIntensityRow.datacenter_id == datacenter_id,
        CarbonIntensityRow.hour == hour_of(moment),
    )
    value = (await session.execute(query)).scalar_one_or_none()
    if value is not None:
        return float(value)
    datacenter = await session.get(DatacenterRow, datacenter_id)
    return datacenter.carbon_intensity if datacenter else 0.0


async def record_interval(
    session: AsyncSession, *, interval: Interval, split: Split, weights: dict[str, float]
) -> EnergyIntervalRow:
    intensity = await intensity_at(
        session, datacenter_id=interval.datacenter_id, moment=interval.started_at
    )
    attributed = sum(split.per_record.values())
    row = _interval_row(interval, intensity, attributed_j=attributed, idle_j=split.idle_j,
                        requests=len(split.per_record), kind=SERVING)  # fmt: skip
    session.add(row)
    changes = Changes()
    for record_id, joules in sorted(split.per_record.items()):
        await usage.attribute_energy(
            session,
            record_id=record_id,
            energy_j=joules,
            co2e_g=co2e_grams(joules, intensity),
            source=interval.source,
            changes=changes,
        )
    total_weight = sum(weights.values())
    # An interval whose meter did not move (CPU time is counted in ticks, and a request can
    # settle after the reading that held its work) says nothing of the rate: the next
    # requests keep the last known one rather than being estimated free.
    if total_weight > 0 and attributed > 0:
        await session.execute(
            update(ReplicaRow)
            .where(ReplicaRow.id == interval.replica_id)
            .values(energy_j_per_token=attributed / total_weight, energy_source=interval.source)
        )
    await changes.write(session)  # the usage rollups, after the other writes
    await session.flush()
    return row


async def record_startup(
    session: AsyncSession, *, interval: Interval, cpu_s: float | None = None,
    engine_s: float | None = None,
) -> EnergyIntervalRow:  # fmt: skip
    """A replica's start (placement to ready): an interval of kind `startup` that no request
    shares, charged to the energy budgets of the deployment's owner (its organisation's
    own budgets, not a project's: a deployment belongs to no project); a platform
    deployment's start is the platform's. `cpu_s` and `engine_s`: the engine process's
    CPU and wall-clock seconds from its spawn to ready, where the node reported them."""
    intensity = await intensity_at(
        session, datacenter_id=interval.datacenter_id, moment=interval.started_at
    )
    # no request's: Σ attributed + idle = measured holds
    row = _interval_row(interval, intensity, attributed_j=0.0, idle_j=interval.energy_j,
                        requests=0, kind=STARTUP)  # fmt: skip
    row.cpu_s, row.engine_s = cpu_s, engine_s
    session.add(row)
    owner = await session.scalar(
        select(DeploymentRow.org_id).where(DeploymentRow.id == interval.deployment_id)
    )
    if owner is not None and interval.energy_j > 0:
        rows = (
            await session.execute(
                select(BudgetRow).where(BudgetRow.org_id == owner, BudgetRow.project_id.is_(None))
            )
        ).scalars()
        ledgers = await budgets.ensure_ledgers(
            session, budgets=list(rows), period=budgets.period_of(interval.ended_at)
        )
        await budgets.settle(
            session,
            ledger_ids=ledgers,
            reserved=budgets.Amounts(),
            used=budgets.Amounts(energy_j=interval.energy_j),
        )
    await session.flush()
    return row


async def load_series(
    session: AsyncSession,
    *,
    principal: Principal,
    datacenter_id: str,
    series: dict[datetime, float],
) -> int:
    """Replace the hours given in a datacenter's hourly series (operators)."""
    check_operator(principal)
    await get_datacenter(session, principal=principal, datacenter_id=datacenter_id)
    if series:
        await session.execute(
            delete(CarbonIntensityRow).where(
                CarbonIntensityRow.datacenter_id == datacenter_id,
                CarbonIntensityRow.hour.in_(list(series)),
            )
        )
    session.add_all(
        CarbonIntensityRow(datacenter_id=datacenter_id, hour=hour, g_per_kwh=value)
        for hour, value in series.items()
    )
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="datacenter.carbon.load",
        target_type="datacenter",
        target_id=datacenter_id,
        details={"hours": len(series)},
    )
    return len(series)


async def totals_by_datacenter(session: AsyncSession) -> dict[str, tuple[float, float]]:
    """Datacenter -> (joules, grams CO2e) measured so far (for /metrics)."""
    query = select(
        EnergyIntervalRow.datacenter_id,
        func.sum(EnergyIntervalRow.energy_j),
        func.sum(EnergyIntervalRow.co2e_g),
    ).group_by(EnergyIntervalRow.datacenter_id)
    return {dc: (float(j or 0), float(g or 0)) for dc, j, g in (await session.execute(query)).all()}


def _interval_row(
    interval: Interval, intensity: float, *, attributed_j: float, idle_j: float,
    requests: int, kind: str,
) -> EnergyIntervalRow:  # fmt: skip
    return EnergyIntervalRow(
        id=new_id("nrg"),
        replica_id=interval.replica_id,
        deployment_id=interval.deployment_id,
        datacenter_id=interval.datacenter_id,
        source=interval.source,
        started_at=interval.started_at,
        ended_at=interval.ended_at,
        energy_j=interval.energy_j,
        attributed_j=attributed_j,
        idle_j=idle_j,
        requests=requests,
        carbon_intensity=intensity,
        co2e_g=co2e_grams(interval.energy_j, intensity),
        kind=kind,
    )
