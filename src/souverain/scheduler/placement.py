"""The filter and scorer chains, and `place()`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from souverain.scheduler.types import (
    NodeView,
    Placement,
    PlacementRequest,
    Snapshot,
    Unschedulable,
)

Filter = Callable[
    [Sequence[NodeView], PlacementRequest, Snapshot], tuple[list[NodeView], dict[str, str]]
]


def _split(
    nodes: Sequence[NodeView], why: Callable[[NodeView], str | None]
) -> tuple[list[NodeView], dict[str, str]]:
    kept: list[NodeView] = []
    dropped: dict[str, str] = {}
    for node in nodes:
        reason = why(node)
        if reason is None:
            kept.append(node)
        else:
            dropped[node.id] = reason
    return kept, dropped


def healthy(
    nodes: Sequence[NodeView], request: PlacementRequest, snapshot: Snapshot
) -> tuple[list[NodeView], dict[str, str]]:
    return _split(nodes, lambda n: None if n.alive else "node is down")


def in_known_datacenter(
    nodes: Sequence[NodeView], request: PlacementRequest, snapshot: Snapshot
) -> tuple[list[NodeView], dict[str, str]]:
    def why(node: NodeView) -> str | None:
        if node.datacenter_id is None:
            return "no datacenter label"
        if node.datacenter_id not in snapshot.datacenters:
            return f"unknown datacenter {node.datacenter_id}"
        return None

    return _split(nodes, why)


def allowed_datacenter(
    nodes: Sequence[NodeView], request: PlacementRequest, snapshot: Snapshot
) -> tuple[list[NodeView], dict[str, str]]:
    if not request.datacenters:
        return list(nodes), {}
    return _split(
        nodes,
        lambda n: (
            None
            if n.datacenter_id in request.datacenters
            else f"datacenter {n.datacenter_id} not allowed"
        ),
    )


def engine_supported(
    nodes: Sequence[NodeView], request: PlacementRequest, snapshot: Snapshot
) -> tuple[list[NodeView], dict[str, str]]:
    return _split(
        nodes, lambda n: None if request.engine in n.engines else f"no {request.engine} engine"
    )


def enough_resources(
    nodes: Sequence[NodeView], request: PlacementRequest, snapshot: Snapshot
) -> tuple[list[NodeView], dict[str, str]]:
    def why(node: NodeView) -> str | None:
        if node.gpus_free < request.gpus:
            return f"lack {request.gpus} free GPU(s)"
        if node.cpus_free < request.cpus:
            return f"lack {request.cpus:g} free CPU(s)"
        return None

    return _split(nodes, why)


FILTERS: tuple[Filter, ...] = (
    healthy,
    in_known_datacenter,
    allowed_datacenter,
    engine_supported,
    enough_resources,
)


def score(node: NodeView, request: PlacementRequest, snapshot: Snapshot) -> tuple[float, ...]:
    """Lower is better: grid carbon intensity first, then model already on disk, then spread."""
    datacenter = snapshot.datacenters[node.datacenter_id or ""]
    on_disk = 0 if request.model_name in node.models_on_disk else 1
    return (datacenter.carbon_intensity, on_disk, -node.cpus_free, node.id)  # type: ignore[return-value]


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
    """E.g. "0/5 nodes fit: 3 datacenter fra1 not allowed, 2 lack 1 free CPU(s)"."""
    if total == 0:
        return "0/0 nodes fit: no node has joined the cluster"
    counts = Counter(reasons.values())
    parts = ", ".join(f"{count} {reason}" for reason, count in counts.most_common())
    return f"0/{total} nodes fit: {parts}"
