"""The autoscaler's decision: how many replicas a deployment wants after each reading of its
load, with hysteresis (up after readings in a row above target, down only after an idle
period), never outside its limits, and from zero at once when someone waits; and how a
replica it releases drains before it stops."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from souverain.db.tables import ReplicaRow
from souverain.jobs.deployments.draining import DRAIN_GRACE_S, DRAIN_TIMEOUT_S, plan
from souverain.scheduler.autoscale import Limits, ScaleState, decide, needed, routed_ahead

T0 = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
LIMITS = Limits(min_replicas=1, max_replicas=3, target=4.0, scale_down_idle_s=60.0)
LIMITS_ZERO = Limits(min_replicas=0, max_replicas=3, target=4.0, scale_down_idle_s=60.0)


def run(limits: Limits, wanted: int, loads: list[float], step_s: float = 1.0) -> list[int]:
    """The wanted count after each reading of `loads`, one reading every `step_s`."""
    state, counts = ScaleState(wanted), []
    for i, busy in enumerate(loads):
        state = decide(limits, state, busy, T0 + timedelta(seconds=i * step_s)).state
        counts.append(state.wanted)
    return counts


class TestNeeded:
    def test_the_load_over_the_target_rounded_up_within_the_limits(self) -> None:
        assert needed(LIMITS, 0) == 1
        assert needed(LIMITS, 5) == 2
        assert needed(LIMITS, 100) == 3

    def test_one_replica_while_anyone_waits_even_at_minimum_zero(self) -> None:
        zero = Limits(0, 2, 4.0, 60.0)
        assert needed(zero, 0) == 0
        assert needed(zero, 1) == 1

    def test_a_stopped_deployment_stays_stopped(self) -> None:
        assert needed(Limits(0, 0, 4.0, 60.0), 10) == 0


class TestScalingUp:
    def test_up_only_after_two_readings_above_target(self) -> None:
        assert run(LIMITS, 1, [9, 9]) == [1, 3]

    def test_a_single_spike_adds_nothing(self) -> None:
        assert run(LIMITS, 1, [9, 1, 9, 1]) == [1, 1, 1, 1]

    def test_never_above_the_maximum(self) -> None:
        assert run(LIMITS, 1, [1000] * 5)[-1] == 3

    def test_from_zero_at_once_with_the_reason(self) -> None:
        decision = decide(Limits(0, 2, 4.0, 60.0), ScaleState(0), 1, T0)
        assert decision.changed and decision.state.wanted == 1
        assert "waiting with no replica" in decision.reason

    def test_a_crowd_waiting_at_zero_wakes_one_replica_then_the_rule_applies(self) -> None:
        """Requests waiting at zero are counted before any rate limit: 256 of them from
        one key start one replica, not the maximum; more come by two readings above."""
        assert run(Limits(0, 3, 4.0, 60.0), 0, [256, 256, 256]) == [1, 1, 3]

    def test_the_reason_says_the_load_and_the_target(self) -> None:
        state = decide(LIMITS, ScaleState(1), 9, T0).state
        decision = decide(LIMITS, state, 9, T0)
        assert decision.changed
        assert "9 requests outstanding" in decision.reason
        assert "target of 4 per replica" in decision.reason


class TestScalingDown:
    def test_down_only_after_the_idle_period(self) -> None:
        counts = run(LIMITS, 3, [0] * 62)
        assert counts[59] == 3  # 59 s below target
        assert counts[61] == 1

    def test_never_below_the_minimum(self) -> None:
        assert run(LIMITS, 3, [0] * 200)[-1] == 1

    def test_to_zero_after_the_idle_period_at_minimum_zero(self) -> None:
        counts = run(Limits(0, 2, 4.0, 30.0), 1, [0] * 32)
        assert counts[29] == 1 and counts[31] == 0

    def test_a_sawtooth_shorter_than_the_idle_period_does_not_flap(self) -> None:
        sawtooth = ([20] * 5 + [0] * 20) * 8  # bursts every 25 s, idle period 60 s
        counts = run(LIMITS, 1, sawtooth)
        changes = sum(1 for a, b in itertools.pairwise(counts) if a != b)
        assert counts[-1] == 3
        assert changes == 1  # up once, never down

    def test_below_the_target_for_the_idle_period_releases_what_the_load_does_not_need(
        self,
    ) -> None:
        """A released replica drains (jobs/deployments/draining.py): it finishes what it
        answers, so a count above what the load needs comes down even while requests run."""
        counts = run(LIMITS, 3, [5] * 62)
        assert counts[59] == 3 and counts[61] == 2  # 5 requests need 2 replicas at 4 each

    def test_to_zero_only_once_nothing_is_outstanding(self) -> None:
        assert run(Limits(0, 2, 4.0, 30.0), 1, [1] * 100)[-1] == 1

    def test_the_reason_says_the_load_below_what_the_count_carries(self) -> None:
        state = decide(LIMITS, ScaleState(3), 5, T0).state
        decision = decide(LIMITS, state, 5, T0 + timedelta(seconds=61))
        assert decision.state.wanted == 2
        assert decision.reason.startswith("5 requests outstanding, fewer than 3 carry for 61s")

    def test_a_burst_restarts_the_idle_period(self) -> None:
        counts = run(LIMITS, 3, [0] * 50 + [12] + [0] * 50)
        assert counts[-1] == 3  # 50 s idle, a burst, 50 s idle: never 60 s in a row

    def test_the_idle_period_starts_once_no_replica_is_starting(self) -> None:
        state = ScaleState(1)
        for second in range(100):  # a slow engine start, nobody asking
            at = T0 + timedelta(seconds=second)
            state = decide(LIMITS_ZERO, state, 0, at, starting=True).state
        assert state == ScaleState(1)
        ready_at = T0 + timedelta(seconds=100)
        state = decide(LIMITS_ZERO, state, 0, ready_at).state
        assert not decide(LIMITS_ZERO, state, 0, ready_at + timedelta(seconds=59)).changed
        assert decide(LIMITS_ZERO, state, 0, ready_at + timedelta(seconds=60)).state.wanted == 0

    def test_the_reason_says_how_long_it_was_idle(self) -> None:
        state = decide(LIMITS, ScaleState(3), 0, T0).state
        decision = decide(LIMITS, state, 0, T0 + timedelta(seconds=61))
        assert decision.changed and decision.state.wanted == 1
        assert decision.reason.startswith("idle for 61s")


class TestLimitsChanged:
    def test_a_count_outside_new_limits_is_brought_inside_at_once(self) -> None:
        decision = decide(Limits(2, 4, 4.0, 60.0), ScaleState(1), 0, T0)
        assert decision.changed and decision.state.wanted == 2
        assert "limits changed" in decision.reason


@given(
    low=st.integers(0, 5),
    span=st.integers(0, 5),
    start=st.integers(0, 10),
    loads=st.lists(st.integers(0, 100), max_size=40),
)
def test_the_count_always_ends_within_the_limits(
    low: int, span: int, start: int, loads: list[int]
) -> None:
    limits = Limits(low, low + span, 4.0, 5.0)
    counts = run(limits, start, [*loads, 0])
    assert all(low <= count <= low + span for count in counts)


def replica(name: str, state: str = "ready", *, age_s: int = 100,
            draining_s: float | None = None) -> ReplicaRow:  # fmt: skip
    """A replica created `age_s` before T0, draining for `draining_s` at T0 if given."""
    since = None if draining_s is None else T0 - timedelta(seconds=draining_s)
    return ReplicaRow(id=name, state=state, created_at=T0 - timedelta(seconds=age_s),
                      draining_since=since)  # fmt: skip


def ids(replicas: list[ReplicaRow]) -> list[str]:
    return sorted(r.id for r in replicas)


class TestDraining:
    """A replica released by a scale-down drains: no new requests, then stopped once the
    servers report nothing left on it, or at the limit (jobs/deployments/draining.py)."""

    def test_a_ready_replica_no_longer_needed_drains_instead_of_stopping(self) -> None:
        result = plan([replica("old", age_s=200), replica("new")], 1, in_flight=3, now=T0)
        assert ids(result.drain) == ["new"] and ids(result.serving) == ["old"]
        assert result.stop == [] and result.draining == 1

    def test_a_replica_that_serves_nothing_yet_is_stopped_at_once(self) -> None:
        result = plan([replica("ready"), replica("boot", "starting")], 1, in_flight=0, now=T0)
        assert [(r.id, why) for r, why in result.stop] == [("boot", "scaled down")]
        assert result.drain == []

    def test_it_drains_while_the_servers_report_requests_on_it(self) -> None:
        result = plan([replica("d", draining_s=DRAIN_GRACE_S + 30)], 0, in_flight=1, now=T0)
        assert result.stop == [] and result.draining == 1

    def test_it_waits_for_every_server_to_have_seen_it_drain(self) -> None:
        """Before the grace, a server may still route to it without having reported it."""
        result = plan([replica("d", draining_s=DRAIN_GRACE_S / 2)], 0, in_flight=0, now=T0)
        assert result.stop == []

    def test_it_stops_once_drained(self) -> None:
        result = plan([replica("d", draining_s=DRAIN_GRACE_S)], 0, in_flight=0, now=T0)
        [(stopped, why)] = result.stop
        assert stopped.id == "d" and why.startswith("scaled down: drained in")

    def test_draining_is_bounded(self) -> None:
        result = plan([replica("d", draining_s=DRAIN_TIMEOUT_S)], 0, in_flight=2, now=T0)
        [(_, why)] = result.stop
        assert "(the limit) with 2 request(s) left" in why

    def test_an_engine_that_exits_while_draining_is_stopped(self) -> None:
        result = plan([replica("d", "starting", draining_s=1)], 0, in_flight=1, now=T0)
        assert ids([r for r, _ in result.stop]) == ["d"]

    def test_the_load_back_takes_a_draining_replica_back_before_starting_one(self) -> None:
        live = [replica("serving"), replica("d1", draining_s=3), replica("d2", draining_s=1)]
        result = plan(live, 2, in_flight=1, now=T0)
        assert ids(result.undrain) == ["d2"]  # the most recently drained: the warmest
        assert ids(result.serving) == ["d2", "serving"] and result.draining == 1


class TestDrainingAhead:
    """The idle period counts the drain: once a scale-down is the drain's quiet wait away,
    the replicas it will release leave the routes, still counted, and stop when it comes."""

    def test_nothing_ahead_until_the_scale_down_is_near(self) -> None:
        state = ScaleState(3, below_since=T0)
        assert routed_ahead(LIMITS, state, 0, T0 + timedelta(seconds=54), lead_s=5) is None
        assert routed_ahead(LIMITS, state, 0, T0 + timedelta(seconds=55), lead_s=5) == 1
        assert routed_ahead(LIMITS, ScaleState(3), 0, T0, lead_s=5) is None  # load wants 3

    def test_the_last_replica_never_drains_ahead(self) -> None:
        """Going to zero, a request meanwhile would have nowhere to go."""
        state = ScaleState(1, below_since=T0)
        assert routed_ahead(LIMITS_ZERO, state, 0, T0 + timedelta(seconds=59), lead_s=5) is None
        two = ScaleState(2, below_since=T0)
        assert routed_ahead(LIMITS_ZERO, two, 0, T0 + timedelta(seconds=59), lead_s=5) == 1

    def test_replicas_drained_ahead_are_held_not_stopped_nor_replaced(self) -> None:
        live = [replica("old", age_s=200), replica("new"), replica("d", draining_s=30)]
        result = plan(live, 3, in_flight=0, now=T0, routed=1)
        assert ids(result.serving) == ["old"] and ids(result.drain) == ["new"]
        assert result.stop == [] and ids(result.held) == ["d", "new"]

    def test_once_the_count_drops_they_stop_at_once_if_drained(self) -> None:
        live = [replica("old", age_s=200), replica("d1", draining_s=DRAIN_GRACE_S),
                replica("d2", draining_s=DRAIN_GRACE_S)]  # fmt: skip
        result = plan(live, 1, in_flight=0, now=T0)
        assert ids([r for r, _ in result.stop]) == ["d1", "d2"] and result.held == []
