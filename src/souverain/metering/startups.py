"""What replicas' starts cost, per deployment and per organisation.

A start (placement to first ready) is an energy interval of kind `startup`
(`metering.energy.record_startup`): its energy and CO2e, and the engine process's CPU and
wall-clock seconds from its spawn to ready, as the node read them. It is the deployment
owner's alone, never the requests' that followed it; who may read these sums is the
caller's to check (the owning organisation and operators only).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, RowMapping, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.db.metering import EnergyIntervalRow
from souverain.db.tables import DeploymentRow, ModelRow
from souverain.metering.energy import STARTUP

_I = EnergyIntervalRow


@dataclass(frozen=True)
class Start:
    replica_id: str
    placed_at: datetime
    ready_at: datetime
    energy_j: float
    co2e_g: float
    cpu_s: float | None  # the engine process's, spawn to ready; None where not reported
    engine_s: float | None  # wall clock, spawn to ready

    @property
    def wall_s(self) -> float:
        """Placement to ready: what a request waiting for the replica waited."""
        return max(0.0, (self.ready_at - self.placed_at).total_seconds())

    @property
    def energy_wh(self) -> float:
        return self.energy_j / 3600


@dataclass(frozen=True)
class Starts:
    starts: int = 0
    energy_j: float = 0.0
    co2e_g: float = 0.0
    cpu_s: float = 0.0  # of the starts that reported it
    last: Start | None = None

    @property
    def energy_wh(self) -> float:
        return self.energy_j / 3600


async def of_deployments(session: AsyncSession, *, deployment_ids: list[str]) -> dict[str, Starts]:
    """Every start of each deployment, and its last one (deployments never started: none)."""
    if not deployment_ids:
        return {}
    starts = (_I.kind == STARTUP, _I.deployment_id.in_(deployment_ids))
    sums = (func.count(), func.sum(_I.energy_j), func.sum(_I.co2e_g), func.sum(_I.cpu_s))
    totals = select(_I.deployment_id, *sums).where(*starts).group_by(_I.deployment_id)
    newest_first = func.row_number().over(
        partition_by=_I.deployment_id, order_by=(_I.ended_at.desc(), _I.id.desc())
    )
    latest = select(_I, newest_first.label("n")).where(*starts).subquery()
    last_rows = (await session.execute(select(latest).where(latest.c.n == 1))).mappings()
    lasts = {row["deployment_id"]: _start(row) for row in last_rows}
    return {
        deployment_id: Starts(int(n), float(j or 0), float(g or 0), float(cpu or 0),
                              lasts.get(deployment_id))
        for deployment_id, n, j, g, cpu in (await session.execute(totals)).all()
    }  # fmt: skip


async def of_organisation(
    session: AsyncSession, *, org_id: str | None, since: datetime | None,
    until: datetime | None, model: str | None = None, everyone: bool = False,
) -> Starts:  # fmt: skip
    """The starts of an organisation's own deployments that ended (became ready) in the
    range, or every deployment's (`everyone`, for operators); `model`: of that model's
    deployments only."""
    owned = select(DeploymentRow.id)
    if not everyone:
        owned = owned.where(DeploymentRow.org_id == org_id)
    if model is not None:
        owned = owned.join(ModelRow, ModelRow.id == DeploymentRow.model_id).where(
            ModelRow.name == model
        )
    conditions: list[ColumnElement[bool]] = [_I.kind == STARTUP, _I.deployment_id.in_(owned)]
    if since is not None:
        conditions.append(_I.ended_at >= since)
    if until is not None:
        conditions.append(_I.ended_at < until)
    query = select(
        func.count(), func.sum(_I.energy_j), func.sum(_I.co2e_g), func.sum(_I.cpu_s)
    ).where(*conditions)
    n, j, g, cpu = (await session.execute(query)).one()
    return Starts(int(n), float(j or 0), float(g or 0), float(cpu or 0))


def _start(row: RowMapping) -> Start:
    return Start(
        replica_id=row["replica_id"],
        placed_at=row["started_at"],
        ready_at=row["ended_at"],
        energy_j=float(row["energy_j"]),
        co2e_g=float(row["co2e_g"]),
        cpu_s=row["cpu_s"],
        engine_s=row["engine_s"],
    )
