"""How a succeeded job's model is served: on the shared replicas of its base where one can
take its adapter now, else on a replica of its own.

A shared deployment (jobs/deployments/sharing.py) gives the model no engine of its own: the
base's replicas take the adapter beside the others they serve (sharing.py says how), and a
request for the model meanwhile waits, bounded, for it (gateway/demand.py) instead of a 503. A dedicated
one starts a whole engine (the base weights, slots, start-up time) for a few MB of adapter,
so it is the fallback only, for when no replica could host the adapter: none of its base
that may hold adapters (a llama-server replica of a deployment of the platform's or of the
job's organisation: `sharing.can_host`), none ready where the owner's placement policy
allows (the job's jurisdictions ∩ its organisation's ceiling), or every such one at its
caps. A tenant who wants replicas of its own deploys the model with `sharing: dedicated`
(`souverain deployments create NAME --model ft:…`) and may scale the shared one to 0.
"""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.policy import exclusion
from souverain.core.status import ReplicaState
from souverain.db.jobs import FineTuningJobRow
from souverain.db.tables import DatacenterRow, DeploymentRow, ModelRow, ReplicaRow
from souverain.fleet.datacenters import site_of
from souverain.jobs.deployments import sharing
from souverain.jobs.deployments.service import placement_policy
from souverain.node.hosted_adapters import RUNTIMES


async def sharing_for(
    session: AsyncSession, job: FineTuningJobRow, base: ModelRow, deployment: DeploymentRow
) -> str:
    """`shared` when a ready replica of the base, able to hold adapters, runs where
    `deployment` (the new model's, not yet added) may be served and has room under the
    caps for one more of the organisation's adapters; else `dedicated`."""
    policy = await placement_policy(session, deployment=deployment)
    owned = await sharing.org_models(session, job.org_id)
    query = (
        select(ReplicaRow, DeploymentRow, DatacenterRow)
        .join(DeploymentRow, DeploymentRow.id == ReplicaRow.deployment_id)
        .join(DatacenterRow, DatacenterRow.id == ReplicaRow.datacenter_id)
        .where(
            DeploymentRow.model_id == base.id,
            DeploymentRow.deleted.is_(False),
            or_(DeploymentRow.org_id.is_(None), DeploymentRow.org_id == job.org_id),
            ReplicaRow.state == ReplicaState.READY,
            ReplicaRow.draining_since.is_(None),
            ReplicaRow.runtime.in_(RUNTIMES),  # as the node reported it: loads adapters
        )
    )
    for replica, host, datacenter in (await session.execute(query)).all():
        if not sharing.can_host(host, base):
            continue
        if exclusion(policy, site_of(datacenter)) is not None:
            continue
        held = set(sharing.held(replica))
        if len(held) < sharing.PER_REPLICA and len(held & owned) < sharing.PER_ORG:
            return sharing.SHARED
    return sharing.DEDICATED
