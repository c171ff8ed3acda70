"""A reinforcement job's held-out evaluation: the paired bootstrap on known cases, held-out
prompts disjoint from training, and the report's greedy and sampled figures."""

from __future__ import annotations

import random
import statistics
from dataclasses import dataclass

import pytest

from souverain.training import evaluation, mathgen
from souverain.training.evaluation import Answered, paired_bootstrap


class TestPairedBootstrap:
    def test_no_change_is_exactly_zero(self) -> None:
        scores = [0.1, 0.9, 0.5, 0.0]
        change = paired_bootstrap(scores, scores)
        assert (change.delta, change.low, change.high) == (0.0, 0.0, 0.0)

    def test_the_same_gain_on_every_prompt_has_no_width(self) -> None:
        change = paired_bootstrap([0.2, 0.4, 0.6], [0.45, 0.65, 0.85])
        assert change.delta == pytest.approx(0.25)
        assert change.low == pytest.approx(0.25) and change.high == pytest.approx(0.25)
        assert (change.before, change.after, change.prompts) == (0.4, 0.65, 3)

    def test_pairing_removes_the_prompts_own_difficulty(self) -> None:
        # Prompts of very different difficulty, each up by 0.1 ± 0.02: unpaired, the
        # spread of difficulty would swamp the gain; paired, the interval is tight.
        rng = random.Random(1)
        before = [rng.random() * 0.8 for _ in range(200)]
        after = [b + 0.1 + rng.uniform(-0.02, 0.02) for b in before]
        change = paired_bootstrap(before, after)
        assert 0.09 < change.low < change.delta < change.high < 0.11

    def test_the_interval_of_noise_covers_zero_at_the_normal_width(self) -> None:
        rng = random.Random(2)
        before = [float(rng.random() < 0.5) for _ in range(400)]
        after = [float(rng.random() < 0.5) for _ in range(400)]
        change = paired_bootstrap(before, after, seed=3)
        diffs = [a - b for a, b in zip(after, before, strict=True)]
        se = statistics.pstdev(diffs) / len(diffs) ** 0.5
        assert change.low < 0 < change.high
        assert change.high - change.low == pytest.approx(2 * 1.96 * se, rel=0.15)

    def test_the_interval_leaves_as_many_resamples_below_as_above(self) -> None:
        diffs = [random.Random(3).uniform(-1, 1) for _ in range(30)]
        diffs = [d * (i + 1) for i, d in enumerate(diffs)]
        change = paired_bootstrap([0.0] * 30, diffs, resamples=200, seed=5)
        rng = random.Random(5)
        means = [statistics.fmean(rng.choices(diffs, k=30)) for _ in range(200)]
        below = sum(m < change.low - 1e-4 for m in means)
        above = sum(m > change.high + 1e-4 for m in means)
        assert below == above == 5  # 2.5 % of 200 on each side
        assert evaluation.percentile_interval(list(range(2000))) == (50, 1949)

    def test_refuses_unpaired_scores(self) -> None:
        with pytest.raises(ValueError, match="same prompts"):
            paired_bootstrap([0.1, 0.2], [0.3])


class TestDisjoint:
    def test_held_out_prompts_also_trained_on_are_found(self) -> None:
        train = ["What is 2 + 2?", "Anna has 3 apples."]
        heldout = ["what is  2 + 2?", "Tom has 4 apples.", "ANNA has 3 apples."]
        assert evaluation.overlapping(train, heldout) == [0, 2]

    def test_the_generators_held_out_split_never_repeats_a_training_prompt(self) -> None:
        train = [p.question for p in mathgen.problems("train", 600)]
        heldout = [p.question for p in mathgen.problems("heldout", 200)]
        assert evaluation.overlapping(train, heldout) == []


@dataclass(frozen=True)
class Scored:
    reward: float
    correct: bool
    formatted: bool = True
    consistent: bool | None = True


class TestReport:
    def answered(self, greedy: float, sampled: list[float], group: str = "fr") -> Answered:
        return Answered(group, Scored(greedy, greedy >= 1.0),
                        [Scored(r, r >= 1.0) for r in sampled])  # fmt: skip

    def test_greedy_and_sampled_figures_per_language(self) -> None:
        rows = [
            self.answered(1.0, [1.0, 0.0, 0.0, 0.0]),
            self.answered(0.0, [1.0, 1.0, 0.0, 0.0], "de"),
        ]
        report = evaluation.report(rows, samples=4, temperature=0.8)
        assert report["overall"]["pass_at_1"] == 0.5
        assert report["overall"]["sampled"] == {"per_prompt": 4, "temperature": 0.8,
                                                "mean_reward": 0.375, "pass_at_1": 0.375}  # fmt: skip
        assert report["languages"]["fr"]["sampled"]["pass_at_1"] == 0.25

    def test_changes_pair_the_same_prompts(self) -> None:
        before = evaluation.per_prompt(
            [self.answered(0.0, [0.0, 0.0]), self.answered(1.0, [1.0, 0.0])]
        )
        after = evaluation.per_prompt(
            [self.answered(1.0, [1.0, 0.0]), self.answered(1.0, [1.0, 1.0])]
        )
        change = evaluation.changes(before, after, seed=0)
        assert change["sampled_pass_at_1"]["delta"] == 0.5
        assert change["greedy_pass_at_1"]["before"] == 0.5
        assert change["greedy_pass_at_1"]["after"] == 1.0
