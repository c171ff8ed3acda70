"""Reinforcement fine-tuning with GRPO and the Magistral changes: the recipe a training
node runs, as its own process.

    python -m souverain.training.grpo SPEC.json

SPEC.json is the supervised recipe's (training/sft.py) plus:
    grader           a checked grader (training/rewards.py): magistral, string_check, ...
    init_adapter     a PEFT adapter directory to start from (a cold-start SFT), or null
and `hyperparameters` as `GRPOConfig` (training/configs.py).

One step (Shao et al., "DeepSeekMath", 2024, GRPO; Mistral AI, "Magistral", 2025; Yu et
al., "DAPO", 2025):
    1. `batch_size` prompts drawn from the difficulty band (training/selection.py: prompts
       whose last group was all right or all wrong rest), `group_size` completions each,
       sampled by llama.cpp with the current adapter (training/rollouts.py) at the
       job's temperature, with each token's log-probability as sampled;
    2. each completion rewarded; advantage = reward - its group's mean; groups whose
       rewards are all equal are removed (`zero_advantage_fraction`), and batches are
       sampled again (at most `refill_rounds`) until `batch_size` groups remain;
    3. the kept groups split into `minibatches`; in each, advantages normalised (mean 0,
       standard deviation 1) and the clipped surrogate objective with clip-higher
       (ratio within [1 - epsilon_low, 1 + epsilon_high]), each token weighted by its
       truncated importance ratio min(π_trainer / π_rollout, tis_cap), summed over every
       generated token and divided by the number of those tokens (token-level
       normalisation); the trainer scores tokens at the rollouts' temperature; no KL term
       and no reference model unless `beta` > 0 (then the base model, with the adapter
       switched off, is the reference); one optimiser step a minibatch;
    4. the adapter is exported to GGUF and swapped into the rollout engine.

The modules: this one is the loop (read, load, steps, checkpoints, the end); a step's
sampling and grading is training/grpo_groups.py (the generator's half), its update
training/grpo_update.py (the trainer's half), the held-out and dev evaluations and the
kept adapter training/grpo_heldout.py. Evaluation: before the first step and after the
last, every held-out prompt (those also in the training file left out) answered greedily
and `eval_samples_per_prompt` times at the training temperature; the last carries the
paired before → after change with its bootstrap 95 % interval. With `dev_samples`, the
training file's lines drawn at random (by the job's seed) are a dev split evaluated before
the first step and every `dev_steps`; the job ends with the adapter of the best dev
reward, the starting one when no step beat it.

Progress lines (numbers, never text) as the supervised recipe's, and: `step` carries
reward_mean, format_rate, correct_rate, consistency, zero_advantage_fraction,
informative_groups, refill_rounds, band_skipped, the rollout/trainer mismatch
(logprob_gap_mean, logprob_gap_p99, ratio_outside_fraction, tis_capped_fraction,
rollout_logprob_floored), step_s, rollout_s, train_s, and with asynchronous generation
(`max_staleness` > 0, training/grpo_async.py) staleness_max, staleness_mean,
stale_discarded_groups, trainer_wait_s, generator_wait_s; `paused` carries dropped_groups; `eval` {step, metrics: {overall,
languages, templates, change, change_by_templates}}; `dev` {step, mean_reward,
best_step}. With `max_steps` 0 (an evaluation job) the recipe
evaluates once and ends. With the magistral grader, a job whose format rate falls below
its start by more than `collapse_margin` stops itself (training/collapse.py): a
`collapsed` line {step, start, now, margin, message}, and exit code 4.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from souverain.core.reasoning import SYSTEM_PROMPT
from souverain.training import configs, evaluation, rewards
from souverain.training.collapse import REWARD_COLLAPSED, Collapse
from souverain.training.configs import GRPOConfig
from souverain.training.grading import Graded, Item, grade, invalid_item, read_items, summary
from souverain.training.grpo_async import Generator
from souverain.training.grpo_groups import Group, sample_groups, training_round
from souverain.training.grpo_heldout import EVAL_WIDTH, HeldOut
from souverain.training.grpo_objective import Mismatch
from souverain.training.grpo_update import update
from souverain.training.selection import DifficultyBand, fill_informative
from souverain.training.sft import (
    INVALID_DATA,
    LORA_TARGETS,
    Progress,
    _export_gguf,
    load_model,
    load_tokenizer,
)

__all__ = ["Job", "read_items", "run"]


# -- the job ----------------------------------------------------------------------------


class Job(HeldOut):
    """One reinforcement job from its spec, to its end: the loop."""

    def __init__(self, spec: dict[str, Any], progress: Progress) -> None:
        import torch

        self.spec = spec
        self.hp = configs.built(GRPOConfig, spec["hyperparameters"])
        self.grader = spec["grader"]
        rewards.check_grader(self.grader)
        configs.check_budget(self.hp.max_tokens, self.grader["type"])
        self.scorer = rewards.build(self.grader) if self.grader["type"] != "magistral" else None
        self.progress = progress
        self.output = Path(spec["output_dir"])
        self.threads = int(spec.get("threads") or 1)
        trainer_threads, self.rollout_threads = split_threads(
            self.threads, asynchronous=self.hp.max_staleness > 0
        )
        torch.set_num_threads(trainer_threads)
        torch.manual_seed(self.hp.seed)
        self.random = random.Random(self.hp.seed)  # noqa: S311 - sampling order, not secrets
        self.stop_asked = False
        self.draws = 0  # rollout batches sampled in the current step
        self.dev: list[Item] = []  # the dev split (training lines held back)
        self.best: tuple[int, float] | None = None  # (step, dev mean reward) of the kept
        self.overlap = 0  # held-out prompts left out because they are trained on
        self.trained_templates: set[str] = set()
        # asynchronous generation (max_staleness > 0): the band is shared with its thread
        self.band_lock = threading.Lock()
        self.generator: Generator[Group] | None = None
        self.staleness: list[int] = []  # of each group consumed in the current step
        self.stale_discarded = 0  # groups discarded in the current step, too old
        self.dropped = 0  # queued groups dropped unused (pause, end)

    def run(self) -> int:
        hp, progress = self.hp, self.progress
        self.tokenizer = load_tokenizer(self.spec["base"])
        if (problem := self._read()) is not None:
            progress.emit("invalid", **problem)
            return INVALID_DATA
        progress.emit("validated", samples=len(self.train), tokens=0)
        started = time.monotonic()
        self._load()
        progress.emit("loaded", seconds=round(time.monotonic() - started, 2))
        signal.signal(signal.SIGTERM, self._ask_stop)
        if self.step == 0 and self.valid:
            progress.emit("eval", step=0, metrics=self.evaluate(first=True))
        if hp.max_steps == 0:  # an evaluation job: nothing to train
            progress.emit("done", step=0, tokens=0, adapter_dir=None, adapter_gguf=None,
                          metrics={})  # fmt: skip
            self.rollouts.close()
            return 0
        if self.step == 0 and self.dev:
            self._dev_check()  # the starting adapter is a candidate: kept if nothing beats it
        stopped = self._train()
        if stopped is not None:
            return stopped
        metrics: dict[str, Any] = dict(self.last_metrics)
        if self.generator is not None:
            metrics["dropped_groups"] = self.dropped  # sampled ahead, never trained on
        if self.best is not None:
            metrics["kept"] = self._restore_best()
        if self.valid:
            evaluated = self.evaluate(first=False)
            progress.emit("eval", step=self.step, metrics=evaluated)
            metrics["eval"] = evaluated
        adapter_dir = self.output / "adapter"
        self.model.save_pretrained(str(adapter_dir))
        adapter_gguf = _export_gguf(self.model.config, adapter_dir, self.output / "adapter.gguf")
        progress.emit("done", step=self.step, tokens=self.tokens, adapter_dir=str(adapter_dir),
                      adapter_gguf=str(adapter_gguf) if adapter_gguf else None,
                      metrics=metrics)  # fmt: skip
        self.rollouts.close()
        return 0

    def _read(self) -> dict[str, Any] | None:
        """The training, dev and held-out prompts; the first problem found, if any."""
        hp = self.hp
        system = SYSTEM_PROMPT if self.grader["type"] == "magistral" else None
        self.train = read_items(Path(self.spec["train"]), system=system)
        if hp.dev_samples and len(self.train) <= hp.dev_samples:
            return {"line": None, "file": "training",
                    "message": f"dev_samples {hp.dev_samples} leaves no training line "
                               f"({len(self.train)} in the file)"}  # fmt: skip
        draw = random.Random(hp.seed)  # noqa: S311 - a data split, not secrets
        held = set(draw.sample(range(len(self.train)), hp.dev_samples))
        self.dev = [item for n, item in enumerate(self.train) if n in held]
        self.train = [item for n, item in enumerate(self.train) if n not in held]
        self.trained_templates = {
            str(i.fields["template"]) for i in self.train if i.fields.get("template")
        }
        valid = (
            read_items(Path(self.spec["valid"]), system=system) if self.spec.get("valid") else []
        )
        # an evaluation job trains on nothing: its file is the held-out set itself
        trained = [i.prompt for i in self.train + self.dev] if hp.max_steps > 0 else []
        overlap = set(evaluation.overlapping(trained, [i.prompt for i in valid]))
        self.overlap = len(overlap)
        self.valid = [v for n, v in enumerate(valid) if n not in overlap][: hp.eval_samples]
        splits = (("training", self.train), ("dev", self.dev), ("validation", self.valid))
        for name, items in splits:
            for number, item in enumerate(items, start=1):
                problem = invalid_item(item, self.grader)
                length = len(self._prompt_ids(item))
                if problem is None and length + hp.max_tokens > hp.seq_len:
                    problem = (
                        f"{length} prompt tokens and max_tokens {hp.max_tokens} exceed the "
                        f"job's seq_len of {hp.seq_len}"
                    )
                if problem is not None:
                    return {"line": number, "file": name,
                            "message": f"{name} file line {number}: {problem}"}  # fmt: skip
        return None

    def _train(self) -> int | None:
        """Steps until the last; an exit code if the job stops before (paused, collapsed).
        With asynchronous generation, the generator runs only inside: stopped (its batch in
        flight finished) before anything else uses the rollout engine, and its queued
        batches dropped, counted, when the job pauses or ends; after the last step the
        engine is given the last adapter (the generator, told to stop, never loads it), so
        the final evaluation scores the adapter the job delivers."""
        if self.generator is not None:
            self.generator.start()
        try:
            stopped = self._steps()
        finally:
            self._stop_generator()
        if stopped is None and self.generator is not None and self.generator.loaded != self.step:
            self._sync_adapter()
            self.generator.publish(self.step, None)
        return stopped

    def _stop_generator(self) -> None:
        """The generator stopped after its batch in flight, its queued batches dropped."""
        if self.generator is not None:
            self.generator.stop()
            self.dropped += self.generator.drop()

    def _steps(self) -> int | None:
        hp, progress = self.hp, self.progress
        collapse = Collapse(margin=hp.collapse_margin, window=hp.collapse_window)
        while self.step < hp.max_steps:
            if self.stop_asked:
                self._stop_generator()  # nothing queued is trained on or counted
                self._save(self.output / f"checkpoint-{self.step}")
                progress.emit("paused", step=self.step, dropped_groups=self.dropped)
                return 0
            self._one_step()
            if self.grader["type"] == "magistral" and collapse.add(
                float(self.last_metrics["format_rate"])
            ):
                progress.emit("collapsed", step=self.step, start=collapse.start,
                              now=collapse.now, margin=hp.collapse_margin,
                              message=collapse.reason(self.step))  # fmt: skip
                self._stop_generator()  # before the engine it decodes with is freed
                self.rollouts.close()
                return REWARD_COLLAPSED
            if self.dev and (self.step % hp.dev_steps == 0 or self.step == hp.max_steps):
                self._dev_check_now()
            if self.step % hp.save_steps == 0 or self.step == hp.max_steps:
                path = self.output / f"checkpoint-{self.step}"
                self._save(path)
                progress.emit("checkpoint", step=self.step, path=str(path),
                              metrics=dict(self.last_metrics))  # fmt: skip
        return None

    def _dev_check_now(self) -> None:
        """The dev check with the trainer's adapter in the engine (the generator's is up to
        max_staleness updates older), the generator stopped meanwhile."""
        if self.generator is None:
            self._dev_check()
            return
        self.generator.stop()
        self._sync_adapter()
        self.generator.publish(self.step, None)
        self._dev_check()
        if self.step < self.hp.max_steps:
            self.generator.start()

    def _ask_stop(self, *_: object) -> None:
        self.stop_asked = True

    def _prompt_ids(self, item: Item) -> list[int]:
        ids = self.tokenizer.apply_chat_template(
            item.messages, add_generation_prompt=True, tokenize=True
        )
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        return list(ids)

    def _load(self) -> None:
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model

        hp = self.hp
        base = load_model(self.spec["base"])
        resume = self.spec.get("resume_from")
        start = resume or self.spec.get("init_adapter")
        if start:
            self.model = PeftModel.from_pretrained(base, str(start), is_trainable=True)
        else:
            targets = [t for t in LORA_TARGETS
                       if any(n.endswith(t) for n, _ in base.named_modules())]  # fmt: skip
            config = LoraConfig(r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=0.0,
                                target_modules=targets, task_type="CAUSAL_LM")  # fmt: skip
            self.model = get_peft_model(base, config)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=0.0)
        self.step, self.tokens = 0, 0
        if resume:
            state = json.loads((Path(resume) / "trainer_state.json").read_text())
            self.step, self.tokens = int(state["global_step"]), int(state.get("tokens", 0))
            self.random.setstate(_tuple_state(state["random"]))
            optimizer = Path(resume) / "optimizer.pt"
            if optimizer.exists():
                self.optimizer.load_state_dict(torch.load(optimizer, weights_only=True))
        self.last_metrics: dict[str, Any] = {}
        self.band = DifficultyBand(len(self.train), self.random, low=0.0, high=1.0,
                                   rest_epochs=hp.band_rest_epochs)  # fmt: skip
        self._open_rollouts()
        self._sync_adapter()
        if hp.max_staleness:
            self.generator = Generator(self._sample_batch, self.rollouts.set_adapter,
                                       ahead=hp.max_staleness,
                                       first_round=training_round(self.step, 1))  # fmt: skip
            self.generator.publish(self.step, None)

    def _open_rollouts(self) -> None:
        """The rollout engine, holding a step's groups and any one evaluation call: a
        held-out prompt's `eval_samples_per_prompt` completions are sampled together."""
        from souverain.training.rollouts import Rollouts

        hp = self.hp
        held_out = min(max(len(self.valid), len(self.dev)), EVAL_WIDTH)
        sequences = max(hp.batch_size * hp.group_size, held_out, hp.eval_samples_per_prompt, 1)
        self.eval_width = min(EVAL_WIDTH, sequences)
        gguf = Path(self.spec["base"]["path"]) / (self.spec["base"].get("gguf_file") or "")
        self.rollouts = Rollouts(gguf, sequences=sequences, context=sequences * hp.seq_len,
                                 threads=self.rollout_threads, seed=hp.seed)  # fmt: skip

    def _sync_adapter(self) -> None:
        """The adapter as it is now, in the rollout engine."""
        export = self.output / "rollout-adapter"
        shutil.rmtree(export, ignore_errors=True)
        self.model.save_pretrained(str(export))
        gguf = _export_gguf(self.model.config, export, self.output / "rollout-adapter.gguf")
        if gguf is None:
            raise RuntimeError("rollouts with llama.cpp need a LLaMA-family model")
        self.rollouts.set_adapter(gguf)

    def _publish_adapter(self) -> None:
        """The adapter as it is now, exported for the generator (a file per version: the
        one it may be loading is never overwritten), and the previous file removed."""
        assert self.generator is not None
        export = self.output / "rollout-adapter-async"
        shutil.rmtree(export, ignore_errors=True)
        self.model.save_pretrained(str(export))
        gguf = _export_gguf(self.model.config, export,
                            self.output / f"rollout-adapter-{self.step}.gguf")  # fmt: skip
        if gguf is None:
            raise RuntimeError("rollouts with llama.cpp need a LLaMA-family model")
        self.generator.publish(self.step, gguf)  # waits for a load in progress
        (self.output / f"rollout-adapter-{self.step - 1}.gguf").unlink(missing_ok=True)

    def _draw_groups(self) -> list[Group]:
        """One rollout batch of the current step (synchronous generation)."""
        self.draws += 1
        return self._sample_batch(training_round(self.step, self.draws))

    def _take_groups(self) -> list[Group]:
        """The generator's oldest batch still fresh enough (asynchronous generation)."""
        assert self.generator is not None
        taken = self.generator.take(self.step, max_staleness=self.hp.max_staleness)
        self.stale_discarded += taken.discarded
        self.staleness += [self.step - taken.batch.version] * len(taken.batch.groups)
        return list(taken.batch.groups)

    def _sample_batch(self, round_seed: int) -> list[Group]:
        """`batch_size` prompts from the band, sampled and graded (one rollout batch); the
        band is observed as soon as they are graded, under its lock (the generator's thread
        and the trainer's checkpoints share it)."""
        with self.band_lock:
            picked = self.band.draw(self.hp.batch_size)
        items = [self.train[i] for i in picked]
        groups = sample_groups(self.rollouts, [self._prompt_ids(i) for i in items], items,
                               hp=self.hp, round_seed=round_seed, grade=self._grade)  # fmt: skip
        with self.band_lock:
            for number, group in zip(picked, groups, strict=True):
                self.band.observe(number, statistics.fmean(g.correct for g in group.graded))
        return groups

    def _grade(self, item: Item, sample: Any) -> Graded:
        text = self.tokenizer.decode(sample.tokens, skip_special_tokens=True)
        return grade(self.grader, self.scorer, item, text, len(sample.tokens), self.hp)

    def _one_step(self) -> None:
        hp = self.hp
        began = time.monotonic()
        self.draws, self.staleness, self.stale_discarded = 0, [], 0
        draw = self._draw_groups if self.generator is None else self._take_groups
        filled = fill_informative(draw, lambda g: g.advantages is not None,
                                  planned=hp.batch_size, rounds=hp.refill_rounds)  # fmt: skip
        rolled = time.monotonic()
        if self.generator is not None and self.step + 1 == hp.max_steps:
            self.generator.stop(wait=False)  # the last step: nothing more to sample
        loss, mismatch = self._update(filled.kept) if filled.kept else (0.0, None)
        self.step += 1
        if self.generator is None:
            self._sync_adapter()
        else:
            self._publish_adapter()
        generated = sum(len(s.tokens) for g in filled.drawn for s in g.samples)
        self.tokens += generated
        ended = time.monotonic()
        informative = sum(g.advantages is not None for g in filled.drawn)
        self.last_metrics = {
            **summary([x for g in filled.drawn for x in g.graded]),
            "zero_advantage_fraction": round(1 - informative / len(filled.drawn), 4),
            "informative_groups": len(filled.kept),
            "refill_rounds": filled.rounds,
            "band_skipped": self.band.skipped,
            **(mismatch.as_metrics() if mismatch else {}),
            "tis_cap": hp.tis_cap,
            "loss": round(loss, 6),
            **self._async_metrics(),
        }
        self.progress.emit(
            "step", step=self.step, total=hp.max_steps, tokens=self.tokens,
            tokens_per_s=round(generated / (ended - began), 1), learning_rate=hp.learning_rate,
            generated_tokens=generated, step_s=round(ended - began, 3),
            rollout_s=round(rolled - began, 3), train_s=round(ended - rolled, 3),
            **self.last_metrics,
        )  # fmt: skip

    def _async_metrics(self) -> dict[str, Any]:
        """The step's staleness and waits (asynchronous generation only)."""
        if self.generator is None:
            return {}
        trainer_wait, generator_wait = self.generator.waits()
        return {
            "staleness_max": max(self.staleness, default=0),
            "staleness_mean": round(statistics.fmean(self.staleness or [0]), 3),
            "stale_discarded_groups": self.stale_discarded,
            "trainer_wait_s": round(trainer_wait, 3),
            "generator_wait_s": round(generator_wait, 3),
        }

    def _update(self, kept: list[Group]) -> tuple[float, Mismatch]:
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        return update(self.model, self.optimizer, kept, pad=pad, hp=self.hp)

    def _save(self, path: Path) -> None:
        import torch

        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        torch.save(self.optimizer.state_dict(), path / "optimizer.pt")
        with self.band_lock:  # the generator's thread draws from it
            state = self.random.getstate()
        (path / "trainer_state.json").write_text(json.dumps({
            "global_step": self.step, "tokens": self.tokens, "random": state,
        }))  # fmt: skip


def split_threads(threads: int, *, asynchronous: bool) -> tuple[int, int]:
    """(trainer, rollout engine) threads out of the job's. Synchronous generation runs one
    after the other, each with them all; asynchronous generation runs both at once, so they
    share them: half (rounded down) to the rollouts, the rest to the trainer. With a single
    thread each still gets one: the job then uses two cores while both run."""
    if not asynchronous:
        return threads, threads
    rollouts = max(1, threads // 2)
    return max(1, threads - rollouts), rollouts


def _tuple_state(state: Any) -> Any:
    """random.getstate() back from JSON (lists to tuples)."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def run(spec: dict[str, Any]) -> int:
    output = Path(spec["output_dir"])
    output.mkdir(parents=True, exist_ok=True)
    return Job(spec, Progress(output / "progress.jsonl")).run()


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    sys.exit(run(spec))


if __name__ == "__main__":
    main()
