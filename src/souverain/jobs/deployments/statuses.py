"""What a deployment's status says after a reconciler round, and why a replica must leave
where it runs: pure, from the rows and the placer's snapshot."""

from __future__ import annotations

from typing import NamedTuple

from souverain.core.node_identity import must_leave
from souverain.core.policy import Policy, exclusion
from souverain.core.status import DEPLOYMENT_FAILING
from souverain.db.tables import DeploymentRow, ReplicaRow
from souverain.jobs.deployments import autoscaling
from souverain.scheduler.placer import Placer


class Status(NamedTuple):
    status: str
    reason: str
    remove: bool = False  # a deleted deployment with no replica left: its row goes


def worth_auditing(before: str, after: str) -> bool:
    """Entering or leaving a failure is an event; starting and scaling are not."""
    return before != after and bool({before, after} & DEPLOYMENT_FAILING)


def status_of(
    deployment: DeploymentRow, live: list[ReplicaRow], desired: int, unschedulable: str
) -> Status:
    ready = sum(1 for r in live if r.state == "ready")
    failed = [r for r in live if r.state == "failed"]
    if deployment.deleted:
        return Status("deleting", f"stopping {len(live)} replica(s)", remove=not live)
    if desired == 0:
        return Status("stopped", stopped_reason(deployment))
    if failed and len(failed) == len(live):
        return Status("failed", failed[0].reason or "every engine failed to start")
    if failed:
        return Status(
            "degraded",
            f"{ready}/{desired} replicas ready, {len(failed)} failed: {failed[0].reason}",
        )
    if unschedulable:
        return Status("unschedulable", unschedulable)
    if ready >= desired:
        return Status("ready", f"{ready}/{desired} replicas ready")
    return Status("starting", f"{ready}/{desired} replicas ready")


def stopped_reason(deployment: DeploymentRow) -> str:
    if autoscaling.limits_of(deployment).max_replicas > 0:
        return "scaled to zero while idle; the next request starts a replica"
    return "scaled to zero"


def lost_node_reason(replica: ReplicaRow) -> str:
    return f"node {(replica.node_id or '')[:12]} lost"


def leave_reason(replica: ReplicaRow, policy: Policy, placer: Placer) -> str | None:
    """Why a replica must stop where it is: its datacenter is gone or no longer allowed, its
    node left the cluster (Ray would restart the actor only inside that datacenter, and
    there may be no node left there), or it serves in clear (adopted from before TLS)."""
    datacenter = placer.snapshot.datacenters.get(replica.datacenter_id)
    if datacenter is None:
        return "datacenter removed"
    excluded = exclusion(policy, datacenter.site)
    if excluded is not None:
        return excluded
    if replica.node_id is not None and replica.node_id not in placer.alive_nodes:
        return lost_node_reason(replica)
    refusal = placer.refused.get(replica.node_id or "")
    if refusal is not None and must_leave(refusal):
        return f"node {(replica.node_id or '')[:12]} refused: {refusal}"
    if replica.url and not replica.url.startswith("https://"):
        return "serves without TLS (started before TLS to engines): replaced"
    return None
