"""Property-based: no placement ever violates a hard constraint, every Unschedulable
explains every node, and the indexed Placer always agrees with the reference chain."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from souverain.core.policy import Policy, complies
from souverain.scheduler.placement import place, score
from souverain.scheduler.placer import Placer
from souverain.scheduler.types import (
    DatacenterView,
    NodeView,
    Placement,
    PlacementRequest,
    Snapshot,
    Unschedulable,
)

COUNTRIES = ["FR", "DE", "US", "CH", "NO", "IT"]
CERTS = ["SecNumCloud", "HDS", "ISO27001", "C5"]


@st.composite
def snapshots(draw: st.DrawFn) -> Snapshot:
    dc_count = draw(st.integers(1, 5))
    datacenters = {}
    for i in range(dc_count):
        dc_id = f"dc{i}"
        datacenters[dc_id] = DatacenterView(
            id=dc_id,
            country=draw(st.sampled_from(COUNTRIES)),
            operator_country=draw(st.sampled_from(COUNTRIES)),
            certifications=frozenset(draw(st.lists(st.sampled_from(CERTS), max_size=3))),
            carbon_intensity=float(draw(st.sampled_from([20, 56, 56, 380, 400]))),
        )
    nodes = []
    for i in range(draw(st.integers(0, 12))):
        label = draw(st.one_of(st.none(), st.sampled_from([*datacenters, "ghost"])))
        nodes.append(
            NodeView(
                id=f"n{i}",
                datacenter_id=label,
                alive=draw(st.booleans()),
                cpus_free=float(draw(st.integers(0, 8))),
                gpus_free=float(draw(st.integers(0, 4))),
                gpu_memory_gib=float(draw(st.sampled_from([0, 24, 80]))),
                memory_free_gib=float(draw(st.integers(0, 64))),
                engines=frozenset(draw(st.sets(st.sampled_from(["llamacpp", "vllm"]), min_size=1))),
                models_on_disk=frozenset(draw(st.sets(st.sampled_from(["m1", "m2"])))),
            )
        )
    return Snapshot(nodes=tuple(nodes), datacenters=datacenters)


jurisdiction_sets = st.one_of(
    st.none(), st.sets(st.sampled_from([*COUNTRIES, "EU", "EEA"]), max_size=3).map(frozenset)
)

policies = st.builds(
    Policy,
    jurisdictions=jurisdiction_sets,
    datacenters=st.one_of(
        st.none(), st.sets(st.sampled_from(["dc0", "dc1", "dc2"])).map(frozenset)
    ),
    certifications=st.sets(st.sampled_from(CERTS), max_size=2).map(frozenset),
    operator_jurisdictions=jurisdiction_sets,
)

requests = st.builds(
    PlacementRequest,
    engine=st.sampled_from(["llamacpp", "vllm"]),
    cpus=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    gpus=st.integers(0, 2),
    gpu_memory_gib=st.sampled_from([0.0, 24.0, 40.0]),
    memory_gib=st.sampled_from([0.0, 8.0, 32.0]),
    policy=policies,
    strategy=st.sampled_from(["spread", "binpack"]),
    model_name=st.sampled_from(["m1", "m2", ""]),
)


class TestPlacementProperties:
    @settings(max_examples=400, deadline=None)
    @given(snapshot=snapshots(), request=requests)
    def test_placement_never_violates_a_hard_constraint(
        self, snapshot: Snapshot, request: PlacementRequest
    ) -> None:
        decision = place(request, snapshot)
        if isinstance(decision, Placement):
            node = next(n for n in snapshot.nodes if n.id == decision.node_id)
            dc = snapshot.datacenters[decision.datacenter_id]
            assert node.alive and node.datacenter_id == dc.id
            assert complies(request.policy, dc.site)
            assert request.engine in node.engines
            assert node.cpus_free >= request.cpus and node.gpus_free >= request.gpus
            assert node.memory_free_gib >= request.memory_gib
            assert not request.gpus or node.gpu_memory_gib >= request.gpu_memory_gib

    @settings(max_examples=400, deadline=None)
    @given(snapshot=snapshots(), request=requests)
    def test_every_unschedulable_has_a_reason_for_every_node(
        self, snapshot: Snapshot, request: PlacementRequest
    ) -> None:
        decision = place(request, snapshot)
        if isinstance(decision, Unschedulable):
            assert set(decision.reasons) == {n.id for n in snapshot.nodes}
            assert all(decision.reasons.values())
            assert decision.summary.startswith(f"0/{len(snapshot.nodes)} nodes fit")

    @settings(max_examples=600, deadline=None)
    @given(snapshot=snapshots(), request=requests)
    def test_placer_agrees_with_the_reference_chain(
        self, snapshot: Snapshot, request: PlacementRequest
    ) -> None:
        reference = place(request, snapshot)
        fast = Placer(snapshot).place(request)
        assert type(fast) is type(reference)
        if isinstance(reference, Placement):
            assert isinstance(fast, Placement)
            nodes = {n.id: n for n in snapshot.nodes}
            assert score(nodes[fast.node_id], request, snapshot) == score(
                nodes[reference.node_id], request, snapshot
            )
        else:
            assert fast == reference

    @settings(max_examples=200, deadline=None)
    @given(snapshot=snapshots(), request=requests, count=st.integers(1, 6))
    def test_reservations_keep_agreeing(
        self, snapshot: Snapshot, request: PlacementRequest, count: int
    ) -> None:
        placer = Placer(snapshot)
        for _ in range(count):
            fast = placer.place(request)
            reference = place(request, placer.current())
            assert type(fast) is type(reference)
            if not isinstance(fast, Placement):
                break
            placer.reserve(
                fast.node_id, cpus=request.cpus, gpus=request.gpus, memory_gib=request.memory_gib
            )
