"""The GRPO job's own logic, on a tiny model with the rollout engine and grader faked:
which adapter it keeps, what it refuses before any compute, how it sizes its sampling,
and the importance weights its update applies."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from souverain.training import (  # noqa: E402
    grpo,
    grpo_groups,
    grpo_heldout,
    grpo_objective,
    grpo_update,
)
from souverain.training.evaluation import Answered  # noqa: E402
from souverain.training.grading import Graded  # noqa: E402

# PEFT asks transformers a deprecated question when it wraps a model
pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")

GRADER = {"type": "string_check", "name": "exact", "input": "{{sample.output_text}}",
          "reference": "{{item.answer}}", "operation": "eq"}  # fmt: skip


def job(tmp_path: Path, **hyperparameters: Any) -> grpo.Job:
    spec = {"hyperparameters": hyperparameters, "grader": GRADER, "output_dir": str(tmp_path),
            "base": {"path": str(tmp_path)}, "train": str(tmp_path / "train.jsonl")}  # fmt: skip
    return grpo.Job(spec, grpo.Progress(tmp_path / "progress.jsonl"))


def tiny_lora() -> Any:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    base = transformers.LlamaForCausalLM(config).float()
    lora = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj"],
                           task_type="CAUSAL_LM")  # fmt: skip
    return peft.get_peft_model(base, lora)


def lora_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def events(tmp_path: Path, kind: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "progress.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == kind]


def answered(reward: float) -> Answered:
    score = Graded(reward, True, reward >= 1.0, None, None)
    return Answered("?", score, [score])


class TestTheStartingAdapterCanBeKept:
    def test_a_job_whose_steps_make_the_model_worse_ends_with_its_starting_adapter(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made = job(tmp_path, max_steps=2, dev_samples=1, dev_steps=2)
        dev_rewards = iter([0.6, 0.2])  # before any step, then after the last: worse
        started: dict[str, Any] = {}

        def load() -> None:
            made.model, made.step, made.tokens, made.last_metrics = tiny_lora(), 0, 0, {}
            made.rollouts = type("Closed", (), {"close": lambda self: None})()
            started.update(lora_state(made.model))

        def train() -> None:
            with torch.no_grad():
                for p in made.model.parameters():
                    if p.requires_grad:
                        p.add_(0.5)
            made.step = 2
            made._dev_check()

        monkeypatch.setattr(grpo, "load_tokenizer", lambda base: None)
        monkeypatch.setattr(grpo, "_export_gguf", lambda *a: None)
        monkeypatch.setattr(made, "_read", lambda: setattr(made, "train", [1]) or None)
        monkeypatch.setattr(made, "_load", load)
        monkeypatch.setattr(made, "_train", train)
        monkeypatch.setattr(made, "_sync_adapter", lambda: None)
        monkeypatch.setattr(made, "answer", lambda items, samples: [answered(next(dev_rewards))])
        made.dev, made.valid = [object()], []  # type: ignore[list-item]
        monkeypatch.setattr(grpo.signal, "signal", lambda *a: None)

        assert made.run() == 0
        assert [e["step"] for e in events(tmp_path, "dev")] == [0, 2]
        done = events(tmp_path, "done")[0]
        assert done["metrics"]["kept"] == {"step": 0, "dev_mean_reward": 0.6}
        for name, value in lora_state(made.model).items():
            torch.testing.assert_close(value, started[name])


class FakeTokenizer:
    pad_token_id = 0

    def apply_chat_template(self, messages: Any, **_: Any) -> list[int]:
        return [1] * sum(len(str(m["content"]).split()) for m in messages)


def write_lines(path: Path, prompts: list[str], templates: list[str] | None = None) -> None:
    chats = [{"messages": [{"role": "user", "content": p}], "answer": "1"} for p in prompts]
    for chat, template in zip(chats, templates or [], strict=False):
        chat["template"] = template
    path.write_text("".join(json.dumps(c) + "\n" for c in chats))


class TestDevLinesAreChecked:
    def test_a_dev_line_too_long_for_the_job_is_refused_before_any_compute(
        self, tmp_path: Path
    ) -> None:
        prompts = [f"short {n}" for n in range(6)]
        write_lines(tmp_path / "train.jsonl", prompts)
        settings = {"dev_samples": 1, "max_tokens": 32, "length_cache": 8, "seq_len": 64}
        made = job(tmp_path, **settings)
        made.tokenizer = FakeTokenizer()
        assert made._read() is None
        held = prompts.index(made.dev[0].prompt)
        write_lines(tmp_path / "train.jsonl",
                    [p if n != held else "word " * 40 for n, p in enumerate(prompts)])  # fmt: skip
        made = job(tmp_path, **settings)
        made.tokenizer = FakeTokenizer()
        problem = made._read()
        assert problem is not None and problem["file"] == "dev"
        assert "exceed the job's seq_len of 64" in problem["message"]


class FakeRollouts:
    """Holds `sequences` completions a call, as llama.cpp's context does."""

    def __init__(self, gguf: Path, *, sequences: int, context: int, **_: Any) -> None:
        self.sequences = sequences

    def generate(self, prompts: list[list[int]], *, n: int, **_: Any) -> list[Any]:
        from souverain.training.rollouts import Sample

        if len(prompts) * n > self.sequences:
            raise ValueError(f"{len(prompts) * n} sequences asked, the context holds "
                             f"{self.sequences}")  # fmt: skip
        return [Sample(i // n, (5,), True, (-1.0,)) for i in range(len(prompts) * n)]


class TestEvaluationSamplesFitTheEngine:
    def test_more_samples_per_prompt_than_a_step_samples_are_evaluated(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from souverain.training import rollouts

        monkeypatch.setattr(rollouts, "Rollouts", FakeRollouts)
        made = job(tmp_path, batch_size=1, group_size=2, minibatches=1,
                   eval_samples_per_prompt=8)  # fmt: skip
        made.tokenizer = FakeTokenizer()
        made.tokenizer.decode = lambda tokens, **_: "1"  # type: ignore[attr-defined]
        write_lines(tmp_path / "valid.jsonl", ["what is one"])
        made.valid = grpo.read_items(tmp_path / "valid.jsonl", system=None)
        made._open_rollouts()
        (scored,) = made.answer(made.valid, samples=8)
        assert len(scored.sampled) == 8


class TestHeldOutTemplates:
    """A held-out prompt whose template the training file holds is reported apart from one
    whose template the job never trained on, each set with its own paired change."""

    def evaluated(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                  max_steps: int) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
        from souverain.training import rollouts

        monkeypatch.setattr(rollouts, "Rollouts", FakeRollouts)
        write_lines(tmp_path / "train.jsonl", ["one plus nought", "two less one"],
                    ["sum-1", "difference-1"])  # fmt: skip
        write_lines(tmp_path / "valid.jsonl", ["nought plus one", "what is three less two",
                                               "one, then add nought"],
                    ["sum-1", "difference-2", "sum-2"])  # fmt: skip
        made = job(tmp_path, max_steps=max_steps, batch_size=1, group_size=2, minibatches=1,
                   eval_samples_per_prompt=2)  # fmt: skip
        made.tokenizer = FakeTokenizer()
        made.tokenizer.decode = lambda tokens, **_: "1"  # type: ignore[attr-defined]
        made.spec["valid"] = str(tmp_path / "valid.jsonl")
        assert made._read() is None
        made._open_rollouts()
        return made.evaluate(first=True), made.evaluate(first=False)

    def test_trained_and_unseen_templates_each_with_their_change(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first, last = self.evaluated(tmp_path, monkeypatch, max_steps=5)
        assert first["templates"]["trained"]["samples"] == 1
        assert first["templates"]["unseen"]["samples"] == 2
        by_templates = last["change_by_templates"]
        assert by_templates["trained"]["greedy_pass_at_1"]["prompts"] == 1
        assert by_templates["unseen"]["sampled_mean_reward"]["prompts"] == 2

    def test_an_evaluation_job_trains_on_nothing_so_has_no_template_sets(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first, last = self.evaluated(tmp_path, monkeypatch, max_steps=0)
        assert "templates" not in first and "change_by_templates" not in last


class TestRolloutLogprobsMatchTheTokens:
    def test_each_token_gets_its_own_rollout_logprob(self) -> None:
        mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
        laid = grpo_update.padded([(-1.0, -2.0, -3.0), (-4.0,)], mask)
        torch.testing.assert_close(laid, torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]]))

    def test_fewer_logprobs_than_tokens_are_refused_not_zero_filled(self) -> None:
        mask = torch.tensor([[1.0, 1.0, 1.0]])
        with pytest.raises(ValueError, match="2 rollout log-probabilities for 3 tokens"):
            grpo_update.padded([(-1.0, -2.0)], mask)


class TestTheDevSplit:
    def test_drawn_by_the_seed_from_the_whole_file_not_its_tail(self, tmp_path: Path) -> None:
        prompts = [f"question {n}" for n in range(20)]
        write_lines(tmp_path / "train.jsonl", prompts)
        splits = []
        for seed in (0, 0, 1):
            made = job(tmp_path, dev_samples=4, seed=seed)
            made.tokenizer = FakeTokenizer()
            assert made._read() is None
            dev, train = [i.prompt for i in made.dev], [i.prompt for i in made.train]
            assert sorted(dev + train) == sorted(prompts) and len(dev) == 4
            splits.append(dev)
        assert splits[0] == splits[1] != splits[2]
        assert splits[0] != prompts[-4:]


class TestSamplingSeedsApart:
    def test_no_training_batch_shares_a_round_with_an_evaluation_call(self) -> None:
        from souverain.training import configs

        steps = int(configs.bounds_of(grpo.GRPOConfig, "max_steps")[1])
        draws = 1 + int(configs.bounds_of(grpo.GRPOConfig, "refill_rounds")[1])
        assert draws < grpo_groups.DRAWS_PER_STEP
        assert grpo_groups.training_round(steps, draws) < grpo_heldout.evaluation_round(0)
        # where they used to meet: step 625's first batch and the evaluation at prompt 1
        assert grpo_groups.training_round(625, 1) != grpo_heldout.evaluation_round(1)


class TestTheUpdateWeighsEachTokenByTheRolloutRatio:
    """`_update` wired end to end: the rollout log-probabilities the samples carry become
    each token's truncated importance weight min(π_trainer / π_rollout, tis_cap)."""

    def weights(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, shift: float,
                cap: float) -> tuple[Any, Any]:  # fmt: skip
        from souverain.training.rollouts import Sample

        made = job(tmp_path, batch_size=1, minibatches=1, tis_cap=cap)
        made.model, made.tokenizer = tiny_lora(), FakeTokenizer()
        made.optimizer = torch.optim.SGD(made.model.parameters(), lr=0.0)
        prompt, completions = [1, 5, 9], [[7, 8, 3], [4, 2]]
        with torch.no_grad():
            trainer, mask = grpo_objective.groups_logprobs(made.model, [(prompt, completions)], pad=0,
                                                 temperature=made.hp.temperature)  # fmt: skip
        samples = [Sample(0, tuple(c), True, tuple((trainer[row, : len(c)] + shift).tolist()))
                   for row, c in enumerate(completions)]  # fmt: skip
        seen: dict[str, Any] = {}

        def surrogate(*args: Any, weights: Any, **kwargs: Any) -> Any:
            seen["weights"] = weights
            return grpo_objective.surrogate_loss(*args, weights=weights, **kwargs)

        monkeypatch.setattr(grpo_update, "surrogate_loss", surrogate)
        made._update([grpo_groups.Group(prompt, samples, [], [1.0, -1.0])])
        return seen["weights"], mask

    def test_a_rollout_half_as_likely_as_the_trainer_weighs_two(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        weights, mask = self.weights(tmp_path, monkeypatch, shift=-math.log(2), cap=4.0)
        torch.testing.assert_close(weights, 2.0 * mask, atol=1e-4, rtol=1e-4)

    def test_the_weight_is_cut_at_the_cap(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        weights, mask = self.weights(tmp_path, monkeypatch, shift=-math.log(2), cap=1.5)
        torch.testing.assert_close(weights, 1.5 * mask, atol=1e-4, rtol=1e-4)

    def test_a_rollout_twice_as_likely_weighs_a_half(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        weights, mask = self.weights(tmp_path, monkeypatch, shift=math.log(2), cap=4.0)
        torch.testing.assert_close(weights, 0.5 * mask, atol=1e-4, rtol=1e-4)
