"""Autoscaling a deployment: its limits as the API takes them, the load the gateways report,
and the controller's decision (scheduler/autoscale.py) written on the row.

A deployment without a minimum and a maximum keeps its fixed `replicas`. With them,
`replicas` is the count the controller wants now: it moves within the limits with the
load, and every change is audited (`deployment.scale`) with its reason, which the
deployment shows (`scaling_reason`, `scaled_at`).

The load is `deployment_demand`: each server process rewrites its own row per deployment
every few seconds (requests its engines are answering, requests waiting for a replica).
Rows not renewed for `DEMAND_FRESH_S` belong to a server that stopped and are ignored.
`scale` is the reconciler's step that turns a round's reading into the count it wants.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import InvalidRequestError
from souverain.core.schemas.deployments import MAX_REPLICAS, ScalingFields
from souverain.core.status import ReplicaState
from souverain.db.demand import DeploymentDemandRow
from souverain.db.tables import DeploymentRow
from souverain.jobs.deployments.rounds import Event, Loaded, Outcome
from souverain.jobs.deployments.sharing import SHARED
from souverain.scheduler.autoscale import Decision, Limits, ScaleState, decide, routed_ahead

DEMAND_FRESH_S = 30.0
DEFAULT_TARGET = 4.0
DEFAULT_IDLE_S = 300
MAX_IDLE_S = 7 * 86400


@dataclass(frozen=True)
class Scaling:
    """What the API sets: the limits (None: a fixed count), the target, the idle period."""

    min_replicas: int | None
    max_replicas: int | None
    target: float
    idle_s: int


def is_autoscaled(deployment: DeploymentRow) -> bool:
    return deployment.min_replicas is not None and deployment.max_replicas is not None


def limits_of(deployment: DeploymentRow) -> Limits:
    """The deployment's limits; a fixed count is a minimum and a maximum of `replicas`."""
    fixed = deployment.replicas
    low = fixed if deployment.min_replicas is None else deployment.min_replicas
    high = fixed if deployment.max_replicas is None else deployment.max_replicas
    return Limits(
        min_replicas=low,
        max_replicas=high,
        target=deployment.target_busy_per_replica or DEFAULT_TARGET,
        scale_down_idle_s=float(deployment.scale_down_idle_s),
    )


def state_of(deployment: DeploymentRow) -> ScaleState:
    return ScaleState(deployment.replicas, deployment.scale_above, deployment.scale_below_since)


def scale_event(
    deployment: DeploymentRow, decision: Decision, in_flight: int, waiting: int
) -> Event:
    """The audited `deployment.scale` of a decision that changed the wanted count."""
    return Event(
        "deployment.scale",
        "deployment",
        deployment.id,
        {"from": deployment.replicas, "to": decision.state.wanted,
         "reason": decision.reason, "in_flight": in_flight, "waiting": waiting},
    )  # fmt: skip


def write_decision(
    deployment: DeploymentRow, decision: Decision, now: datetime
) -> dict[str, object]:
    """The row's new scaling values (for the fenced UPDATE)."""
    values: dict[str, object] = {
        "scale_above": decision.state.above,
        "scale_below_since": decision.state.below_since,
    }
    if decision.changed:
        values |= {"replicas": decision.state.wanted, "scaled_at": now,
                   "scaling_reason": decision.reason}  # fmt: skip
    return values


async def busy_of(
    session: AsyncSession, *, deployment_id: str, now: datetime
) -> tuple[int, int, int]:
    """(in flight, waiting, in flight on draining replicas) for the deployment, summed over
    servers that reported lately."""
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(DeploymentDemandRow.in_flight), 0),
                func.coalesce(func.sum(DeploymentDemandRow.waiting), 0),
                func.coalesce(func.sum(DeploymentDemandRow.draining), 0),
            ).where(
                DeploymentDemandRow.deployment_id == deployment_id,
                DeploymentDemandRow.updated_at >= now - timedelta(seconds=DEMAND_FRESH_S),
            )
        )
    ).one()
    return int(row[0]), int(row[1]), int(row[2])


async def waking_from_zero(session: AsyncSession, *, now: datetime) -> list[str]:
    """Deployments at zero replicas that a request waits for: the controller reconciles
    them at once instead of at its next round (a cheap query, run every tenth of a second).
    The shared ones first: a base at zero woken after them starts with their adapters.
    """
    query = (
        select(DeploymentRow.id, DeploymentRow.sharing)
        .join(DeploymentDemandRow, DeploymentDemandRow.deployment_id == DeploymentRow.id)
        .where(
            DeploymentRow.replicas == 0,
            DeploymentRow.max_replicas > 0,
            DeploymentRow.deleted.is_(False),
            DeploymentDemandRow.waiting > 0,
            DeploymentDemandRow.updated_at >= now - timedelta(seconds=DEMAND_FRESH_S),
        )
        .distinct()
    )
    found = sorted((await session.execute(query)).all(), key=lambda row: row.sharing != SHARED)
    return [row.id for row in found]


