"""Which slot of a llama-server replica a request goes to: one that likely holds its cache
scope's prompts.

llama-server keeps one KV cache per slot and starts a request from the longest prefix it
shares with the slot's previous one. Reuse is what makes a long shared system prompt (the
reasoning prompt) cheap, but across tenants it is a timing oracle: a fast first token
would tell one organisation that another's prompt began like its guess. The rule that
stops it lives in the engine, not here: every request names its cache scope (organisation
and model), and souverain's llama-server (scripts/patches/llama-server-isolation.patch)
clears a slot's cache when it starts a task of another scope, whatever becomes of the
task afterwards and whichever server process sent it.

This book is an optimisation only: it names the slot (`id_slot`) where this server process
last sent the same scope, so that the engine finds that scope's prefix there. A free slot
of the same scope is preferred (the most recently used: its cache is the warmest), else the
free slot used longest ago. If the book is wrong (a refused request, another server
process), the engine recomputes the prompt; it never reuses another scope's. The count of
requests per replica stays with RouteTable (fair queueing admits at most `slots` at once
per server process); with several server processes two may name the same slot, which
llama-server serves one after the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Slot:
    index: int
    warm: bool  # this process last sent the same scope there: its prefix is likely cached


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
        warm = replica.scopes[index] == scope
        self._tick += 1
        replica.scopes[index], replica.used[index] = scope, self._tick
        replica.busy[index] += 1
        return Slot(index, warm)

    def give_back(self, replica_id: str, slot: Slot) -> None:
        replica = self._replicas.get(replica_id)
        if replica is not None and slot.index < len(replica.busy) and replica.busy[slot.index]:
            replica.busy[slot.index] -= 1

    def forget(self, live: set[str]) -> None:
        """Drop replicas that no longer route (called when routes reload)."""
        for gone in set(self._replicas) - live:
            if not any(self._replicas[gone].busy):
                del self._replicas[gone]
