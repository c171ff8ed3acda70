"""How many replicas a deployment wants, from the load the gateways report: a pure function.

    decide(limits, state, busy, now) -> Decision

`busy` is the deployment's outstanding requests summed over every server process: those
an engine is answering and those waiting in a fair queue for one of its replicas (or, at
zero replicas, for one to start). The deployment wants `ceil(busy / target)` replicas,
never fewer than its minimum, never more than its maximum; at least one while anyone
waits, whatever the minimum.

Hysteresis, so that a sawtooth load does not thrash:
* up only after `up_readings` readings in a row above what the current count carries;
  from zero at once (someone is waiting for the first replica);
* from zero to one replica (or the minimum) at once: someone waits for it; a crowd waiting
  at zero (whoever sent it, before any rate limit) cannot make it jump to the maximum;
* down only once the load has wanted fewer replicas for `scale_down_idle_s` without a
  break, then straight to what the load needs (to zero only once nothing is outstanding).
  A released replica drains first (jobs/deployments/draining.py): it takes no new request
  and finishes those it has, so a request never fails because of a scale-down. The period
  starts only once no replica is still starting: a replica is not released before it
  could serve.
* the idle period counts the drain: once a scale-down is `lead_s` (the drain's quiet
  wait) or less away, `routed_ahead` says how many replicas should still take new
  requests, and the others begin to drain then, so that they stop when the period ends
  rather than a drain after it. If the load comes back first, they are taken back (warm).
  Never the last one: a deployment released to zero drains after the period, as its
  requests have nowhere else to go meanwhile.
A count outside the limits (the limits changed) is brought inside them at once.

No clock, no database: the caller passes `now` and keeps the returned state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from datetime import datetime

UP_READINGS = 2  # readings in a row above target before adding replicas


@dataclass(frozen=True)
class Limits:
    min_replicas: int
    max_replicas: int
    target: float  # outstanding requests per replica
    scale_down_idle_s: float
    up_readings: int = UP_READINGS


@dataclass(frozen=True)
class ScaleState:
    wanted: int
    above: int = 0  # readings in a row that wanted more than `wanted`
    below_since: datetime | None = None  # since when the load wanted fewer


@dataclass(frozen=True)
class Decision:
    state: ScaleState
    changed: bool
    reason: str  # why the count changed; empty when it did not


def needed(limits: Limits, busy: float) -> int:
    """Replicas that carry `busy` outstanding requests at the target, within the limits:
    one at least while anything is outstanding (a maximum of 0 is a stopped deployment)."""
    count = max(1, math.ceil(busy / limits.target)) if busy > 0 else 0
    return min(max(count, limits.min_replicas), limits.max_replicas)


def decide(
    limits: Limits, state: ScaleState, busy: float, now: datetime, *, starting: bool = False
) -> Decision:
    """The wanted replica count after one reading of the load (`starting`: some replica
    of the deployment is not ready yet)."""
    clamped = min(max(state.wanted, limits.min_replicas), limits.max_replicas)
    if clamped != state.wanted:
        return _change(
            clamped,
            f"limits changed: {limits.min_replicas} to {limits.max_replicas} replicas",
        )
    want = needed(limits, busy)
    if want > state.wanted:
        return _up(limits, state, busy, want)
    if want < state.wanted and not starting:
        return _down(limits, state, busy, want, now)
    return Decision(ScaleState(state.wanted), False, "")


def routed_ahead(
    limits: Limits, state: ScaleState, busy: float, now: datetime, *, lead_s: float
) -> int | None:
    """Replicas that should still take new requests when a scale-down is at most `lead_s`
    away (`state` as `decide` left it, unchanged this reading); None when none is that near.
    """
    if state.below_since is None:
        return None
    keep = max(1, needed(limits, busy))
    idle_s = (now - state.below_since).total_seconds()
    if keep >= state.wanted or idle_s < limits.scale_down_idle_s - lead_s:
        return None
    return keep


def _up(limits: Limits, state: ScaleState, busy: float, want: int) -> Decision:
    above = state.above + 1
    if state.wanted == 0:  # one replica (or the minimum) at once; more by the rule above
        first = min(max(1, limits.min_replicas), limits.max_replicas)
        return _change(first, f"{_requests(busy)} waiting with no replica: waking up")
    if above < limits.up_readings:
        return Decision(ScaleState(state.wanted, above=above), False, "")
    return _change(
        want,
        f"{_requests(busy)} outstanding for {above} readings, above the target of "
        f"{limits.target:g} per replica on {state.wanted}",
    )


def _down(limits: Limits, state: ScaleState, busy: float, want: int, now: datetime) -> Decision:
    since = state.below_since or now
    idle_s = (now - since).total_seconds()
    if idle_s < limits.scale_down_idle_s:
        return Decision(replace(state, above=0, below_since=since), False, "")
    what = (
        "idle" if busy == 0 else f"{_requests(busy)} outstanding, fewer than {state.wanted} carry"
    )
    return _change(
        want, f"{what} for {idle_s:.0f}s (scale_down_idle_s {limits.scale_down_idle_s:g})"
    )


def _change(wanted: int, reason: str) -> Decision:
    return Decision(ScaleState(wanted), True, reason)


def _requests(busy: float) -> str:
    count = f"{busy:g}"
    return f"{count} request" if busy == 1 else f"{count} requests"
