"""Which slot of a llama-server replica a request goes to, and whether it may reuse what
that slot holds.

llama-server keeps one KV cache per slot and, with `cache_prompt`, starts a request from
the longest prefix it shares with the slot's previous one. Reuse is what makes a long
shared system prompt (the reasoning prompt) cheap, but across tenants it is a timing
oracle: a fast first token would tell one organisation that another's prompt began like
its guess. So the gateway names each request's slot (`id_slot`) and allows reuse
(`cache_prompt: true`) only when that slot last served the same organisation's cache
scope; otherwise the engine recomputes the whole prompt. The slot then holds this
request's prompt, for the organisation's next one.

A free slot of the same scope is preferred (the most recently used: its cache is the
warmest), else the free slot used longest ago. The count of requests per replica stays
with RouteTable (fair queueing admits at most `slots` at once per server process); with
several server processes two may name the same slot, which llama-server serves one after
the other, and reuse is still decided by the scope alone, so nothing crosses tenants.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Slot:
    index: int
    reuse: bool  # the slot last served this scope: its cached prefix may be reused


@dataclass
class _Replica:
    scopes: list[str | None] = field(default_factory=list)  # the scope each slot last served
    busy: list[int] = field(default_factory=list)
    used: list[int] = field(default_factory=list)  # when each slot was last taken

    def resize(self, count: int) -> None:
        if len(self.scopes) != count:  # a restarted engine: its caches are empty anyway
            self.scopes, self.busy, self.used = [None] * count, [0] * count, [0] * count


class SlotBook:
    def __init__(self) -> None:
        self._replicas: dict[str, _Replica] = {}
        self._tick = 0

    def take(self, replica_id: str, slots: int, scope: str) -> Slot:
        replica = self._replicas.setdefault(replica_id, _Replica())
        if not any(replica.busy):
            replica.resize(max(1, slots))
        free = [i for i, busy in enumerate(replica.busy) if not busy]
        if not free:  # counted elsewhere as free: the least loaded, used longest ago
            low = min(replica.busy)
            free = [i for i, busy in enumerate(replica.busy) if busy == low]
        same = [i for i in free if replica.scopes[i] == scope]
        index = (
            max(same, key=replica.used.__getitem__)
            if same
            else min(free, key=replica.used.__getitem__)
        )
        reuse = replica.scopes[index] == scope
        self._tick += 1
        replica.scopes[index], replica.used[index] = scope, self._tick
        replica.busy[index] += 1
        return Slot(index, reuse)

    def give_back(self, replica_id: str, slot: Slot) -> None:
        replica = self._replicas.get(replica_id)
        if replica is not None and slot.index < len(replica.busy) and replica.busy[slot.index]:
            replica.busy[slot.index] -= 1

    def forget(self, live: set[str]) -> None:
        """Drop replicas that no longer route (called when routes reload)."""
        for gone in set(self._replicas) - live:
            if not any(self._replicas[gone].busy):
                del self._replicas[gone]
