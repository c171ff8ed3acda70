"""A shared deployment's adapter leaves its base's replicas when nobody asks for it, and
comes back with the next request.

A shared deployment (sharing.py) with a minimum of 0 and a maximum of 1 is autoscaled like
any other deployment at minimum 0 (scheduler/autoscale.py), its `replicas` saying whether
its adapter is wanted loaded (1) or not (0): after `scale_down_idle_s` without a request
the controller sets it to 0, the base's replicas unload the adapter (live_adapters.py) and
its room under the caps (`sharing.PER_REPLICA`, `sharing.PER_ORG`) goes to a shared
deployment waiting for it; the next request for the model waits (gateway/demand.py), the
controller sees it waiting and sets it to 1 at once (runner.py: `wake_from_zero`, which
then reconciles the base too), and the request is answered once a replica of the base has
loaded the adapter again. Each change is audited (`deployment.scale`) with its reason,
which the deployment shows (`scaling_reason`, and its status `idle`).

The idle clock is the autoscaler's (`scale_below_since`), moved by two readings: the load
the gateways report for the shared deployment (its requests in flight on the shared
replicas and those waiting; routing.py counts them per model), and the latest request its
usage records name, so a short request between two reports still counts as one.

A fine-tuning job's shared deployment is made with these limits (jobs/fine_tuning/outcome.py);
a shared deployment without them (a fixed `replicas`) keeps its adapter loaded while
`replicas` is 1, as before. `min_replicas: 1` keeps it loaded; `scale_down_idle_s` sets the
idle period, at least `MIN_IDLE_S` (`check_limits`, on create as on update): each load is a
fetch, decrypt and load inside the serving loop of every replica of the base, which stalls
the other tenants' requests there, so a tenant may not make its adapter come and go with
each request.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog.hosting import Owner, adapter_hosts
from souverain.core.errors import InvalidRequestError
from souverain.db.tables import DeploymentRow, ModelRow, UsageRecordRow
from souverain.jobs.deployments import autoscaling, sharing
from souverain.jobs.deployments.rounds import Loaded, Outcome
from souverain.scheduler.autoscale import Decision, ScaleState, decide

IDLE = "idle"
MIN_IDLE_S = 60  # a shared deployment's shortest idle period


def check_limits(scaling: autoscaling.Scaling, replicas: int) -> None:
    """Refuse limits a shared deployment cannot have: more than one copy of its adapter,
    or an idle period under `MIN_IDLE_S` (the same check on create and on update)."""
    if max(replicas, scaling.max_replicas or 0) > 1:
        raise InvalidRequestError(
            "A shared deployment's adapter is loaded (1) or not (0): replicas and "
            "max_replicas are at most 1 (min_replicas 0 unloads it while idle).",
            param="max_replicas" if (scaling.max_replicas or 0) > 1 else "replicas",
        )
    if scaling.idle_s < MIN_IDLE_S:
        raise InvalidRequestError(
            f"A shared deployment's scale_down_idle_s is at least {MIN_IDLE_S} (loading its "
            f"adapter pauses every replica of its base); got {scaling.idle_s}.",
            param="scale_down_idle_s",
        )


def unloads_when_idle(deployment: DeploymentRow) -> bool:
    """A shared deployment whose adapter leaves its base's replicas while idle."""
    return (
        deployment.sharing == sharing.SHARED
        and deployment.min_replicas == 0
        and (deployment.max_replicas or 0) > 0
    )


async def last_asked(session: AsyncSession, deployment_id: str) -> datetime | None:
    """When the latest request its usage records name was admitted (None: none kept)."""
    query = select(func.max(UsageRecordRow.created_at)).where(
        UsageRecordRow.deployment_id == deployment_id
    )
    found: datetime | None = (await session.execute(query)).scalar()
    return found


def shared_round(loaded: Loaded, outcome: Outcome) -> tuple[str, str]:
    """A shared deployment's round: whether its adapter stays loaded (`step`), then its
    status and reason: idle, or where its adapter is (sharing.py)."""
    if step(loaded, outcome) == 0 and unloads_when_idle(loaded.deployment):
        return idle_status(loaded.deployment, outcome.scaling)
    found = sharing.served(loaded.model.id, loaded.hosts, loaded.org_models)
    return sharing.shared_status(found)


def step(loaded: Loaded, outcome: Outcome) -> int:
    """Whether the adapter is wanted loaded after this reading (1) or not (0); a change is
    written on the outcome with its audit event."""
    deployment = loaded.deployment
    if not unloads_when_idle(deployment) or loaded.now is None:
        return deployment.replicas
    in_flight, waiting, _ = loaded.busy
    busy = in_flight + waiting
    limits = autoscaling.limits_of(deployment)
    limits = replace(limits, min_replicas=min(limits.min_replicas, 1), max_replicas=1)
    decision = decide(limits, _state(deployment, loaded.last_asked), busy, loaded.now)
    if decision.changed:
        decision = Decision(decision.state, True, _reason(decision, busy))
        outcome.events.append(autoscaling.scale_event(deployment, decision, in_flight, waiting))
    outcome.scaling = autoscaling.write_decision(deployment, decision, loaded.now)
    return decision.state.wanted


def _state(deployment: DeploymentRow, asked: datetime | None) -> ScaleState:
    """The autoscaler's state, its idle period started no earlier than the last request."""
    since = deployment.scale_below_since
    if since is not None and asked is not None and asked > since:
        since = asked
    return ScaleState(deployment.replicas, deployment.scale_above, since)


def _reason(decision: Decision, busy: int) -> str:
    if decision.state.wanted == 0:
        return f"unloaded from the shared replicas of its base: {decision.reason}"
    if busy:
        waiting = "1 request" if busy == 1 else f"{busy} requests"
        return f"loaded again: {waiting} waiting for it"
    return f"loaded again: {decision.reason}"


def idle_status(deployment: DeploymentRow, scaling: dict[str, object]) -> tuple[str, str]:
    """The status of a shared deployment whose adapter is unloaded while idle."""
    why = str(scaling.get("scaling_reason") or deployment.scaling_reason or "idle")
    return IDLE, f"{why}; the next request loads it again"


async def hosts_of(session: AsyncSession, shared_ids: list[str]) -> list[str]:
    """The deployments whose replicas may load these shared deployments' adapters
    (`hosting.adapter_hosts`: of their models' base, the platform's or the same
    organisation's, on an engine that holds adapters, as the reconciler chooses them)."""
    if not shared_ids:
        return []
    shared = (
        select(ModelRow.base_model_id, DeploymentRow.org_id)
        .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
        .where(DeploymentRow.id.in_(shared_ids), DeploymentRow.sharing == sharing.SHARED)
    )
    rows = (await session.execute(shared)).all()
    owners = [Owner(base, org) for base, org in rows if base is not None]
    found = await adapter_hosts(session, owners)
    return sorted({host.id for hosts in found.values() for host in hosts})