def check_scaling(
    fields: ScalingFields, *, replicas: int, current: DeploymentRow | None = None
) -> Scaling:
    """The limits asked for, over the current ones; a clear error for impossible ones."""
    low = fields.min_replicas if fields.min_replicas is not None else _current_min(current)
    high = fields.max_replicas if fields.max_replicas is not None else _current_max(current)
    if (low is None) != (high is None):  # one given alone: the other is the fixed count
        low, high = (replicas if low is None else low), (replicas if high is None else high)
    for name, value in (("min_replicas", low), ("max_replicas", high)):
        if value is not None and not 0 <= value <= MAX_REPLICAS:
            raise InvalidRequestError(
                f"{name} must be between 0 and {MAX_REPLICAS}; got {value}.", param=name
            )
    if low is not None and high is not None and low > high:
        raise InvalidRequestError(
            f"min_replicas ({low}) is above max_replicas ({high}).", param="min_replicas"
        )
    target = _target(fields, current)
    idle_s = _idle(fields, current)
    return Scaling(low, high, target, idle_s)


def _current_min(current: DeploymentRow | None) -> int | None:
    return None if current is None else current.min_replicas


def _current_max(current: DeploymentRow | None) -> int | None:
    return None if current is None else current.max_replicas


def _target(fields: ScalingFields, current: DeploymentRow | None) -> float:
    if fields.target_busy_per_replica is None:
        return DEFAULT_TARGET if current is None else current.target_busy_per_replica
    if not 0 < fields.target_busy_per_replica <= 1024:
        raise InvalidRequestError(
            "target_busy_per_replica must be above 0 and at most 1024; "
            f"got {fields.target_busy_per_replica:g}.",
            param="target_busy_per_replica",
        )
    return fields.target_busy_per_replica


def _idle(fields: ScalingFields, current: DeploymentRow | None) -> int:
    if fields.scale_down_idle_s is None:
        return DEFAULT_IDLE_S if current is None else current.scale_down_idle_s
    if not 0 <= fields.scale_down_idle_s <= MAX_IDLE_S:
        raise InvalidRequestError(
            f"scale_down_idle_s must be between 0 and {MAX_IDLE_S}; "
            f"got {fields.scale_down_idle_s}.",
            param="scale_down_idle_s",
        )
    return fields.scale_down_idle_s


def starting_count(scaling: Scaling, replicas: int, *, replicas_given: bool) -> int:
    """The count wanted at first (or after a change of limits): `replicas` inside the limits.
    A `replicas` given outside them is a clear error rather than silently moved."""
    if scaling.min_replicas is None or scaling.max_replicas is None:
        return replicas
    if scaling.min_replicas <= replicas <= scaling.max_replicas:
        return replicas
    if replicas_given:
        raise InvalidRequestError(
            f"replicas ({replicas}) is outside min_replicas..max_replicas "
            f"({scaling.min_replicas}..{scaling.max_replicas}).",
            param="replicas",
        )
    return min(max(replicas, scaling.min_replicas), scaling.max_replicas)


def scale(loaded: Loaded, outcome: Outcome, lead_s: float) -> tuple[int, int | None]:
    """The replicas wanted now: the fixed count, or the autoscaler's after this reading; and
    how many of them take new requests when a scale-down is at most `lead_s` away (None:
    all of them)."""
    deployment = loaded.deployment
    if not is_autoscaled(deployment) or loaded.now is None:
        return deployment.replicas, None
    in_flight, waiting, _ = loaded.busy
    limits = limits_of(deployment)
    decision = decide(
        limits,
        state_of(deployment),
        in_flight + waiting,
        loaded.now,
        starting=any(r.state == ReplicaState.STARTING for r in loaded.replicas),
    )
    outcome.scaling = write_decision(deployment, decision, loaded.now)
    if decision.changed:
        outcome.events.append(scale_event(deployment, decision, in_flight, waiting))
    ready = all(r.state == ReplicaState.READY for r in loaded.replicas)
    if decision.changed or not ready:
        return decision.state.wanted, None
    ahead = routed_ahead(limits, decision.state, in_flight + waiting, loaded.now, lead_s=lead_s)
    return decision.state.wanted, ahead
