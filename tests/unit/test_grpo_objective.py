"""The GRPO objective with the Magistral changes, checked numerically on hand-made groups;
the rewards and graders; the multilingual math generator."""

from __future__ import annotations

import math
import re

import pytest
import torch

from souverain.core.reasoning import SYSTEM_PROMPT
from souverain.training import mathgen, rewards
from souverain.training.grpo_objective import group_advantages, normalise, surrogate_loss


class TestAdvantages:
    def test_reward_minus_group_mean(self) -> None:
        assert group_advantages([[1.0, 0.0, 0.0, 1.0]]) == [[0.5, -0.5, -0.5, 0.5]]

    def test_a_group_of_equal_rewards_is_removed(self) -> None:
        out = group_advantages([[0.1, 0.1, 0.1], [1.1, 0.1, 0.1]])
        assert out[0] is None
        assert out[1] == pytest.approx([2 / 3, -1 / 3, -1 / 3])

    def test_minibatch_normalisation(self) -> None:
        values = normalise([2.0, -1.0, -1.0, 0.5, -0.5])
        mean = sum(values) / len(values)
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
        assert mean == pytest.approx(0.0, abs=1e-9)
        assert std == pytest.approx(1.0, abs=1e-5)


def loss(ratio: list[list[float]], adv: list[float], mask: list[list[float]], **kw: float) -> float:
    logp = torch.log(torch.tensor(ratio))
    return float(
        surrogate_loss(
            logp,
            torch.zeros_like(logp),
            torch.tensor(adv),
            torch.tensor(mask),
            epsilon_low=kw.get("low", 0.2),
            epsilon_high=kw.get("high", 0.28),
        )
    )


class TestSurrogate:
    def test_token_level_normalisation(self) -> None:
        # A long answer (3 tokens, A=+1) and a short one (1 token, A=-1), ratio 1: the sum
        # over tokens divided by all 4 tokens gives -(3 - 1)/4; a per-sequence mean would
        # give -(1 - 1)/2 = 0.
        value = loss([[1, 1, 1], [1, 1, 1]], [1.0, -1.0], [[1, 1, 1], [1, 0, 0]])
        assert value == pytest.approx(-0.5)

    def test_clip_higher_bounds_a_rising_ratio_at_1_28(self) -> None:
        assert loss([[1.5]], [1.0], [[1.0]]) == pytest.approx(-1.28)
        assert loss([[1.5]], [1.0], [[1.0]], high=0.2) == pytest.approx(-1.2)  # symmetric

    def test_clip_lower_at_0_8_for_negative_advantages(self) -> None:
        assert loss([[0.5]], [-1.0], [[1.0]]) == pytest.approx(0.8)
        assert loss([[1.1]], [-1.0], [[1.0]]) == pytest.approx(1.1)  # unclipped side

    def test_no_gradient_once_clipped(self) -> None:
        logp = torch.log(torch.tensor([[1.5]])).requires_grad_()
        surrogate_loss(logp, torch.zeros(1, 1), torch.tensor([1.0]), torch.ones(1, 1),
                       epsilon_low=0.2, epsilon_high=0.28).backward()  # fmt: skip
        assert logp.grad is not None and float(logp.grad) == 0.0

    def test_beta_zero_needs_no_reference_and_beta_adds_kl(self) -> None:
        logp = torch.log(torch.tensor([[0.5, 0.5]]))
        args = (logp, logp.clone(), torch.tensor([1.0]), torch.ones(1, 2))
        plain = surrogate_loss(*args, epsilon_low=0.2, epsilon_high=0.28)
        with pytest.raises(ValueError, match="reference"):
            surrogate_loss(*args, epsilon_low=0.2, epsilon_high=0.28, beta=0.1)
        ref = logp + 0.5
        kl = float(torch.exp(torch.tensor(0.5)) - 0.5 - 1)
        with_kl = surrogate_loss(*args, epsilon_low=0.2, epsilon_high=0.28, beta=0.1,
                                 ref_logp=ref)  # fmt: skip
        assert float(with_kl) == pytest.approx(float(plain) + 0.1 * kl)


