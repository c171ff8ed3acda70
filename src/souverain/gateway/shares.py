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
* a batch line never takes a slot a live request waits for, and while live traffic is
  present (a live request in flight, or one that ended less than `live_s` ago) batch lines
  hold at most the replica's batch share of the slots and never the last one, so that a
  live request finds a slot at once and is decoded beside fewer lines. The share is the
  operator's `batch_share` if set, else by replica: none on a replica without GPUs (a CPU
  engine, where every line decoded beside a live request slows it: docs/benchmarks.md),
  a quarter on one with GPUs (where one live stream would otherwise idle the other slots);
* a batch line never stalls for ever: one that has waited `batch_max_wait_s` ("aged") may
  take a slot beside live traffic while no other batch line holds one of the replica, but
  never the last free slot (on a one-slot engine, its slot between two live requests). Its
  wait counts from the later of its arrival and the replica's last aged start, so that a
  replica gives at most one aged start per `batch_max_wait_s`: the lines of a batch all
  arrive together, and would otherwise follow each other into that slot for good.
  `batch_max_wait_s` 0 turns ageing off: with a batch share of 0, no batch line then runs
  beside live traffic.

The rule is pure (`Seen` in, yes or no out); `SlotShares` keeps the counts and each
replica's last aged start, with an injected clock, and says when the next "lately" expires
so that the queue can look again (the queue also looks again when its oldest batch line
ages, `ages_at`).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Set
from dataclasses import dataclass, field

CPU_BATCH_SHARE = 0.0  # a replica without GPUs: every line beside a live request slows it
GPU_BATCH_SHARE = 0.25


@dataclass(frozen=True)
class SharePolicy:
    # of a replica's slots batch lines may hold beside live traffic; None: by replica
    batch_share: float | None = None
    neighbour_s: float = 10.0  # another organisation used the replica this recently: headroom
    live_s: float = 1.0  # live traffic counts as present this long after a live request ended
    # a batch line waiting this long may take a slot anyway (one per replica per this
    # time); 0: never
    batch_max_wait_s: float = 30.0

    def batch_share_for(self, gpus: int) -> float:
        """The operator's share if set, else none on a CPU replica and a quarter with GPUs."""
        if self.batch_share is not None:
            return self.batch_share
        return GPU_BATCH_SHARE if gpus else CPU_BATCH_SHARE


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
    live_waiting: bool = False  # a live request waits for it
    gpus: int = 0  # its deployment's GPUs per replica; 0: a CPU engine
    aged_ago_s: float = math.inf  # since a batch line last took a slot of it by ageing


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


def may_take(seen: Seen, *, batch: bool, policy: SharePolicy, waited_s: float = 0.0) -> bool:
    """Whether the asker may take a free slot now; `waited_s`: how long it has waited."""
    if seen.busy >= seen.slots:
        return False
    if batch and not batch_may_take(seen, policy, waited_s):
        return False
    cap = seen.slots - headroom(seen.slots) if seen.neighbours else seen.slots
    if seen.contending:
        cap = min(cap, fair_share(seen.slots, seen.contending + 1))
    return seen.held < cap


def batch_may_take(seen: Seen, policy: SharePolicy, waited_s: float) -> bool:
    """Whether a batch line may take a free slot as far as live traffic goes: not one a live
    request waits for, within the batch share while live traffic is present, or as an aged
    line (`is_aged`)."""
    if seen.live_waiting:
        return is_aged(seen, policy, waited_s)
    if not seen.live:
        return True
    cap = batch_cap(seen.slots, policy.batch_share_for(seen.gpus))
    return seen.batch < cap or is_aged(seen, policy, waited_s)


def is_aged(seen: Seen, policy: SharePolicy, waited_s: float) -> bool:
    """Whether a batch line may take a slot beside live traffic by having waited long: it
    has waited `batch_max_wait_s` (0: never), counted from the later of its arrival and the
    replica's last aged start; no batch line holds a slot of the replica; and the slot is
    not its last free one, unless the engine has one slot and no live request waits."""
    bound = policy.batch_max_wait_s
    if not bound or min(waited_s, seen.aged_ago_s) < bound or seen.batch:
        return False
    free = seen.slots - seen.busy
    return free > 1 or (seen.slots == 1 and not seen.live_waiting)


@dataclass
class _Replica:
    held: Counter[str] = field(default_factory=Counter)  # organisation -> in flight
    batch: int = 0
    seen: dict[str, float] = field(default_factory=dict)  # organisation -> last release
    live_seen: float = -math.inf  # when a live request last released a slot
    aged_at: float = -math.inf  # when a batch line last took a slot by ageing


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

    def now(self) -> float:
        return self._clock()

    def may_take(
        self, replica_id: str, slots: int, busy: int, org: str, *, batch: bool,
        waiting: Set[str], gpus: int = 0, live_waiting: bool = False,
        since: float | None = None,
    ) -> bool:  # fmt: skip
        """Whether `org` may take a free slot of the replica now; `waiting` names the
        organisations with a request waiting for it at the asker's priority, `live_waiting`
        says whether a live request waits for it, `since` when the asker began waiting
        (None: it has just arrived)."""
        view = self.seen(replica_id, slots, busy, org, waiting, gpus=gpus,
                         live_waiting=live_waiting)  # fmt: skip
        waited_s = 0.0 if since is None else self._clock() - since
        return may_take(view, batch=batch, policy=self.policy, waited_s=waited_s)

    def seen(
        self, replica_id: str, slots: int, busy: int, org: str, waiting: Set[str], *,
        gpus: int = 0, live_waiting: bool = False,
    ) -> Seen:  # fmt: skip
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
            live_waiting=live_waiting,
            gpus=gpus,
            aged_ago_s=now - replica.aged_at,
        )

    def took_aged(self, replica_id: str) -> None:
        """A batch line took a slot of the replica by ageing: the next one may not before
        another `batch_max_wait_s`."""
        self._replicas.setdefault(replica_id, _Replica()).aged_at = self._clock()

    def ages_at(self, replica_id: str, since: float) -> float | None:
        """When a batch line waiting since `since` ages on the replica: `batch_max_wait_s`
        after the later of that and the replica's last aged start (None: ageing is off)."""
        bound = self.policy.batch_max_wait_s
        if not bound:
            return None
        replica = self._replicas.get(replica_id)
        return max(since, replica.aged_at if replica is not None else since) + bound

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
