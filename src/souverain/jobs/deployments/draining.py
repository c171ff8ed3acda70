"""Scaling down without failing a request: a replica chosen for release drains first.

    plan(live, desired, in_flight=…, now=…) -> Plan

A ready replica the deployment no longer needs is not stopped: it is marked draining
(`replicas.draining_since`). Every server drops it from its routes at its next change
check (`replica_refresh_s`), so it gets no new request, and reports how many of its own
requests are still on replicas out of its routes (`deployment_demand.draining`). The
replica is stopped once

* `grace_s` has passed since it began to drain (every server has seen that it drains and
  reported what it still has there: a request routed just before is counted), and the
  servers report nothing left on the deployment's draining replicas; or
* `timeout_s` has passed, whatever is left (a stream that never ends must not hold an
  engine for ever); or
* it stopped being ready (an engine that exited answers nothing).

A scale-down that is near (`routed`, fewer than `desired`: scheduler/autoscale.py's
`routed_ahead`) drains its replicas ahead: out of the routes already, still counted in
`desired` (`held`), so none is stopped, nor a new one placed, before the count drops. By
then they have drained for the quiet wait and stop at once: the idle period counts the
drain instead of the drain coming on top of it.

A replica that is not ready (starting, failed) serves nothing and is stopped at once. If
the load comes back while a replica drains, it is taken back (`undrain`) rather than a new
one started: it is warm. A deleted deployment's replicas are stopped at once (the routes
drop a deleted deployment's replicas at the same moment).

Pure: the caller gives the clock's reading and the servers' report, and acts on the plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from souverain.core.status import ReplicaState
from souverain.db.tables import ReplicaRow

DRAIN_GRACE_S = 5.0  # above the servers' replica_refresh_s plus their demand_interval_s
DRAIN_TIMEOUT_S = 120.0  # the longest a replica drains


@dataclass
class Plan:
    serving: list[ReplicaRow] = field(default_factory=list)  # kept, in the routes
    drain: list[ReplicaRow] = field(default_factory=list)  # to drain from now on
    undrain: list[ReplicaRow] = field(default_factory=list)  # needed again: back in the routes
    stop: list[tuple[ReplicaRow, str]] = field(default_factory=list)  # now, with why
    draining: int = 0  # replicas still draining after this round
    held: list[ReplicaRow] = field(default_factory=list)  # draining ahead, still counted


def plan(
    live: list[ReplicaRow], desired: int, *, in_flight: int, now: datetime,
    routed: int | None = None, grace_s: float = DRAIN_GRACE_S,
    timeout_s: float = DRAIN_TIMEOUT_S,
) -> Plan:  # fmt: skip
    """What to do with a deployment's replicas so that `desired` of them serve (`routed` of
    them in the routes when a scale-down is near: the others drain ahead)."""
    serve = desired if routed is None else min(routed, desired)
    result = Plan(serving=[r for r in live if r.draining_since is None])
    draining = sorted(
        (r for r in live if r.draining_since is not None),
        key=lambda r: r.draining_since or now,
        reverse=True,  # the most recently drained is taken back first
    )
    while len(result.serving) < serve and draining and draining[0].state == ReplicaState.READY:
        result.undrain.append(draining[0])
        result.serving.append(draining.pop(0))
    for extra in pick_extras(result.serving, serve):
        result.serving.remove(extra)
        if extra.state == ReplicaState.READY:
            result.drain.append(extra)
        else:
            result.stop.append((extra, "scaled down"))
    # draining replicas that may stop: those beyond `desired` (none while draining ahead)
    spare = len(result.serving) + len(draining) + len(result.drain) - desired
    kept = list(result.drain)
    for replica in draining:
        reason = _drained(replica, in_flight, now, grace_s, timeout_s)
        if reason is not None and (spare > 0 or replica.state != ReplicaState.READY):
            result.stop.append((replica, reason))
            spare -= 1
        else:
            kept.append(replica)
    result.draining = len(kept)
    if serve < desired:  # draining ahead: they still count until the count drops
        result.held = kept
    return result


def _drained(
    replica: ReplicaRow, in_flight: int, now: datetime, grace_s: float, timeout_s: float
) -> str | None:
    """Why a draining replica may stop now; None while it must go on draining."""
    assert replica.draining_since is not None
    elapsed = (now - replica.draining_since).total_seconds()
    if replica.state != ReplicaState.READY:
        return f"scaled down: it stopped being ready while draining ({replica.state})"
    if elapsed >= timeout_s:
        return (
            f"scaled down: drained for {elapsed:.0f}s (the limit) with {in_flight} "
            "request(s) left on the deployment's draining replicas"
        )
    if elapsed >= grace_s and in_flight == 0:
        return f"scaled down: drained in {elapsed:.1f}s"
    return None


def pick_extras(live: list[ReplicaRow], desired: int) -> list[ReplicaRow]:
    """Replicas to release when there are too many: the least ready and newest first."""
    surplus = len(live) - desired
    if surplus <= 0:
        return []
    ranked = sorted(
        live, key=lambda r: (r.state == "ready", -r.created_at.timestamp() if r.created_at else 0)
    )
    return ranked[:surplus]
