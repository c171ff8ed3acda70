"""A node gets work only while what it declared matches what the head certified, its
certificate has more than 30 days left and its clock agrees with the controller's; a
refused node is never chosen, and the reason is in the deployment's summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from souverain.core.node_identity import (
    MAX_CLOCK_OFFSET_S,
    ClockReading,
    NodeIdentity,
    clock_offset,
    must_leave,
    why_untrusted,
)
from souverain.core.policy import Policy
from souverain.scheduler.placement import place
from souverain.scheduler.placer import Placer
from souverain.scheduler.types import (
    DatacenterView,
    NodeView,
    Placement,
    PlacementRequest,
    Snapshot,
    Unschedulable,
)

NOW = datetime(2026, 12, 5, 12, tzinfo=UTC)
T = NOW.timestamp()
IN_TIME = ClockReading(asked_at=T - 0.5, node_time=T, answered_at=T + 0.5)


def identity(datacenter: str | None = "fra1", **changes: object) -> NodeIdentity:
    fields: dict[str, object] = {
        "certified_datacenter": datacenter,
        "certificate_ends": NOW + timedelta(days=300),
        "clock": IN_TIME,
    }
    return NodeIdentity(**(fields | changes))  # type: ignore[arg-type]


class TestWhyUntrusted:
    def test_a_node_as_certified_with_its_clock_right_gets_work(self) -> None:
        assert why_untrusted("fra1", identity(), NOW) is None
        assert why_untrusted(None, identity(), NOW) is None  # unlabelled: never placed anyway

    def test_a_label_its_certificate_does_not_bind_it_to_is_refused(self) -> None:
        reason = why_untrusted("iad1", identity("fra1"), NOW)
        assert reason == (
            "label not certified (declares iad1, certified fra1; rejoin under its certified "
            "label or certify it for iad1)"
        )
        assert must_leave(reason)
        unbound = why_untrusted("iad1", identity(None), NOW)
        assert unbound is not None and "certified for no datacenter" in unbound

    def test_a_certificate_within_30_days_of_its_end_is_refused_with_the_renewal(self) -> None:
        ending = identity(certificate_ends=NOW + timedelta(days=29))
        reason = why_untrusted("fra1", ending, NOW)
        assert reason is not None and reason.startswith("certificate ends soon (")
        assert "souverain node certify --renew" in reason
        assert not must_leave(reason)  # what runs keeps running until the renewal
        assert (
            why_untrusted("fra1", identity(certificate_ends=NOW + timedelta(days=31)), NOW) is None
        )

    def test_a_clock_off_by_more_than_the_bound_is_refused(self) -> None:
        ahead = ClockReading(T, T + 1 + MAX_CLOCK_OFFSET_S + 60, T + 1)
        reason = why_untrusted("fra1", identity(clock=ahead), NOW)
        assert reason is not None and reason.startswith("clock off (120s ahead of")
        assert must_leave(reason)
        behind = ClockReading(T, T - 3600, T + 1)
        assert "3600s behind" in (why_untrusted("fra1", identity(clock=behind), NOW) or "")

    def test_a_slow_answer_never_makes_a_right_clock_look_wrong(self) -> None:
        """The node's time is compared with the whole window it was read in."""
        slow = ClockReading(asked_at=T, node_time=T + 100, answered_at=T + 110)
        assert clock_offset(slow) == 0.0
        assert why_untrusted("fra1", identity(clock=slow), NOW) is None
        near = ClockReading(T, T + 1 + MAX_CLOCK_OFFSET_S - 1, T + 1)
        assert why_untrusted("fra1", identity(clock=near), NOW) is None

    def test_unmeasured_and_unreadable_nodes_wait_without_losing_their_work(self) -> None:
        waiting = why_untrusted("fra1", identity(clock=None), NOW)
        assert waiting is not None and waiting.startswith("clock not measured yet")
        failed = why_untrusted("fra1", identity(error="its raylet at 10.0.0.2:1: refused"), NOW)
        assert failed is not None and failed.startswith("identity not verified (")
        assert not must_leave(waiting) and not must_leave(failed)


def snapshot(*nodes: NodeView) -> Snapshot:
    dcs = {"fra1": DatacenterView("fra1", "DE", "DE", frozenset(), 300.0),
           "iad1": DatacenterView("iad1", "US", "US", frozenset(), 20.0)}  # fmt: skip
    return Snapshot(nodes=nodes, datacenters=dcs)


class TestPlacement:
    def test_a_refused_node_is_never_chosen_and_says_why(self) -> None:
        reason = why_untrusted("iad1", identity("fra1"), NOW)
        impostor = NodeView("n-fra", "iad1", True, cpus_free=8, gpus_free=0, refusal=reason)
        real = NodeView("n-iad", "iad1", True, cpus_free=1, gpus_free=0)
        view = snapshot(impostor, real)
        small = PlacementRequest(engine="llamacpp", cpus=1)
        assert place(small, view) == Placement("n-iad", "iad1")
        assert Placer(view).place(small) == Placement("n-iad", "iad1")
        wide = PlacementRequest(
            engine="llamacpp", cpus=4, policy=Policy(jurisdictions=frozenset({"US"}))
        )
        for decision in (place(wide, view), Placer(view).place(wide)):
            assert isinstance(decision, Unschedulable)
            assert decision.reasons["n-fra"] == reason
            assert "1 label not certified (declares iad1" in decision.summary

    def test_ray_is_told_to_avoid_the_refused_nodes_of_the_chosen_datacenter(self) -> None:
        refused = NodeView("n-b", "iad1", True, cpus_free=1, gpus_free=0, refusal="clock off (x)")
        dead = NodeView("n-c", "iad1", False, cpus_free=1, gpus_free=0, refusal="clock off (x)")
        placer = Placer(snapshot(refused, dead, NodeView("n-a", "iad1", True, 1, 0)))
        assert placer.refused_in("iad1") == ("n-b",)
        assert placer.refused_in("fra1") == ()
