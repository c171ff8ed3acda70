"""How a succeeded job's model is served: on the shared replicas of its base wherever a
deployment of the base will serve its adapter, else on a replica of its own.

A shared deployment (jobs/deployments/sharing.py) gives the model no engine of its own: the
base's replicas take the adapter beside the others they serve (sharing.py says how), and a
request for the model meanwhile waits, bounded, for it (gateway/demand.py) instead of a 503.
A dedicated one starts a whole engine (the base weights, slots, start-up time) for a few MB
of adapter, so it is the fallback only.

A deployment of the base hosts the model when it may hold adapters (a llama-server
deployment of the platform's or of the job's organisation: `hosting.adapter_hosts`) and:
- it has replicas (ready or starting, not draining): one of them runs where the owner's
  placement policy allows (the job's jurisdictions ∩ its organisation's ceiling), on an
  engine that loads adapters, under the caps (`READY`, or `STARTING`: it starts with the
  adapter or takes it once ready). Its replicas hold the same set wherever they run alike,
  so the replicas it has decide: one whose every replica is elsewhere or full would place
  a new one by carbon, not for this adapter;
- it has none but will have one (scaled to zero with a maximum, or a count not placed yet,
  and not failed or unschedulable), every known datacenter its own placement (its
  constraints ∩ its organisation's ceiling) allows is one the owner's policy allows too
  (it is placed by its own policy and carbon, not for this adapter), and its first
  replica would have room under the caps for the adapter beside those of the active
  shared models it hosts (`WAKING`): that replica starts with the adapter, and a request
  for the model wakes a base at zero as a request for the base does
  (catalog/routes.load_wakeable).
Otherwise (no such deployment) the model is `dedicated`. A tenant who wants replicas of its
own deploys the model with `sharing: dedicated` (`souverain deployments create NAME --model
ft:…`) and may scale the shared one to 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog.hosting import Owner, adapter_hosts
from souverain.core.policy import Policy, Site, exclusion
from souverain.core.status import DeploymentStatus, ReplicaState
from souverain.db.jobs import FineTuningJobRow
from souverain.db.tables import DatacenterRow, DeploymentRow, ModelRow, ReplicaRow
from souverain.fleet.datacenters import site_of
from souverain.jobs.deployments import sharing
from souverain.jobs.deployments.service import placement_policy
from souverain.node.hosted_adapters import RUNTIMES

# How the base serves a shared model, the best first: a ready replica of it loads the
# adapter now; one that is starting will serve it; none runs yet, one is to start.
READY, STARTING, WAKING = "ready", "starting", "waking"
_BEST_FIRST = (READY, STARTING, WAKING)
_CANNOT_START = frozenset({DeploymentStatus.FAILED, DeploymentStatus.UNSCHEDULABLE})


@dataclass(frozen=True)
class Serving:
    """`sharing` (shared or dedicated) and, for a shared model, `how` its base serves it."""

    sharing: str
    how: str = ""  # READY, STARTING or WAKING; "" for a dedicated one


async def sharing_for(
    session: AsyncSession, job: FineTuningJobRow, base: ModelRow, deployment: DeploymentRow
) -> Serving:
    """`shared` when a deployment of the base will serve the adapter where `deployment`
    (the new model's, not yet added) may be served; else `dedicated`."""
    policy = await placement_policy(session, deployment=deployment)
    owned = await sharing.org_models(session, job.org_id)
    sites = {dc.id: site_of(dc) for dc in (await session.execute(select(DatacenterRow))).scalars()}
    found: set[str] = set()
    owner = Owner(base.id, job.org_id)
    for host in (await adapter_hosts(session, [owner]))[owner]:
        how = await _how(session, host, policy, sites, owned)
        if how is not None:
            found.add(how)
    best = next((how for how in _BEST_FIRST if how in found), None)
    return Serving(sharing.DEDICATED) if best is None else Serving(sharing.SHARED, best)


async def _how(
    session: AsyncSession, host: DeploymentRow, policy: Policy, sites: Mapping[str, Site],
    owned: Set[str],
) -> str | None:  # fmt: skip
    """How `host` would serve an adapter under `policy`; None when it would not."""
    query = select(ReplicaRow).where(
        ReplicaRow.deployment_id == host.id,
        ReplicaRow.state.in_((ReplicaState.READY, ReplicaState.STARTING)),
        ReplicaRow.draining_since.is_(None),
    )
    replicas = list((await session.execute(query)).scalars())
    if replicas:
        states = {r.state for r in replicas if _may_take(r, policy, sites, owned)}
        return READY if READY in states else STARTING if states else None
    if host.status in _CANNOT_START or not (host.replicas > 0 or (host.max_replicas or 0) > 0):
        return None
    own = await placement_policy(session, deployment=host)
    where = [site for site in sites.values() if exclusion(own, site) is None]
    if not where or any(exclusion(policy, site) is not None for site in where):
        return None
    hosted = {model.id for _, model in await sharing.shared_of(session, host)}
    return None if sharing.cap_reached(hosted, owned) else WAKING


def _may_take(
    replica: ReplicaRow, policy: Policy, sites: Mapping[str, Site], owned: Set[str]
) -> bool:
    """A replica runs where `policy` allows, on an engine that loads adapters (as its node
    reported it; a starting one may not have said yet), with room under the caps."""
    site = sites.get(replica.datacenter_id)
    if site is None or exclusion(policy, site) is not None:
        return False
    unreported = replica.state == ReplicaState.STARTING and replica.runtime is None
    if replica.runtime not in RUNTIMES and not unreported:
        return False
    return not sharing.cap_reached(set(sharing.held(replica)), owned)