PROMPT = "Combien font 12 plus 30 ? Répondez avec soin."
THOUGHT = "Je dois additionner douze et trente, ce qui fait quarante-deux au total."
ANSWER = "La somme est donc quarante-deux : $\\boxed{42}$."


def score(text: str, tokens: int = 50) -> rewards.Scored:
    return rewards.magistral(text, prompt=PROMPT, reference="42", tokens=tokens,
                             l_max=200, l_cache=50)  # fmt: skip


class TestMagistralReward:
    def test_formatted_correct_and_consistent(self) -> None:
        scored = score(f"<think>{THOUGHT}</think>\n\n{ANSWER}")
        assert (scored.formatted, scored.correct, scored.consistent) == (True, True, True)
        assert scored.reward == pytest.approx(1.1)

    def test_format_failures_score_zero(self) -> None:
        for text in (
            ANSWER,  # no thinking
            f"{ANSWER}<think>{THOUGHT}</think>{ANSWER}",  # not first
            f"<think>{THOUGHT}</think><think>{THOUGHT}</think>{ANSWER}",  # two blocks
            f"<think>{THOUGHT}",  # never closed
            f"<think>{THOUGHT}</think>\n\nLa somme est quarante-deux.",  # no \boxed
        ):
            assert score(text).reward == 0.0, text

    def test_wrong_answer_keeps_the_format_and_language_reward(self) -> None:
        scored = score(f"<think>{THOUGHT}</think>\n\n{ANSWER.replace('42', '41')}")
        assert scored.reward == pytest.approx(0.2) and not scored.correct

    def test_language_mismatch_loses_the_language_reward(self) -> None:
        english = "So the total is forty-two, which answers the question: $\\boxed{42}$."
        scored = score(f"<think>{THOUGHT}</think>\n\n{english}")
        assert scored.consistent is False and scored.reward == pytest.approx(1.0)

    def test_soft_length_penalty(self) -> None:
        assert rewards.length_penalty(150, l_max=200, l_cache=50) == 0.0
        assert rewards.length_penalty(175, l_max=200, l_cache=50) == pytest.approx(-0.05)
        assert rewards.length_penalty(200, l_max=200, l_cache=50) == pytest.approx(-0.1)
        assert rewards.length_penalty(900, l_max=200, l_cache=50) == pytest.approx(-0.1)
        text = f"<think>{THOUGHT}</think>\n\n{ANSWER}"
        assert score(text, tokens=175).reward == pytest.approx(1.05)

    def test_verifier_compares_values_not_strings(self) -> None:
        assert rewards.verify("\\frac{1}{2}", "0.5")
        assert rewards.verify("42", "42.0")
        assert not rewards.verify("41", "42")
        assert rewards.last_boxed("a \\boxed{1} then \\boxed{\\frac{3}{4}}") == "\\frac{3}{4}"


