"""Placement: filters explain every dropped node; scorers prefer low-carbon grids."""

from __future__ import annotations

from souverain.core.policy import Policy
from souverain.scheduler.placement import place, summarise
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
        request = PlacementRequest(
            engine="llamacpp", cpus=1, policy=Policy(datacenters=frozenset({"fra1"}))
        )
        decision = place(request, snapshot)
        assert decision == Placement("a", "fra1")

    def test_unschedulable_names_a_reason_for_every_node(self) -> None:
        nodes = (
            node("dead", "par1", alive=False),
            node("stray", None),
            node("mystery", "zzz9"),
            node("small", "par1", cpus=0.5),
            node("us", "iad1"),
        )
        policy = Policy(jurisdictions=frozenset({"EU"}))
        decision = place(
            PlacementRequest(engine="llamacpp", cpus=1, policy=policy), Snapshot(nodes, DATACENTERS)
        )
        assert isinstance(decision, Unschedulable)
        assert decision.reasons == {
            "dead": "node is down",
            "stray": "no datacenter label",
            "mystery": "unknown datacenter (zzz9)",
            "small": "lack 1 free CPU(s)",
            "us": "outside EU (US)",
        }
        assert decision.summary.startswith("0/5 nodes fit: ")
        assert "1 no datacenter label" in decision.summary

    def test_gpu_requests_need_gpu_nodes(self) -> None:
        snapshot = Snapshot((node("cpu", "par1"), node("gpu", "fra1", gpus=8)), DATACENTERS)
        assert place(PlacementRequest(engine="vllm", cpus=1, gpus=2), snapshot) == Placement(
            "gpu", "fra1"
        )

    def test_summary_groups_reasons_with_their_details(self) -> None:
        reasons = {
            "a": "outside EU (US)",
            "b": "outside EU (US)",
            "c": "outside EU (CH)",
            "d": "lack 24 GiB GPU memory",
            "e": "lack 24 GiB GPU memory",
        }
        assert (
            summarise(5, reasons)
            == "0/5 nodes fit: 3 outside EU (US: 2, CH: 1), 2 lack 24 GiB GPU memory"
        )

    def test_binpack_fills_the_fullest_node_and_spread_the_emptiest(self) -> None:
        snapshot = Snapshot(
            (node("big", "par1", cpus=8), node("small", "par1", cpus=2)), DATACENTERS
        )
        assert (
            place(PlacementRequest(engine="llamacpp", cpus=1, strategy="binpack"), snapshot).node_id
            == "small"
        )  # type: ignore[union-attr]
        assert (
            place(PlacementRequest(engine="llamacpp", cpus=1, strategy="spread"), snapshot).node_id
            == "big"
        )  # type: ignore[union-attr]

    def test_model_on_disk_breaks_ties(self) -> None:
        warm = NodeView("warm", "par1", True, 4, 0, models_on_disk=frozenset({"m"}))
        snapshot = Snapshot((node("cold", "par1"), warm), DATACENTERS)
        assert place(
            PlacementRequest(engine="llamacpp", cpus=1, model_name="m"), snapshot
        ) == Placement("warm", "par1")

    def test_empty_cluster(self) -> None:
        decision = place(PlacementRequest(engine="llamacpp", cpus=1), Snapshot((), DATACENTERS))
        assert isinstance(decision, Unschedulable) and "no node has joined" in decision.summary
