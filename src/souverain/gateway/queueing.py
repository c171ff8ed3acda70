"""Fair queueing in front of the replicas: one tenant's burst cannot take every slot.

Each replica serves at most its engine's number of slots at once (llama-cpp-python's
server decodes one request at a time: 1). A request that finds every compliant replica
busy waits here, in its organisation's line; when a slot frees, the organisations with
someone waiting are served in turn, the one served longest ago first (round robin), first
come first served within each.
So a tenant with 40 requests in flight delays another tenant's request by about one
request's time, not forty. On a replica of several slots (llama-server) no organisation
holds more than all but one in eight of them (`routing.reserve`): a burst leaves room, and
another tenant's request starts at once, decoded beside the burst, instead of waiting for
one of it to end. Lines are bounded (per organisation and in all): beyond them,
or after waiting too long, the answer is 429 with Retry-After, never an unbounded pile.
Batch lines wait in lines of their own, served only with slots no live request is
waiting for: batches use what live traffic leaves. Each server process keeps its own queue.
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Callable, Set
from dataclasses import dataclass, field

from souverain.catalog.routes import ReplicaRoute
from souverain.core.errors import RateLimitedError
from souverain.gateway.routing import RouteTable

Claim = Callable[[ReplicaRoute], None]


@dataclass
class _Waiter:
    routes: list[ReplicaRoute]
    exclude: Set[str]
    claim: Claim
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
        table.on_release = self.dispatch

    @property
    def waiting(self) -> int:
        return self._waiting

    def waiting_for(self, org: str, *, batch: bool = False) -> int:
        return len(self._lines.get((int(batch), org), ()))

    def waiting_by_deployment(self) -> Counter[str]:
        """Requests waiting, counted against each deployment that could serve them (the load
        the autoscaler sees; gateway/demand.py)."""
        counts: Counter[str] = Counter()
        for line in self._lines.values():
            for waiter in line:
                if not waiter.granted.done():
                    counts.update({route.deployment_id for route in waiter.routes})
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
        found = self._table.pick_free(routes, exclude, org)
        if (
            found is not None
            and not self._lines.get(line_key)
            and not (batch and self._live_waiting())
        ):
            self._grant(line_key, found, claim)
            return found
        self._check_room(line_key)
        waiter = _Waiter(routes, exclude, claim)
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

    def dispatch(self) -> None:
        """Hand free slots to waiting organisations, the one served longest ago first, first
        come first served within each. Called whenever a slot frees (and when a request
        starts waiting)."""
        progress = True
        while progress and self._lines:
            progress = False
            order = sorted(self._lines, key=lambda k: (k[0], self._served.get(k, -1)))
            for line_key in order:
                line = self._lines[line_key]
                while line and line[0].granted.done():  # cancelled while waiting
                    line.popleft()
                    self._waiting -= 1
                if not line:
                    del self._lines[line_key]
                    continue
                waiter = line[0]
                route = self._table.pick_free(waiter.routes, waiter.exclude, line_key[1])
                if route is None:
                    continue
                line.popleft()
                self._waiting -= 1
                if not line:
                    del self._lines[line_key]
                self._grant(line_key, route, waiter.claim)
                waiter.granted.set_result(route)
                progress = True
                break
