"""Fair queueing in front of the replicas: one tenant's burst cannot take every slot.

Each replica serves at most its engine's number of slots at once (llama-server's
`--parallel`; llama-cpp-python's server decodes one request at a time: 1). A request that
finds no slot it may take waits here, in its organisation's line; when a slot frees, the
organisation holding the fewest slots of the replicas it waits for is served first (then
the one served longest ago), first come first served within each. Which slot an
organisation may take is `gateway/shares.py`'s rule: alone it may use every slot; while
others wait it holds at most its fair share, so their requests go before its extra ones;
while a neighbour used the replica lately it leaves one slot in eight, so that the
neighbour's next request starts at once, decoded beside the burst.
So a tenant with 40 requests in flight delays another tenant's request by about one
request's time at most, not forty. Lines are bounded (per organisation and in all): beyond
them, or after waiting too long, the answer is 429 with Retry-After, never an unbounded
pile. Batch lines wait in lines of their own, served only with slots no live request is
waiting for, and hold at most a share of a replica's slots (never the last one) while live
traffic is present, none on a replica without GPUs: batches use what live traffic leaves.
A batch line that has waited long (`SharePolicy.batch_max_wait_s`, counted from the later
of its arrival and the replica's last such start) may take one slot beside live traffic all
the same, so that a batch never stalls for ever yet takes such a slot at most once per that
time on each replica; the queue looks again when its oldest line ages. Each server process
keeps its own queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass, field

from souverain.catalog.routes import ReplicaRoute
from souverain.core.errors import RateLimitedError
from souverain.gateway.routing import RouteTable

Claim = Callable[[ReplicaRoute], None]
_Contending = Mapping[str, Set[str]]  # replica -> organisations waiting for it


@dataclass
class _Waiter:
    routes: list[ReplicaRoute]
    exclude: Set[str]
    claim: Claim
    since: float  # when it began waiting (the shares' clock)
    granted: asyncio.Future[ReplicaRoute] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class FairQueue:
    def __init__(
        self, table: RouteTable, *, per_org: int = 64, total: int = 1024, wait_s: float = 120.0
    ) -> None:
        self._table = table
        self._per_org = per_org
        self._total = total
        self._wait_s = wait_s
        # (priority, organisation) -> its line; priority 0 live requests, 1 batch lines
        self._lines: dict[tuple[int, str], deque[_Waiter]] = {}
        self._served: dict[tuple[int, str], int] = {}  # -> when it last got a slot
        self._tick = 0
        self._waiting = 0
        self._wake: asyncio.TimerHandle | None = None
        table.on_release = self.dispatch

    @property
    def waiting(self) -> int:
        return self._waiting

    def waiting_for(self, org: str, *, batch: bool = False) -> int:
        return len(self._lines.get((int(batch), org), ()))

    def waiting_by_deployment(self) -> Counter[str]:
        """Requests waiting, counted against each deployment whose replicas could serve them
        (the load the autoscaler sees; gateway/demand.py): for a fine-tuned model on shared
        replicas, its base's, and its own shared deployment's (its adapter is wanted)."""
        counts: Counter[str] = Counter()
        for line in self._lines.values():
            for waiter in line:
                if not waiter.granted.done():
                    counts.update({route.serving_deployment_id for route in waiter.routes}
                                  | {r.deployment_id for r in waiter.routes
                                     if r.host_deployment_id})  # fmt: skip
        return counts

    def _live_waiting(self) -> bool:
        return any(priority == 0 and line for (priority, _), line in self._lines.items())

    async def acquire(
        self,
        org: str,
        routes: list[ReplicaRoute],
        exclude: Set[str],
        claim: Claim,
        *,
        batch: bool = False,
    ) -> ReplicaRoute | None:
        """A replica with a free slot, claimed for the caller; None when every candidate
        was already tried. Waits in the organisation's line when all are busy."""
        if not [r for r in routes if r.replica_id not in exclude]:
            return None
        line_key = (int(batch), org)
        found = self._table.pick_free(
            routes, exclude, org, batch=batch, waiting=self._contending(int(batch))
        )
        if (
            found is not None
            and not self._lines.get(line_key)
            and not (batch and self._live_waiting())
        ):
            self._grant(line_key, found, claim)
            return found
        self._check_room(line_key)
        waiter = _Waiter(routes, exclude, claim, self._table.shares.now())
        self._lines.setdefault(line_key, deque()).append(waiter)
        self._waiting += 1
        self.dispatch()  # a slot may be free for it already
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.granted), self._wait_s)
        except TimeoutError:
            raise RateLimitedError(
                f"Every replica of this model stayed busy for {self._wait_s:.0f}s; retry later.",
                retry_after_s=5,
            ) from None
        finally:
            self._forget(line_key, waiter)

    def _check_room(self, line_key: tuple[int, str]) -> None:
        if len(self._lines.get(line_key, ())) >= self._per_org * (1 + 15 * line_key[0]):
            raise RateLimitedError(
                f"Your organisation already has {self._per_org} requests waiting for this "
                "model's replicas; retry when some have been answered.",
                retry_after_s=1,
            )
        if self._waiting >= self._total:
            raise RateLimitedError(
                "Too many requests are waiting for replicas; retry shortly.", retry_after_s=1
            )

    def _forget(self, line_key: tuple[int, str], waiter: _Waiter) -> None:
        line = self._lines.get(line_key)
        if line is not None and waiter in line:
            line.remove(waiter)
            self._waiting -= 1
        if line is not None and not line:
            del self._lines[line_key]
        if not waiter.granted.done():
            waiter.granted.cancel()  # once granted, the slot is the caller's exchange's

    def _grant(self, line_key: tuple[int, str], route: ReplicaRoute, claim: Claim) -> None:
        claim(route)
        self._tick += 1
        self._served[line_key] = self._tick
        if len(self._served) > 4 * self._total:  # forget organisations long idle
            for idle in sorted(self._served, key=self._served.__getitem__)[: self._total]:
                del self._served[idle]

    def _contending(self, priority: int) -> _Contending:
        """Replica -> the organisations whose next request at `priority` may go there."""
        waiting: dict[str, set[str]] = {}
        for (level, org), line in self._lines.items():
            if level == priority and line:
                for route in line[0].routes:
                    if route.replica_id not in line[0].exclude:  # one it will not use
                        waiting.setdefault(route.replica_id, set()).add(org)
        return waiting

    def _holding(self, line_key: tuple[int, str]) -> int:
        """Slots the organisation holds on the replicas its next request may use."""
        shares, org = self._table.shares, line_key[1]
        return sum(shares.held(route.replica_id, org) for route in self._lines[line_key][0].routes)

    def dispatch(self) -> None:
        """Hand free slots to waiting organisations: live before batch, the one holding the
        fewest slots first, then the one served longest ago, first come first served within
        each. Called whenever a slot frees, when a request starts waiting, and when a
        neighbour's or live traffic's 'lately' runs out."""
        while self._lines and self._serve_one():
            pass
        self._wake_later()

    def _serve_one(self) -> bool:
        for line_key in list(self._lines):
            line = self._lines[line_key]
            while line and line[0].granted.done():  # cancelled while waiting
                line.popleft()
                self._waiting -= 1
            if not line:
                del self._lines[line_key]
        order = sorted(self._lines, key=lambda k: (k[0], self._holding(k), self._served.get(k, -1)))
        contending = {level: self._contending(level) for level in {k[0] for k in order}}
        for line_key in order:
            line = self._lines[line_key]
            waiter = line[0]
            route, aged = self._pick(line_key, waiter, contending)
            if route is None:
                continue
            line.popleft()
            self._waiting -= 1
            if not line:
                del self._lines[line_key]
            self._grant(line_key, route, waiter.claim)
            if aged:
                self._table.shares.took_aged(route.replica_id)
            waiter.granted.set_result(route)
            return True
        return False

    def _pick(
        self, line_key: tuple[int, str], waiter: _Waiter, contending: Mapping[int, _Contending]
    ) -> tuple[ReplicaRoute | None, bool]:
        """A replica with a slot the line's first request may take, and whether it is a
        batch line's only by ageing (a slot it may take without is chosen first)."""
        batch = bool(line_key[0])

        def ask(since: float | None) -> ReplicaRoute | None:
            return self._table.pick_free(
                waiter.routes, waiter.exclude, line_key[1], batch=batch,
                waiting=contending[line_key[0]], live_waiting=contending.get(0, {}).keys(),
                since=since,
            )  # fmt: skip

        route = ask(None)
        if route is not None or not batch:
            return route, False
        route = ask(waiter.since)
        return route, route is not None

    def _wake_later(self) -> None:
        """Requests left waiting may be refused only because someone used a replica lately,
        or a batch line only because it has not waited long enough yet: look again when
        either runs out (nothing else would call `dispatch` then)."""
        if self._wake is not None:
            self._wake.cancel()
            self._wake = None
        delay = self.next_change_in()
        if delay is not None:
            with contextlib.suppress(RuntimeError):  # no loop: nobody can be waiting
                self._wake = asyncio.get_running_loop().call_later(delay + 0.01, self.dispatch)

    def next_change_in(self) -> float | None:
        """Seconds until a waiting request may be served without a slot freeing: a
        neighbour's or live traffic's 'lately' runs out, or a line's first batch line ages
        on one of its replicas (`SlotShares.ages_at`: then it may take a slot beside live
        traffic)."""
        if not self._lines:
            return None
        shares = self._table.shares
        ends = [shares.ages_at(route.replica_id, line[0].since)
                for (level, _), line in self._lines.items() if level and line
                for route in line[0].routes if route.replica_id not in line[0].exclude]  # fmt: skip
        now, lately = shares.now(), shares.next_change_in()
        changes = [end - now for end in ends if end is not None and end > now]
        return min(changes + ([lately] if lately is not None else []), default=None)
