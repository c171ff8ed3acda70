"""The same decisions as `placement.place`, from an index built once per snapshot.

Datacenters are grouped by grid carbon intensity (the first scorer), sovereignty is
decided once per datacenter rather than per node, and each datacenter keeps its nodes
sorted by free resources so binpack and spread find their node by bisection. When
nothing fits, the full filter chain runs so that every node gets its reason.
`tests/unit/test_placer.py` checks with hypothesis that both always agree.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import replace

from souverain.core.policy import Policy, exclusion
from souverain.scheduler.placement import (
    pack_key,
    summarise,
    why_down,
    why_no_engine,
    why_short_of_cpu_or_memory,
    why_short_of_gpus,
    why_unplaceable_site,
)
from souverain.scheduler.types import NodeView, Placement, PlacementRequest, Snapshot, Unschedulable

Key = tuple[float, float, float, str]


def _key(node: NodeView) -> Key:
    return (node.gpus_free, node.cpus_free, node.memory_free_gib, node.id)


def _fits(node: NodeView, request: PlacementRequest) -> bool:
    return (
        node.gpus_free >= request.gpus
        and node.cpus_free >= request.cpus
        and node.memory_free_gib >= request.memory_gib
        and (not request.gpus or node.gpu_memory_gib >= request.gpu_memory_gib)
        and request.engine in node.engines
    )


class Placer:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self._nodes: dict[str, NodeView] = {node.id: node for node in snapshot.nodes}
        by_dc: defaultdict[str, list[NodeView]] = defaultdict(list)
        for node in snapshot.nodes:
            if why_down(node) is None and node.datacenter_id in snapshot.datacenters:
                by_dc[node.datacenter_id].append(node)
        self._sorted = {dc: sorted(nodes, key=_key) for dc, nodes in by_dc.items()}
        self._keys = {dc: [_key(n) for n in nodes] for dc, nodes in self._sorted.items()}
        groups: defaultdict[float, list[str]] = defaultdict(list)
        for dc_id in self._sorted:
            groups[snapshot.datacenters[dc_id].carbon_intensity].append(dc_id)
        self._groups = sorted(groups.items())
        self._excluded: dict[tuple[Policy, str], str | None] = {}
        self.alive_nodes = frozenset(node.id for node in snapshot.nodes if node.alive)
        self.refused: dict[str, str] = {
            node.id: node.refusal for node in snapshot.nodes if node.alive and node.refusal
        }

    def refused_in(self, dc_id: str) -> tuple[str, ...]:
        """The live nodes labelled `dc_id` that get no work: Ray, which picks a node by its
        label, is told to avoid them too."""
        return tuple(
            sorted(
                n.id
                for n in self.snapshot.nodes
                if n.id in self.refused and n.datacenter_id == dc_id
            )
        )

    def place(self, request: PlacementRequest) -> Placement | Unschedulable:
        for _carbon, dc_ids in self._groups:
            best: tuple[tuple[object, ...], NodeView] | None = None
            for dc_id in dc_ids:
                if self._exclusion(request.policy, dc_id) is not None:
                    continue
                found = self._best_in(dc_id, request)
                if found is not None and (best is None or found[0] < best[0]):
                    best = found
            if best is not None:
                node = best[1]
                return Placement(node_id=node.id, datacenter_id=node.datacenter_id or "")
        return self._explain(request)

    def _explain(self, request: PlacementRequest) -> Unschedulable:
        """A reason for every node: the first filter of the chain that drops it."""
        snapshot = self.snapshot
        reasons: dict[str, str] = {}
        for node in self._nodes.values():
            reason = why_down(node) or why_unplaceable_site(node, snapshot)
            if reason is None:
                reason = (
                    self._exclusion(request.policy, node.datacenter_id or "")
                    or why_no_engine(node, request)
                    or why_short_of_gpus(node, request)
                    or why_short_of_cpu_or_memory(node, request)
                )
            reasons[node.id] = reason or "fits, but was not chosen"
        return Unschedulable(reasons=reasons, summary=summarise(len(self._nodes), reasons))

    def reserve(self, node_id: str, *, cpus: float, gpus: float = 0, memory_gib: float = 0) -> None:
        """Take resources off a node (placed this round; Ray's own view lags)."""
        node = self._nodes[node_id]
        updated = replace(
            node,
            cpus_free=node.cpus_free - cpus,
            gpus_free=node.gpus_free - gpus,
            memory_free_gib=node.memory_free_gib - memory_gib,
        )
        self._nodes[node_id] = updated
        dc_id = node.datacenter_id or ""
        if dc_id in self._sorted:
            keys, nodes = self._keys[dc_id], self._sorted[dc_id]
            index = bisect.bisect_left(keys, _key(node))
            del keys[index], nodes[index]
            index = bisect.bisect_left(keys, _key(updated))
            keys.insert(index, _key(updated))
            nodes.insert(index, updated)

    def current(self) -> Snapshot:
        return Snapshot(nodes=tuple(self._nodes.values()), datacenters=self.snapshot.datacenters)

    def _exclusion(self, policy: Policy, dc_id: str) -> str | None:
        key = (policy, dc_id)
        if key not in self._excluded:
            self._excluded[key] = exclusion(policy, self.snapshot.datacenters[dc_id].site)
        return self._excluded[key]

    def _best_in(
        self, dc_id: str, request: PlacementRequest
    ) -> tuple[tuple[object, ...], NodeView] | None:
        nodes, keys = self._sorted[dc_id], self._keys[dc_id]
        if request.strategy == "binpack":
            start = bisect.bisect_left(keys, (request.gpus, request.cpus, request.memory_gib, ""))
            indices: range = range(start, len(nodes))
        else:
            indices = range(len(nodes) - 1, -1, -1)
        first: NodeView | None = None
        best: tuple[tuple[object, ...], NodeView] | None = None
        for index in indices:
            node = nodes[index]
            if first is not None and keys[index][:3] != _key(first)[:3]:
                break  # past the tie: nothing further can score better
            if not _fits(node, request):
                continue
            first = first or node
            on_disk = 0 if request.model_name in node.models_on_disk else 1
            candidate = ((pack_key(node, request), on_disk, node.id), node)
            if best is None or candidate[0] < best[0]:
                best = candidate
        return best
