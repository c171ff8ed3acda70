"""The filter chain, the scorer chain, and `place()`.

Every filter returns the nodes it kept and a reason for each node it dropped, so
"why is my deployment pending" always has an answer. Scoring is lexicographic, lower
first: grid carbon intensity, then binpack or spread as the deployment asks, then model
already on disk, then node id (so decisions are reproducible).

`place()` runs the chain over every node: the reference. `Placer` (placer.py) gives the
same decisions from an index, fast enough for fleets of 10,000 nodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from souverain.core.policy import exclusion
from souverain.scheduler.types import NodeView, Placement, PlacementRequest, Snapshot, Unschedulable

Kept = tuple[list[NodeView], dict[str, str]]
Filter = Callable[[Sequence[NodeView], PlacementRequest, Snapshot], Kept]


def _split(nodes: Sequence[NodeView], why: Callable[[NodeView], str | None]) -> Kept:
    kept: list[NodeView] = []
    dropped: dict[str, str] = {}
    for node in nodes:
        reason = why(node)
        if reason is None:
            kept.append(node)
        else:
            dropped[node.id] = reason
    return kept, dropped


def why_down(node: NodeView) -> str | None:
    """Down, or alive but refused: its label not certified, its certificate ending or its
    clock off (`core/node_identity.py`); either way it gets no work."""
    return node.refusal if node.alive else "node is down"


def why_unplaceable_site(node: NodeView, snapshot: Snapshot) -> str | None:
    if node.datacenter_id is None:
        return "no datacenter label"
    if node.datacenter_id not in snapshot.datacenters:
        return f"unknown datacenter ({node.datacenter_id})"
    return None


def why_no_engine(node: NodeView, request: PlacementRequest) -> str | None:
    return None if request.engine in node.engines else f"no {request.engine} engine"


def why_short_of_gpus(node: NodeView, request: PlacementRequest) -> str | None:
    if node.gpus_free < request.gpus:
        return f"lack {request.gpus} free GPU(s)"
    if request.gpus and node.gpu_memory_gib < request.gpu_memory_gib:
        return f"lack {request.gpu_memory_gib:g} GiB GPU memory"
    return None


def why_short_of_cpu_or_memory(node: NodeView, request: PlacementRequest) -> str | None:
    if node.cpus_free < request.cpus:
        return f"lack {request.cpus:g} free CPU(s)"
    if node.memory_free_gib < request.memory_gib:
        return f"lack {request.memory_gib:g} GiB memory"
    return None


def healthy(nodes: Sequence[NodeView], request: PlacementRequest, snapshot: Snapshot) -> Kept:
    return _split(nodes, why_down)


def in_known_datacenter(
    nodes: Sequence[NodeView], request: PlacementRequest, snapshot: Snapshot
) -> Kept:
    return _split(nodes, lambda n: why_unplaceable_site(n, snapshot))


def sovereign(nodes: Sequence[NodeView], request: PlacementRequest, snapshot: Snapshot) -> Kept:
    excluded = {dc.id: exclusion(request.policy, dc.site) for dc in snapshot.datacenters.values()}
    return _split(nodes, lambda n: excluded[n.datacenter_id or ""])


def engine_supported(
    nodes: Sequence[NodeView], request: PlacementRequest, snapshot: Snapshot
) -> Kept:
    return _split(nodes, lambda n: why_no_engine(n, request))


def enough_gpus(nodes: Sequence[NodeView], request: PlacementRequest, snapshot: Snapshot) -> Kept:
    return _split(nodes, lambda n: why_short_of_gpus(n, request))


def enough_cpu_and_memory(
    nodes: Sequence[NodeView], request: PlacementRequest, snapshot: Snapshot
) -> Kept:
    return _split(nodes, lambda n: why_short_of_cpu_or_memory(n, request))


FILTERS: tuple[Filter, ...] = (
    healthy,
    in_known_datacenter,
    sovereign,
    engine_supported,
    enough_gpus,
    enough_cpu_and_memory,
)


def pack_key(node: NodeView, request: PlacementRequest) -> tuple[float, float, float]:
    """Binpack fills the fullest node that fits; spread the emptiest."""
    key = (node.gpus_free, node.cpus_free, node.memory_free_gib)
    return key if request.strategy == "binpack" else (-key[0], -key[1], -key[2])


def score(node: NodeView, request: PlacementRequest, snapshot: Snapshot) -> tuple[object, ...]:
    carbon = snapshot.datacenters[node.datacenter_id or ""].carbon_intensity
    on_disk = 0 if request.model_name in node.models_on_disk else 1
    return (carbon, pack_key(node, request), on_disk, node.id)


def place(request: PlacementRequest, snapshot: Snapshot) -> Placement | Unschedulable:
    candidates: list[NodeView] = list(snapshot.nodes)
    reasons: dict[str, str] = {}
    for chain_filter in FILTERS:
        candidates, dropped = chain_filter(candidates, request, snapshot)
        reasons.update(dropped)
    if not candidates:
        return Unschedulable(reasons=reasons, summary=summarise(len(snapshot.nodes), reasons))
    best = min(candidates, key=lambda node: score(node, request, snapshot))
    return Placement(node_id=best.id, datacenter_id=best.datacenter_id or "")


def summarise(total: int, reasons: dict[str, str]) -> str:
    """E.g. "0/5 nodes fit: 3 outside EU (US: 2, CH: 1), 2 lack 24 GiB GPU memory"."""
    if total == 0:
        return "0/0 nodes fit: no node has joined the cluster"
    kinds: Counter[str] = Counter()
    details: dict[str, Counter[str]] = {}
    for reason in reasons.values():
        kind, _, detail = reason.partition(" (")
        kinds[kind] += 1
        if detail:
            details.setdefault(kind, Counter())[detail.rstrip(")")] += 1
    parts = []
    for kind, count in _by_count(kinds):
        counted = details.get(kind)
        suffix = f" ({', '.join(f'{d}: {n}' for d, n in _by_count(counted))})" if counted else ""
        parts.append(f"{count} {kind}{suffix}")
    return f"0/{total} nodes fit: {', '.join(parts)}"


def _by_count(counter: Counter[str]) -> list[tuple[str, int]]:
    """Most frequent first, then alphabetical: the same summary whatever the node order."""
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))
