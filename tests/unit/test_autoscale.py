"""The autoscaler's decision: how many replicas a deployment wants after each reading of its
load, with hysteresis (up after readings in a row above target, down only after an idle
period), never outside its limits, and from zero at once when someone waits."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from souverain.scheduler.autoscale import Limits, ScaleState, decide, needed

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

    def test_replicas_answering_requests_are_never_released(self) -> None:
        """Below the target is not idle: without draining, a released replica would cut
        the streams it answers, so the count holds while anything is outstanding."""
        assert run(LIMITS, 3, [1] * 200)[-1] == 3

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