class TestGraders:
    def test_string_check_and_similarity_on_the_answer_after_thinking(self) -> None:
        item = {"answer": "42"}
        check = rewards.build({"type": "string_check", "name": "eq", "operation": "eq",
                               "input": "{{sample.output_text}}", "reference": "{{item.answer}}"})  # fmt: skip
        answer = rewards.answer_of("<think>hmm</think>\n42")
        assert check(answer, item) == 1.0 and check("41", item) == 0.0
        similar = rewards.build({"type": "text_similarity", "evaluation_metric": "fuzzy_match",
                                 "input": "{{sample.output_text}}", "reference": "{{item.answer}}"})  # fmt: skip
        assert similar("42", item) == 1.0 and 0 < similar("420", item) < 1.0

    def test_multi_combines_by_a_formula(self) -> None:
        spec = {"type": "multi", "calculate_output": "0.25 * a + 0.75 * max(b, 0)", "graders": {
            "a": {"type": "string_check", "operation": "ilike", "input": "{{sample.output_text}}",
                  "reference": "yes"},
            "b": {"type": "string_check", "operation": "eq", "input": "{{sample.output_text}}",
                  "reference": "{{item.answer}}"}}}  # fmt: skip
        rewards.check_grader(spec)
        assert rewards.build(spec)("YES", {"answer": "YES"}) == pytest.approx(1.0)
        assert rewards.build(spec)("oh yes", {"answer": "no"}) == pytest.approx(0.25)

    @pytest.mark.parametrize(
        ("spec", "message"),
        [
            ({"type": "python", "source": "def grade(s, i): return 1"}, "run your code"),
            ({"type": "score_model", "model": "x"}, "not available"),
            (
                {
                    "type": "multi",
                    "graders": {
                        "a": {
                            "type": "string_check",
                            "operation": "eq",
                            "input": "x",
                            "reference": "y",
                        }
                    },
                    "calculate_output": "__import__('os')",
                },
                "may use",
            ),
            (
                {
                    "type": "multi",
                    "graders": {
                        "a": {
                            "type": "string_check",
                            "operation": "eq",
                            "input": "x",
                            "reference": "y",
                        }
                    },
                    "calculate_output": "a.real",
                },
                "may use",
            ),
            (
                {
                    "type": "string_check",
                    "operation": "eq",
                    "input": "{{sample.output_json}}",
                    "reference": "y",
                },
                "only",
            ),
            (
                {
                    "type": "text_similarity",
                    "evaluation_metric": "bleu",
                    "input": "x",
                    "reference": "y",
                },
                "fuzzy_match",
            ),
            ({"type": "magistral", "l_max": 10**9}, "l_max"),
            ({"type": "magistral", "padding": "x" * 1000}, "unknown field"),
            (
                {
                    "type": "string_check",
                    "name": "n" * 200,
                    "operation": "eq",
                    "input": "x",
                    "reference": "y",
                },
                "name",
            ),
        ],
    )
    def test_refused_with_a_reason(self, spec: dict[str, object], message: str) -> None:
        with pytest.raises(rewards.GraderError, match=message):
            rewards.check_grader(spec)

    @pytest.mark.parametrize(
        ("formula", "message"),
        [
            ("min()", r"min\(\) takes 2 to 8 arguments"),
            ("min(a)", r"min\(\) takes 2 to 8 arguments"),  # min(0.5): a float is not iterable
            ("abs(a, a)", r"abs\(\) takes 1 arguments"),
            ("max(*a)", "takes"),
            ("1e999 * a", "finite"),
            ("a * " + "9" * 400, "finite"),  # an int literal float() cannot hold
            ("a * 1e300", "at most 1e"),
            ("1e6 * " * 60 + "a", "must have a finite value"),  # each number within bounds
            ("True + a", "finite"),
        ],
    )
    def test_formulas_that_could_only_fail_after_compute_are_refused(
        self, formula: str, message: str
    ) -> None:
        """Each of these passed validation and failed once the job had spent its compute."""
        check = {"type": "string_check", "operation": "eq", "input": "x", "reference": "y"}
        spec = {"type": "multi", "graders": {"a": check}, "calculate_output": formula}
        with pytest.raises(rewards.GraderError, match=message):
            rewards.check_grader(spec)


class TestMathGenerator:
    def test_deterministic_disjoint_and_in_five_languages(self) -> None:
        train = [p.question for p in mathgen.problems("train", 200)]
        assert train == [p.question for p in mathgen.problems("train", 200)]
        heldout = {p.question for p in mathgen.problems("heldout", 100)}
        assert len(set(train)) == 200 and not heldout & set(train)
        assert {p.language for p in mathgen.problems("train", 50)} == set(mathgen.LANGUAGES)

    def test_answers_are_right(self) -> None:
        for problem in mathgen.problems("train", 100):
            if problem.kind == "arithmetic":
                a, op, b = re.findall(r"(\d+) ([+\-×]) (\d+)", problem.question)[0]
                value = {"+": int(a) + int(b), "-": int(a) - int(b), "×": int(a) * int(b)}[op]
                assert value == problem.answer, problem.question

    @pytest.mark.parametrize("split", ["train", "heldout-templates"])
    def test_worked_examples_earn_the_full_magistral_reward_in_every_language(
        self, split: str
    ) -> None:
        for problem in mathgen.problems(split, 40):
            chat = problem.chat(worked=True, system=SYSTEM_PROMPT)
            reply = chat["messages"][-1]["content"]
            scored = rewards.magistral(reply, prompt=problem.question, reference=chat["answer"],
                                       tokens=60, l_max=192, l_cache=64)  # fmt: skip
            assert scored.reward == pytest.approx(1.1), (problem.language, reply)
