"""Who may take a free slot of a replica: a fair share for each organisation, live before batch.

A replica decodes `slots` requests at once (llama-server's `--parallel`; 1 for
llama-cpp-python). Each server process counts, per replica, the requests it has in flight
by organisation and kind (live request or batch line), and when each organisation and live
traffic last held a slot there. One rule (`may_take`) says from these whether a request may
take a free slot now:

* an organisation alone on a replica may use every slot;
* while other organisations wait for the replica (at the same priority), an organisation
  that holds its fair share (the slots ÷ the organisations contending, rounded up) takes no
  more: the slots that free go to those holding fewer (the fair queue serves them first);
* while another organisation has used the replica lately (`neighbour_s`), one organisation
  leaves it one slot in eight (`headroom`), so that the neighbour's next request starts at
  once, beside the burst, instead of waiting for one of it to end;
* a live request of an organisation that holds fewer of the replica's slots than another
  one asks the engine to read its prompt before the running streams' next step
  (`outnumbered`, llama-server's `prefill_first`, scripts/patches/llama-server-scheduling.patch):
  beside a burst, its first token then waits for its own prompt and at most the step in
  progress, not for a step of every stream of the burst;
* while live traffic is present (a live request in flight, or one that ended less than
  `live_s` ago), batch lines hold at most `batch_share` of the slots and never the last
  one: a live request finds a slot at once and is decoded beside fewer lines (on CPU
  llama.cpp every line beside it slows it; docs/benchmarks.md). On a one-slot engine that
  means batch lines wait while live requests follow each other.

The rule is pure (`Seen` in, yes or no out); `SlotShares` keeps the counts, with an
injected clock, and says when the next "lately" expires so that the queue can look again.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Set
from dataclasses import dataclass, field


@dataclass(frozen=True)
class SharePolicy:
    batch_share: float = 0.25  # of a replica's slots batch lines may hold beside live traffic
    neighbour_s: float = 10.0  # another organisation used the replica this recently: headroom
    live_s: float = 1.0  # live traffic counts as present this long after a live request ended


@dataclass(frozen=True)
class Seen:
    """One replica as an organisation asking for a slot of it sees it."""

    slots: int
    busy: int  # requests in flight on it (from this server process)
    held: int  # of them, the asking organisation's
    batch: int  # of them, batch lines (any organisation's)
    contending: int  # other organisations waiting for it at the asker's priority
    neighbours: bool  # another organisation holds a slot or held one lately
    live: bool  # live traffic present (in flight or lately)


def headroom(slots: int) -> int:
    """Slots one organisation leaves to a neighbour seen lately: one in eight (none on a
    one-slot engine, where the fair queue's turns are all there is)."""
    return 0 if slots < 2 else -(-slots // 8)


def fair_share(slots: int, organisations: int) -> int:
    """An organisation's share of a replica while `organisations` contend for it."""
    return max(1, -(-slots // max(1, organisations)))


def batch_cap(slots: int, batch_share: float) -> int:
    """Slots batch lines may hold while live traffic is present: never the last one."""
    return max(0, min(slots - 1, math.floor(slots * batch_share)))


def may_take(seen: Seen, *, batch: bool, policy: SharePolicy) -> bool:
    if seen.busy >= seen.slots:
        return False
    if batch and seen.live and seen.batch >= batch_cap(seen.slots, policy.batch_share):
        return False
    cap = seen.slots - headroom(seen.slots) if seen.neighbours else seen.slots
    if seen.contending:
        cap = min(cap, fair_share(seen.slots, seen.contending + 1))
    return seen.held < cap


@dataclass
class _Replica:
    held: Counter[str] = field(default_factory=Counter)  # organisation -> in flight
    batch: int = 0
    seen: dict[str, float] = field(default_factory=dict)  # organisation -> last release
    live_seen: float = -math.inf  # when a live request last released a slot


class SlotShares:
    """Requests in flight per replica, by organisation and kind; who used it lately."""

    def __init__(
        self, policy: SharePolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or SharePolicy()
        self._clock = clock
        self._replicas: dict[str, _Replica] = {}

    def held(self, replica_id: str, org: str) -> int:
        replica = self._replicas.get(replica_id)
        return replica.held[org] if replica is not None else 0

    def holding(self) -> dict[tuple[str, str], int]:
        """(replica, organisation) -> requests in flight, for those with any."""
        return {
            (replica_id, org): n
            for replica_id, replica in self._replicas.items()
            for org, n in replica.held.items()
            if n
        }

    def outnumbered(self, replica_id: str, org: str) -> bool:
        """Whether another organisation holds more of the replica's slots than `org`: then
        `org`'s next live request asks the engine to read its prompt before the others'
        next step (`prefill_first`), so that its first token does not wait for a step of
        every stream of the burst beside it."""
        replica = self._replicas.get(replica_id)
        if replica is None:
            return False
        mine = replica.held[org]
        return any(n > mine for other, n in replica.held.items() if other != org)

    def take(self, replica_id: str, org: str, *, batch: bool) -> None:
        replica = self._replicas.setdefault(replica_id, _Replica())
        replica.held[org] += 1
        replica.batch += batch

    def give_back(self, replica_id: str, org: str, *, batch: bool) -> None:
        replica = self._replicas.get(replica_id)
        if replica is None or not replica.held[org]:
            return
        now = self._clock()
        replica.held[org] -= 1
        if not replica.held[org]:
            del replica.held[org]
        replica.batch -= batch
        replica.seen[org] = now
        if not batch:
            replica.live_seen = now
        for idle in [o for o, t in replica.seen.items() if now - t > self.policy.neighbour_s]:
            del replica.seen[idle]

    def may_take(
        self, replica_id: str, slots: int, busy: int, org: str, *, batch: bool, waiting: Set[str]
    ) -> bool:
        """Whether `org` may take a free slot of the replica now; `waiting` names the
        organisations with a request waiting for it at the asker's priority."""
        view = self.seen(replica_id, slots, busy, org, waiting)
        return may_take(view, batch=batch, policy=self.policy)

    def seen(self, replica_id: str, slots: int, busy: int, org: str, waiting: Set[str]) -> Seen:
        replica = self._replicas.get(replica_id) or _Replica()
        now, policy = self._clock(), self.policy
        lately = {o for o, t in replica.seen.items() if now - t <= policy.neighbour_s}
        live_in_flight = sum(replica.held.values()) - replica.batch
        return Seen(
            slots=slots,
            busy=busy,
            held=replica.held[org],
            batch=replica.batch,
            contending=len(waiting - {org}),
            neighbours=bool((set(replica.held) | lately) - {org}),
            live=live_in_flight > 0 or now - replica.live_seen <= policy.live_s,
        )

    def next_change_in(self) -> float | None:
        """Seconds until the next 'lately' expires (then a refused slot may be given)."""
        now, policy = self._clock(), self.policy
        ends = [t + policy.neighbour_s for r in self._replicas.values() for t in r.seen.values()]
        ends += [r.live_seen + policy.live_s for r in self._replicas.values()]
        future = [end - now for end in ends if end > now]
        return min(future) if future else None

    def forget(self, live: Set[str]) -> None:
        """Drop replicas that no longer route and hold nothing."""
        for gone in set(self._replicas) - set(live):
            if not self._replicas[gone].held:
                del self._replicas[gone]
