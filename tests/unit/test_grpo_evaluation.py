"""A reinforcement job's held-out evaluation: the paired bootstrap on known cases, held-out
prompts disjoint from training (also a held-out template set), and the report's greedy and
sampled figures, overall and by template set."""

from __future__ import annotations

import hashlib
import random
import re
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


class TestHeldOutTemplates:
    """`heldout-templates` measures a phrasing never trained on: no template of it is in
    the training split, while `heldout` keeps the training templates on new problems."""

    def test_its_templates_are_never_in_the_training_split(self) -> None:
        train = list(mathgen.problems("train", 600))
        same = list(mathgen.problems("heldout", 200))
        unseen = list(mathgen.problems("heldout-templates", 200))
        trained = {p.template for p in train}
        assert trained == set(mathgen.TEMPLATES["seen"])
        assert {p.template for p in same} == trained
        assert {p.template for p in unseen} == set(mathgen.TEMPLATES["unseen"])
        assert not trained & {p.template for p in unseen}
        questions = [p.question for p in train]
        assert evaluation.overlapping(questions, [p.question for p in unseen]) == []
        assert evaluation.overlapping([p.question for p in same],
                                      [p.question for p in unseen]) == []  # fmt: skip

    def test_no_unseen_question_shares_a_training_questions_wording(self) -> None:
        """Numbers aside, the unseen questions' words are never a training question's."""

        def wording(text: str) -> str:
            return re.sub(r"\d+|[+\-×]", "#", text)

        trained = {wording(p.question) for p in mathgen.problems("train", 600)}
        for problem in mathgen.problems("heldout-templates", 100):
            assert wording(problem.question) not in trained, problem.question

    def test_every_language_and_kind_and_the_line_names_its_template(self) -> None:
        unseen = list(mathgen.problems("heldout-templates", 50))
        assert {p.language for p in unseen} == set(mathgen.LANGUAGES)
        assert {p.kind for p in unseen} == {"arithmetic", "word"}
        line = unseen[0].chat(worked=False)
        assert line["template"] == unseen[0].template

    def test_deterministic_and_the_earlier_splits_unchanged(self) -> None:
        assert [p.question for p in mathgen.problems("heldout-templates", 30)] == [
            p.question for p in mathgen.problems("heldout-templates", 30)
        ]
        # the first 300 problems of each split, as written before the template sets existed
        for split, digest in (("train", "00d3d86919c7e90f"), ("heldout", "4c2f788cb9bae637")):
            text = "\n".join(f"{p.question}|{p.thinking}|{p.answer_text}"
                             for p in mathgen.problems(split, 300))  # fmt: skip
            assert hashlib.sha256(text.encode()).hexdigest()[:16] == digest, split


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

    def test_prompts_are_reported_apart_by_template_set_and_paired_within_it(self) -> None:
        def answered(greedy: float, templates: str) -> Answered:
            return Answered("en", Scored(greedy, greedy >= 1.0), [Scored(greedy, greedy >= 1.0)],
                            templates)  # fmt: skip

        before_rows = [answered(0.0, "trained"), answered(0.0, "unseen"),
                       answered(1.0, "unseen")]  # fmt: skip
        after_rows = [answered(1.0, "trained"), answered(0.0, "unseen"),
                      answered(1.0, "unseen")]  # fmt: skip
        report = evaluation.report(after_rows, samples=1, temperature=0.8)
        assert report["templates"]["trained"]["samples"] == 1
        assert report["templates"]["unseen"]["pass_at_1"] == 0.5
        before, after = evaluation.per_prompt(before_rows), evaluation.per_prompt(after_rows)
        change = evaluation.changes_by_templates(before, after, after_rows, seed=0)
        assert change["trained"]["greedy_pass_at_1"]["delta"] == 1.0
        assert change["unseen"]["greedy_pass_at_1"]["delta"] == 0.0
        assert change["unseen"]["greedy_pass_at_1"]["prompts"] == 2

    def test_prompts_without_a_template_add_no_template_figures(self) -> None:
        rows = [self.answered(1.0, [1.0])]
        assert "templates" not in evaluation.report(rows, samples=1, temperature=0.8)
        scores = evaluation.per_prompt(rows)
        assert evaluation.changes_by_templates(scores, scores, rows, seed=0) == {}
