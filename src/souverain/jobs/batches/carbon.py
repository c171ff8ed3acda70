"""When to start a batch: later, if the grid where its lines may run will be cleaner and
its deadline still holds with room to spare (`energy/carbon.cleanest_start`)."""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from sqlalchemy import select

from souverain.core.principal import Principal
from souverain.db.jobs import BatchRow
from souverain.db.metering import CarbonIntensityRow
from souverain.db.tables import DatacenterRow, UsageRecordRow, utcnow
from souverain.energy.carbon import cleanest_start, hour_of
from souverain.gateway.state import AppState


async def carbon_plan(
    state: AppState,
    batch: BatchRow,
    principal: Principal,
    name: str | None,
    lines: int,
    concurrency: int,
) -> tuple[datetime | None, float]:
    """Start later when the grid of the datacenters the lines may run in will be
    cleaner and the deadline still holds with room to spare; the CO2e that saves."""
    model = state.routes.visible_model(principal, name) if name else None
    if model is None:
        return None, 0.0
    routes, _ = state.routes.compliant_routes(principal, model)
    if not routes:
        return None, 0.0
    now = utcnow()
    dcs = sorted({route.datacenter_id for route in routes})
    async with state.sessions() as session:
        rows = (
            await session.execute(
                select(CarbonIntensityRow).where(
                    CarbonIntensityRow.datacenter_id.in_(dcs),
                    CarbonIntensityRow.hour >= hour_of(now),
                )
            )
        ).scalars()
        by_hour: dict[datetime, list[float]] = {}
        for row in rows:
            by_hour.setdefault(row.hour, []).append(row.g_per_kwh)
        static = statistics.mean(
            (await session.execute(
                select(DatacenterRow.carbon_intensity).where(DatacenterRow.id.in_(dcs))
            )).scalars()
        )  # fmt: skip
        per_line_s, per_line_j = await _line_costs(session, model.name)
    if not by_hour:
        return None, 0.0
    series = {hour: statistics.mean(values) for hour, values in by_hour.items()}
    slots = max(1, sum(route.slots for route in routes))
    duration_h = lines * per_line_s / min(slots, concurrency) / 3600
    start, then, at_once = cleanest_start(
        series, now=now, deadline=batch.deadline, duration_h=duration_h, static=static
    )
    if start <= now:
        return None, 0.0
    return start, round((at_once - then) * lines * per_line_j / 3.6e6, 6)


async def _line_costs(session: Any, model: str) -> tuple[float, float]:
    """Seconds and joules a request of this model took lately (defaults before any)."""
    query = (
        select(UsageRecordRow.latency_ms, UsageRecordRow.energy_estimate_j)
        .where(UsageRecordRow.model == model, UsageRecordRow.status == "ok")
        .order_by(UsageRecordRow.created_at.desc())
        .limit(200)
    )
    rows = (await session.execute(query)).all()
    latencies = [r[0] / 1000 for r in rows if r[0]]
    energies = [r[1] for r in rows if r[1]]
    return (statistics.median(latencies) if latencies else 2.0,
            statistics.median(energies) if energies else 30.0)  # fmt: skip
