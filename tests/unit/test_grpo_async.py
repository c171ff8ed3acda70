"""Asynchronous generation for GRPO: the generator's staleness bound, the discard of a
batch sampled too long ago, the importance weights a stale group gets, and the loop with
the generator on, a few real steps of the tiny LoRA model with the rollout engine faked."""

from __future__ import annotations

import itertools
import json
import math
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from souverain.training.grpo_async import Generator

torch = pytest.importorskip("torch")
pytest.importorskip("peft")

from souverain.training import grpo, grpo_groups, grpo_objective, grpo_update  # noqa: E402
from souverain.training.configs import GRPOConfig, SettingError, built  # noqa: E402
from tests.unit.test_grpo_job import (  # noqa: E402
    FakeTokenizer,
    events,
    job,
    tiny_lora,
    write_lines,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")


class Engine:
    """A fake engine: records which adapter sampled each batch, and that an adapter is
    never swapped while a batch is being sampled."""

    def __init__(self, rng: random.Random, *, slow: float) -> None:
        self.rng, self.slow = rng, slow
        self.loaded = 0
        self.sampling = False
        self.swapped_inside = 0

    def load(self, path: Path) -> None:
        self.swapped_inside += self.sampling
        self.loaded = int(path.name)

    def draw(self, number: int) -> list[int]:
        self.sampling = True
        time.sleep(self.rng.random() * self.slow)  # interleavings vary, nothing is timed
        self.sampling = False
        return [self.loaded, number]


class TestTheGeneratorBoundsStaleness:
    @pytest.mark.parametrize("k", [1, 2, 3])
    @pytest.mark.parametrize("trainer_slow", [0.0, 0.004])
    def test_no_batch_trained_on_is_more_than_k_updates_old(
        self, k: int, trainer_slow: float
    ) -> None:
        rng = random.Random(k)
        engine = Engine(rng, slow=0.002)
        generator: Generator[int] = Generator(engine.draw, engine.load, ahead=k)
        generator.start()
        seen, discarded = [], 0
        try:
            for version in range(30):
                for _ in range(rng.choice([1, 1, 2, 3])):  # refills take more batches
                    taken = generator.take(version, max_staleness=k)
                    discarded += taken.discarded
                    sampled_by = taken.batch.groups[0]
                    assert sampled_by == taken.batch.version  # stamped with its own adapter
                    seen.append(version - taken.batch.version)
                time.sleep(rng.random() * trainer_slow)
                generator.publish(version + 1, Path(str(version + 1)))
        finally:
            generator.stop()
        assert max(seen) <= k and min(seen) >= 0
        assert discarded == 0  # `ahead` = k bounds it without discarding anything
        assert engine.swapped_inside == 0

    def test_a_batch_older_than_k_is_discarded_and_counted(self) -> None:
        engine = Engine(random.Random(0), slow=0.0)
        # three batches queued ahead while only one update of staleness is allowed
        generator: Generator[int] = Generator(engine.draw, engine.load, ahead=3)
        generator.start()
        try:
            while len(generator._ready) < 3:
                time.sleep(0.001)
            assert generator.take(0, max_staleness=1).discarded == 0
            generator.publish(1, Path("1"))
            assert generator.take(1, max_staleness=1).discarded == 0
            generator.publish(2, Path("2"))
            taken = generator.take(2, max_staleness=1)
        finally:
            generator.stop()
        assert taken.discarded >= 2  # the third batch of version 0, its two groups
        assert 2 - taken.batch.version <= 1

    def test_stopping_keeps_the_batches_and_dropping_counts_them(self) -> None:
        engine = Engine(random.Random(0), slow=0.0)
        generator: Generator[int] = Generator(engine.draw, engine.load, ahead=2)
        generator.start()
        while len(generator._ready) < 2:
            time.sleep(0.001)
        generator.stop()
        assert generator.drop() == 4  # two batches of two groups
        assert generator.drop() == 0
        with pytest.raises(RuntimeError, match="stopped"):
            generator.take(0, max_staleness=1)

    def test_a_failure_in_the_generator_reaches_the_trainer(self) -> None:
        def draw(number: int) -> list[int]:
            raise ValueError("the engine broke")

        generator: Generator[int] = Generator(draw, lambda path: None, ahead=1)
        generator.start()
        with pytest.raises(RuntimeError, match="generator failed"):
            generator.take(0, max_staleness=1)
        generator.stop()


class TestTheSetting:
    def test_off_by_default_and_bounded(self) -> None:
        assert built(GRPOConfig, {}).max_staleness == 0
        assert built(GRPOConfig, {"max_staleness": 4}).max_staleness == 4
        with pytest.raises(SettingError, match="max_staleness must be an integer from 0 to 4"):
            built(GRPOConfig, {"max_staleness": 5})


class TestAStaleGroupIsWeighedByItsOwnRollout:
    """A group sampled before an update carries the log-probabilities of the adapter that
    sampled it; the update weighs its tokens by min(π_now / π_then, cap), not by 1."""

    def weights(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, updated: bool) -> Any:
        from souverain.training.rollouts import Sample

        made = job(tmp_path, batch_size=1, minibatches=1, tis_cap=100.0)
        made.model, made.tokenizer = tiny_lora(), FakeTokenizer()
        made.optimizer = torch.optim.SGD(made.model.parameters(), lr=0.0)
        prompt, completions = [1, 5, 9], [[7, 8, 3], [4, 2]]

        def scored() -> tuple[Any, Any]:
            with torch.no_grad():
                return grpo_objective.groups_logprobs(made.model, [(prompt, completions)],
                                                      pad=0, temperature=made.hp.temperature)  # fmt: skip

        then, mask = scored()  # the adapter that sampled the group
        samples = [Sample(0, tuple(c), True, tuple(then[row, : len(c)].tolist()))
                   for row, c in enumerate(completions)]  # fmt: skip
        if updated:  # the trainer moved on before taking the group
            with torch.no_grad():
                for name, p in made.model.named_parameters():
                    if "lora_B" in name:
                        p.add_(torch.randn_like(p) * 3.0)
        now, _ = scored()
        seen: dict[str, Any] = {}

        def surrogate(*args: Any, weights: Any, **kwargs: Any) -> Any:
            seen["weights"] = weights
            return grpo_objective.surrogate_loss(*args, weights=weights, **kwargs)

        monkeypatch.setattr(grpo_update, "surrogate_loss", surrogate)
        made._update([grpo_groups.Group(prompt, samples, [], [1.0, -1.0])])
        return seen["weights"], torch.exp(now - then) * mask, mask

    def test_the_weight_is_the_ratio_to_the_adapter_that_sampled(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        weights, expected, mask = self.weights(tmp_path, monkeypatch, updated=True)
        torch.testing.assert_close(weights, expected, atol=1e-4, rtol=1e-4)
        assert float((weights - mask).abs().max()) > 0.01  # the policy changed: not 1

    def test_a_fresh_group_weighs_one(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        weights, _, mask = self.weights(tmp_path, monkeypatch, updated=False)
        torch.testing.assert_close(weights, mask, atol=1e-4, rtol=1e-4)


class FakeEngine:
    """The rollout engine faked: short completions in the tiny model's vocabulary, each
    with a log-probability; records the adapters swapped in."""

    def __init__(self, gguf: Path, *, sequences: int, threads: int, **_: Any) -> None:
        self.sequences, self.threads = sequences, threads
        self.adapters: list[str] = []
        self.versions: list[int] = []  # the trainer's step of each adapter swapped in
        self.draws = itertools.count()
        self.lock = threading.Lock()

    def set_adapter(self, path: Path | None) -> None:
        self.adapters.append(path.name if path else "")
        if path:
            self.versions.append(int(path.read_text()))

    def generate(self, prompts: list[list[int]], *, n: int, **_: Any) -> list[Any]:
        from souverain.training.rollouts import Sample

        return [Sample(i // n, (5 + i % 3, 6, 2), True, (-1.0, -2.0, -0.5))
                for i in range(len(prompts) * n)]  # fmt: skip

    def close(self) -> None:
        pass


def tiny_base() -> Any:
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(config).float()


def async_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **settings: Any) -> grpo.Job:
    from souverain.training import rollouts

    write_lines(tmp_path / "train.jsonl", [f"question {n}" for n in range(6)])
    monkeypatch.setattr(rollouts, "Rollouts", FakeEngine)
    monkeypatch.setattr(grpo, "load_model", lambda base: tiny_base())

    def export(config: Any, folder: Path, out: Path) -> Path:
        out.write_text(str(made.step))  # the adapter's version, read back by the engine
        return out

    monkeypatch.setattr(grpo, "_export_gguf", export)
    made = job(tmp_path, batch_size=2, group_size=2, minibatches=1, max_tokens=16,
               length_cache=4, seq_len=64, save_steps=100, **settings)  # fmt: skip
    made.tokenizer = FakeTokenizer()
    answers = itertools.cycle(["1", "0"])  # every group of two: one right, one wrong
    made.tokenizer.decode = lambda tokens, **_: next(answers)  # type: ignore[attr-defined]
    assert made._read() is None
    made._load()
    return made


class TestTheThreadsAreShared:
    def test_asynchronous_generation_splits_the_jobs_threads(self) -> None:
        assert grpo.split_threads(4, asynchronous=False) == (4, 4)  # one after the other
        for threads in range(2, 17):
            trainer, rollouts = grpo.split_threads(threads, asynchronous=True)
            assert trainer + rollouts == threads and min(trainer, rollouts) >= 1
        assert grpo.split_threads(1, asynchronous=True) == (1, 1)  # the documented floor

    def test_the_trainer_and_the_engine_get_their_share(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        set_to: list[int] = []
        monkeypatch.setattr(torch, "set_num_threads", set_to.append)
        made = async_job(tmp_path, monkeypatch, max_steps=1, max_staleness=1)
        set_to.clear()
        made = grpo.Job({**made.spec, "threads": 5}, made.progress)
        assert set_to == [3]
        made.tokenizer = FakeTokenizer()
        assert made._read() is None
        made._open_rollouts()
        assert made.rollouts.threads == 2


class TestTheLoopWithAsynchronousGeneration:
    def test_real_steps_train_on_groups_at_most_k_updates_old(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made = async_job(tmp_path, monkeypatch, max_steps=4, max_staleness=1)
        before = {n: p.detach().clone() for n, p in made.model.named_parameters()
                  if p.requires_grad}  # fmt: skip
        assert made._train() is None
        steps = events(tmp_path, "step")
        assert [s["step"] for s in steps] == [1, 2, 3, 4]
        for s in steps:
            assert 0 <= s["staleness_max"] <= 1 and s["stale_discarded_groups"] == 0
            assert s["informative_groups"] == 2 and s["trainer_wait_s"] >= 0
        assert any(not torch.equal(p, before[n]) for n, p in made.model.named_parameters()
                   if p.requires_grad)  # fmt: skip
        # each update reached the engine as its own file, between batches
        swapped = made.rollouts.adapters
        assert swapped[0] == swapped[-1] == "rollout-adapter.gguf"
        versions = [int(a.split("-")[-1].split(".")[0]) for a in swapped[1:-1]]
        assert versions == sorted(versions) and set(versions) <= {1, 2, 3, 4}
        assert made.rollouts.versions[-1] == 4  # the last update, set once the steps end
        assert made.tokens == sum(s["generated_tokens"] for s in steps)
        assert not made.generator or not made.generator.running

    def test_a_pause_drops_the_batches_sampled_ahead_and_counts_only_those_trained_on(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made = async_job(tmp_path, monkeypatch, max_steps=6, max_staleness=2)
        one_step = made._one_step

        def then_pause() -> None:
            one_step()
            if made.step == 2:
                made.stop_asked = True

        monkeypatch.setattr(made, "_one_step", then_pause)
        assert made._train() == 0
        steps = events(tmp_path, "step")
        (paused,) = events(tmp_path, "paused")
        assert paused["step"] == 2 and len(steps) == 2
        assert paused["dropped_groups"] == made.dropped  # every drop counted in the line
        state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
        assert state["tokens"] == sum(s["generated_tokens"] for s in steps)
        assert made.generator is not None and not made.generator.running
        assert made.generator.drop() == 0  # nothing left queued to be trained on later

    def test_the_final_evaluation_scores_the_adapter_the_job_delivers(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without a dev split: the generator, told to stop at the last step, never loads
        the last update, yet the held-out prompts are answered by it, not an older one."""
        made = async_job(tmp_path, monkeypatch, max_steps=3, max_staleness=2)
        write_lines(tmp_path / "valid.jsonl", ["held out one", "held out two"])
        made.spec["valid"] = str(tmp_path / "valid.jsonl")
        monkeypatch.setattr(grpo, "load_tokenizer", lambda base: made.tokenizer)
        evaluate, scored_by = made.evaluate, []

        def recorded(*, first: bool) -> dict[str, Any]:
            scored_by.append(made.rollouts.versions[-1])
            return evaluate(first=first)

        monkeypatch.setattr(made, "evaluate", recorded)
        assert made.run() == 0
        assert scored_by == [0, 3]
        (done,) = events(tmp_path, "done")
        assert done["step"] == 3 and "change" in done["metrics"]["eval"]

    def test_the_synchronous_loop_reports_no_staleness(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made = async_job(tmp_path, monkeypatch, max_steps=1)
        assert made._train() is None and made.generator is None
        (step,) = events(tmp_path, "step")
        assert "staleness_max" not in step and math.isfinite(step["loss"])
