"""GRPO on-policy, checked numerically: the trainer scores tokens at the rollouts'
temperature, the rollout log-probabilities are those of the distribution sampled, the
truncated importance weights and their cap, DAPO's refill, and the difficulty band."""

from __future__ import annotations

import math
import random

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from souverain.training.grpo_objective import (  # noqa: E402
    LOGPROB_FLOOR,
    groups_logprobs,
    surrogate_loss,
    truncated_importance_weights,
)
from souverain.training.rollouts import sampled_logprob  # noqa: E402
from souverain.training.selection import DifficultyBand, fill_informative  # noqa: E402
from tests.unit.test_grpo_shared_prompt import tiny_model  # noqa: E402


class TestTemperatureOnBothSides:
    def test_the_trainer_scores_tokens_at_the_sampling_temperature(self) -> None:
        model = tiny_model()
        prompt, completion = [1, 5, 9], [7, 8, 3]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
            logp, _ = groups_logprobs(model, [(prompt, [completion])], pad=0, temperature=0.5)
        steps = logits[len(prompt) - 1 : -1] / 0.5
        expected = torch.log_softmax(steps, -1).gather(-1, torch.tensor(completion)[:, None])
        torch.testing.assert_close(logp[0], expected[:, 0], atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            plain, _ = groups_logprobs(model, [(prompt, [completion])], pad=0)
        assert not torch.allclose(plain, logp, atol=1e-3)  # temperature 1 is another policy

    def test_the_rollout_logprob_is_the_tempered_softmax(self) -> None:
        logits = [2.0, 1.0, 0.0, -1.0]
        z = sum(math.exp(x / 0.8) for x in logits)
        for token in range(4):
            assert sampled_logprob(logits, token, temperature=0.8) == pytest.approx(
                logits[token] / 0.8 - math.log(z)
            )

    def test_a_nucleus_is_renormalised_as_llama_cpp_applies_it(self) -> None:
        # probabilities at temperature 1: 0.64, 0.24, 0.09, 0.03; top_p 0.8 keeps two
        logits = [math.log(0.64), math.log(0.24), math.log(0.09), math.log(0.03)]
        kept = math.exp(logits[0] / 0.5) + math.exp(logits[1] / 0.5)
        assert sampled_logprob(logits, 1, temperature=0.5, top_p=0.8) == pytest.approx(
            logits[1] / 0.5 - math.log(kept)
        )
        assert sampled_logprob(logits, 2, temperature=0.5, top_p=0.8) == LOGPROB_FLOOR


class TestTruncatedImportanceSampling:
    def test_weights_are_the_ratio_cut_at_the_cap_and_zero_off_the_mask(self) -> None:
        trainer = torch.log(torch.tensor([[0.5, 0.3, 0.9]]))
        rollout = torch.log(torch.tensor([[0.5, 0.1, 0.6]]))
        mask = torch.tensor([[1.0, 1.0, 0.0]])
        weights, gap = truncated_importance_weights(trainer, rollout, mask, cap=2.0)
        torch.testing.assert_close(weights, torch.tensor([[1.0, 2.0, 0.0]]))  # 3 cut to 2
        assert gap.gap_mean == pytest.approx((0 + math.log(3)) / 2, rel=1e-5)
        assert gap.capped_fraction == pytest.approx(0.5)
        assert gap.outside_fraction == pytest.approx(0.5)

    def test_the_weight_scales_the_token_gradient_and_carries_none_itself(self) -> None:
        logp = torch.zeros(1, 2, requires_grad=True)
        weights = torch.tensor([[0.5, 2.0]], requires_grad=True)
        surrogate_loss(logp, logp.detach(), torch.tensor([1.0]), torch.ones(1, 2),
                       epsilon_low=0.2, epsilon_high=0.28, weights=weights).backward()  # fmt: skip
        assert logp.grad is not None
        torch.testing.assert_close(logp.grad, torch.tensor([[-0.25, -1.0]]))
        assert weights.grad is None

    def test_a_floored_rollout_logprob_is_counted_left_uncorrected_and_keeps_metrics_finite(
        self,
    ) -> None:
        trainer = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
        rollout = torch.tensor([[math.log(0.25), LOGPROB_FLOOR, LOGPROB_FLOOR]])
        mask = torch.tensor([[1.0, 1.0, 0.0]])
        weights, gap = truncated_importance_weights(trainer, rollout, mask, cap=4.0)
        torch.testing.assert_close(weights, torch.tensor([[2.0, 1.0, 0.0]]))
        assert gap.floored_tokens == 1
        assert gap.gap_mean == pytest.approx(math.log(2.0), abs=1e-6)
        metrics = gap.as_metrics()
        assert metrics["rollout_logprob_floored"] == 1
        assert all(math.isfinite(v) for v in metrics.values())

    def test_an_infinite_rollout_logprob_is_refused(self) -> None:
        trainer = torch.zeros((1, 2))
        rollout = torch.tensor([[-math.inf, -1.0]])
        with pytest.raises(ValueError, match="finite"):
            truncated_importance_weights(trainer, rollout, torch.ones((1, 2)), cap=2.0)

    def test_no_mismatch_means_weights_of_one(self) -> None:
        same = torch.log(torch.tensor([[0.2, 0.7]]))
        weights, gap = truncated_importance_weights(same, same, torch.ones(1, 2), cap=2.0)
        torch.testing.assert_close(weights, torch.ones(1, 2))
        assert gap.gap_mean == 0.0 and gap.capped_fraction == 0.0


class TestRefill:
    def batches(self, *informative: list[bool]) -> object:
        pending = [list(b) for b in informative]
        return lambda: pending.pop(0)

    def test_refilled_until_the_planned_informative_groups(self) -> None:
        draw = self.batches([True, False, False, False], [False, True, False, True],
                            [True, True, True, True])  # fmt: skip
        filled = fill_informative(draw, bool, planned=4, rounds=2)  # type: ignore[arg-type]
        assert len(filled.kept) == 4  # 1 + 2 + the first of the third batch
        assert filled.rounds == 2 and len(filled.drawn) == 12

    def test_bounded_by_the_rounds(self) -> None:
        draw = self.batches([False, False], [True, False], [True, True])
        filled = fill_informative(draw, bool, planned=2, rounds=1)  # type: ignore[arg-type]
        assert len(filled.kept) == 1 and filled.rounds == 1 and len(filled.drawn) == 4

    def test_a_full_first_batch_samples_nothing_more(self) -> None:
        draw = self.batches([True, True], [True, True])
        filled = fill_informative(draw, bool, planned=2, rounds=3)  # type: ignore[arg-type]
        assert filled.rounds == 0 and len(filled.drawn) == 2


class TestDifficultyBand:
    def test_prompts_all_right_or_all_wrong_rest_one_pass(self) -> None:
        band = DifficultyBand(4, random.Random(0), low=0.0, high=1.0, rest_epochs=1)
        first = band.draw(4)
        assert sorted(first) == [0, 1, 2, 3]
        band.observe(0, 1.0)  # always right
        band.observe(1, 0.0)  # always wrong
        band.observe(2, 0.5)  # sometimes: in the band
        band.observe(3, 0.25)
        second = band.draw(2)
        assert sorted(second) == [2, 3] and band.skipped == 2
        assert sorted(band.draw(4)) == [0, 1, 2, 3]  # rested one pass, then back

    def test_never_starves_when_every_prompt_rests(self) -> None:
        band = DifficultyBand(2, random.Random(0), low=0.0, high=1.0, rest_epochs=3)
        band.draw(2)
        band.observe(0, 1.0)
        band.observe(1, 0.0)
        assert sorted(band.draw(2)) == [0, 1]

    def test_off_keeps_every_prompt(self) -> None:
        band = DifficultyBand(3, random.Random(0), low=0.0, high=1.0, rest_epochs=0)
        band.draw(3)
        band.observe(0, 1.0)
        assert sorted(band.draw(3)) == [0, 1, 2]
