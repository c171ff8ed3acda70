"""Placement: filters explain every dropped node; scorers prefer low-carbon grids."""

from __future__ import annotations

from souverain.scheduler.placement import place
from souverain.scheduler.types import (
    DatacenterView,
    NodeView,
    Placement,
    PlacementRequest,
    Snapshot,
    Unschedulable,
)


def dc(dc_id: str, country: str, carbon: float) -> DatacenterView:
    return DatacenterView(dc_id, country, country, frozenset(), carbon)


DATACENTERS = {
    "par1": dc("par1", "FR", 56),
    "fra1": dc("fra1", "DE", 380),
    "iad1": dc("iad1", "US", 390),
}


def node(
    node_id: str, datacenter: str | None, cpus: float = 4, gpus: float = 0, alive: bool = True
) -> NodeView:
    return NodeView(node_id, datacenter, alive, cpus_free=cpus, gpus_free=gpus)


class TestPlace:
    def test_lowest_carbon_datacenter_wins(self) -> None:
        snapshot = Snapshot((node("a", "fra1"), node("b", "par1"), node("c", "iad1")), DATACENTERS)
        decision = place(PlacementRequest(engine="llamacpp", cpus=1), snapshot)
        assert decision == Placement("b", "par1")

    def test_allowed_datacenters_are_hard(self) -> None:
        snapshot = Snapshot((node("a", "fra1"), node("b", "par1")), DATACENTERS)
        decision = place(
            PlacementRequest(engine="llamacpp", cpus=1, datacenters=frozenset({"fra1"})), snapshot
        )
        assert decision == Placement("a", "fra1")

    def test_unschedulable_names_a_reason_for_every_node(self) -> None:
        nodes = (
            node("dead", "par1", alive=False),
            node("stray", None),
            node("mystery", "zzz9"),
            node("small", "par1", cpus=0.5),
            node("us", "iad1"),
        )
        decision = place(
            PlacementRequest(engine="llamacpp", cpus=1, datacenters=frozenset({"par1"})),
            Snapshot(nodes, DATACENTERS),
        )
        assert isinstance(decision, Unschedulable)
        assert decision.reasons == {
            "dead": "node is down",
            "stray": "no datacenter label",
            "mystery": "unknown datacenter zzz9",
            "small": "lack 1 free CPU(s)",
            "us": "datacenter iad1 not allowed",
        }
        assert decision.summary.startswith("0/5 nodes fit: ")
        assert "1 no datacenter label" in decision.summary

    def test_gpu_requests_need_gpu_nodes(self) -> None:
        snapshot = Snapshot((node("cpu", "par1"), node("gpu", "fra1", gpus=8)), DATACENTERS)
        assert place(PlacementRequest(engine="vllm", cpus=1, gpus=2), snapshot) == Placement(
            "gpu", "fra1"
        )

    def test_empty_cluster(self) -> None:
        decision = place(PlacementRequest(engine="llamacpp", cpus=1), Snapshot((), DATACENTERS))
        assert isinstance(decision, Unschedulable) and "no node has joined" in decision.summary
