"""Whether a node is who it says it is: the datacenter label it declared at join against the
one its Ray certificate binds it to, that certificate's end, and its clock.

A node's label is its own word; its certificate is the head's (`souverain node certify
--datacenter`). The controller reads the certificate the node's raylet presents on its own
address, and asks the node for its time (`cluster/node_identity.py`); these pure checks
turn what was measured into the reason a node gets no work, shown in `souverain nodes`, in
each unschedulable deployment's reasons, and audited.

The clock bound: certificates, leases, audit timestamps and usage records all compare
times taken on different hosts; beyond a minute a node's records would no longer line up
with the control plane's (and a node far behind would take certificates that have ended).
The check never accuses a node wrongly: the node's time must fall outside the window from
just before it was asked, less the bound, to just after it answered, plus the bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

MAX_CLOCK_OFFSET_S = 60.0
RENEW_BEFORE = timedelta(days=30)
NOT_MEASURED = "clock not measured yet"  # a node just seen: no work until it answers
LABEL_NOT_CERTIFIED = "label not certified"
CLOCK_OFF = "clock off"


@dataclass(frozen=True)
class ClockReading:
    """The node's time, and the controller's just before asking and just after the answer
    (all seconds since the epoch)."""

    asked_at: float
    node_time: float
    answered_at: float


@dataclass(frozen=True)
class NodeIdentity:
    """What the controller measured of a live node (None where not measured yet)."""

    certified_datacenter: str | None = None
    certificate_ends: datetime | None = None
    clock: ClockReading | None = None
    error: str | None = None  # the node's certificate could not be read, and why


def clock_offset(reading: ClockReading) -> float:
    """How far the node's clock is outside the window it was read in (0: inside)."""
    if reading.node_time < reading.asked_at:
        return reading.node_time - reading.asked_at
    if reading.node_time > reading.answered_at:
        return reading.node_time - reading.answered_at
    return 0.0


def why_untrusted(declared: str | None, identity: NodeIdentity, now: datetime) -> str | None:
    """None when the node may receive work; otherwise what stops it, with its fix. Reasons
    read "kind (detail)" so that a deployment's summary counts them by kind."""
    if declared is None:
        return None  # never placed on anyway ("no datacenter label")
    if identity.error is not None:
        return f"identity not verified ({identity.error})"
    certified = identity.certified_datacenter
    if certified != declared:
        return (
            f"{LABEL_NOT_CERTIFIED} (declares {declared}, certified "
            f"{certified or 'for no datacenter'}; rejoin under its certified label or certify "
            f"it for {declared})"
        )
    if identity.certificate_ends is not None and identity.certificate_ends - now < RENEW_BEFORE:
        return (
            f"certificate ends soon ({identity.certificate_ends:%Y-%m-%d}: renew it with "
            "`souverain node certify --renew` and rejoin)"
        )
    if identity.clock is None:
        return f"{NOT_MEASURED} (the node has not answered)"
    offset = clock_offset(identity.clock)
    if abs(offset) > MAX_CLOCK_OFFSET_S:
        side = "ahead of" if offset > 0 else "behind"
        return (
            f"{CLOCK_OFF} ({abs(offset):.0f}s {side} the controller's, more than "
            f"{MAX_CLOCK_OFFSET_S:.0f}s: synchronise it with NTP)"
        )
    return None


def must_leave(refusal: str) -> bool:
    """Whether work already on a refused node is stopped, not only kept from coming: a node
    under a label it is not certified for, or with its clock off. A certificate near its
    end, a node not measured yet (as after a controller's restart) or a failed handshake
    keep what runs there."""
    return refusal.startswith((LABEL_NOT_CERTIFIED, CLOCK_OFF))
