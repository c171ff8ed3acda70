"""Reinforcement fine-tuning with GRPO and the Magistral changes: the recipe a training
node runs, as its own process.

    python -m souverain.training.grpo SPEC.json

SPEC.json is the supervised recipe's (training/sft.py) plus:
    grader           a checked grader (training/rewards.py): magistral, string_check, ...
    init_adapter     a PEFT adapter directory to start from (a cold-start SFT), or null
and `hyperparameters` as `GRPOConfig` (training/configs.py).

One step (Shao et al., "DeepSeekMath", 2024, GRPO; Mistral AI, "Magistral", 2025):
    1. `batch_size` prompts, `group_size` completions each, sampled by llama.cpp with the
       current adapter (training/rollouts.py), all sequences in one batch;
    2. each completion rewarded; advantage = reward - its group's mean; groups whose
       rewards are all equal are removed (counted as `zero_advantage_fraction`);
    3. the kept groups split into `minibatches`; in each, advantages normalised (mean 0,
       standard deviation 1) and the clipped surrogate objective with clip-higher
       (ratio within [1 - epsilon_low, 1 + epsilon_high]) summed over every generated
       token and divided by the number of those tokens (token-level normalisation); no KL
       term and no reference model unless `beta` > 0 (then the base model, with the
       adapter switched off, is the reference); one optimiser step a minibatch;
    4. the adapter is exported to GGUF and swapped into the rollout engine.

Progress lines (numbers, never text) as the supervised recipe's, and: `step` carries
reward_mean, format_rate, correct_rate, consistency, zero_advantage_fraction, step_s,
rollout_s, train_s; `eval` {step, metrics: {overall, per language}} before the first
step and after the last, on the validation file. With `max_steps` 0 (an evaluation job)
the recipe evaluates once and ends. With the magistral grader, a job whose format rate
falls below its start by more than `collapse_margin` stops itself (training/collapse.py):
a `collapsed` line {step, start, now, margin, message}, and exit code 4.
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from souverain.core.reasoning import SYSTEM_PROMPT
from souverain.training import configs, rewards
from souverain.training.collapse import REWARD_COLLAPSED, Collapse
from souverain.training.configs import GRPOConfig
from souverain.training.grpo_objective import (
    group_advantages,
    groups_logprobs,
    normalise,
    surrogate_loss,
)
from souverain.training.sft import (
    INVALID_DATA,
    LORA_TARGETS,
    Progress,
    _export_gguf,
    load_model,
    load_tokenizer,
)

# -- data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    messages: list[dict[str, Any]]
    fields: dict[str, Any]  # the line's other fields (answer, language, ...)

    @property
    def prompt(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                return str(message["content"])
        return ""


def read_items(path: Path, *, system: str | None) -> list[Item]:
    """Chat lines; a trailing assistant reply (worked examples) is left out, and the
    reasoning system prompt is put first where the chat has none."""
    items = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            row = json.loads(line)
            messages = [m for m in row["messages"]]
            while messages and messages[-1].get("role") == "assistant":
                messages.pop()
            if system and (not messages or messages[0].get("role") != "system"):
                messages.insert(0, {"role": "system", "content": system})
            items.append(Item(messages, {k: v for k, v in row.items() if k != "messages"}))
    return items


def invalid_item(item: Item, grader: dict[str, Any]) -> str | None:
    if not item.messages or item.messages[-1].get("role") != "user":
        return "the chat must end with a user message"
    if grader["type"] == "magistral" and not isinstance(item.fields.get("answer"), str | int):
        return "an 'answer' field is needed for the magistral grader"
    return None


# -- scoring ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Graded:
    reward: float
    formatted: bool
    correct: bool
    consistent: bool | None
    language: str | None


def grade(
    grader: dict[str, Any],
    scorer: rewards.Grader | None,
    item: Item,
    completion: str,
    tokens: int,
    hp: GRPOConfig,
) -> Graded:
    if grader["type"] == "magistral":
        scored = rewards.magistral(
            completion,
            prompt=item.prompt,
            reference=str(item.fields["answer"]),
            tokens=tokens,
            l_max=int(grader.get("l_max") or hp.max_tokens),
            l_cache=int(grader.get("l_cache") or hp.length_cache),
        )
        return Graded(
            scored.reward, scored.formatted, scored.correct, scored.consistent,
            scored.prompt_language,
        )  # fmt: skip
    assert scorer is not None
    answer = rewards.answer_of(completion)
    score = scorer(answer, item.fields)
    parts = rewards.split_thinking(completion)
    return Graded(score, parts is not None, score >= 1.0, None, None)


def summary(graded: Sequence[Graded]) -> dict[str, float | None]:
    if not graded:
        return {}
    known = [g.consistent for g in graded if g.consistent is not None]
    formatted = [g for g in graded if g.formatted]
    return {
        "reward_mean": round(statistics.fmean(g.reward for g in graded), 4),
        "format_rate": round(len(formatted) / len(graded), 4),
        "correct_rate": round(sum(g.correct for g in graded) / len(graded), 4),
        # of the formatted answers: prompt, thinking and answer in one language
        "consistency": round(sum(bool(g.consistent) for g in formatted) / len(formatted), 4)
        if formatted
        else None,
        "languages_told": len(known),
    }


# -- the job ----------------------------------------------------------------------------


class Job:
    def __init__(self, spec: dict[str, Any], progress: Progress) -> None:
        import torch

        self.spec = spec
        self.hp = configs.built(GRPOConfig, spec["hyperparameters"])
        self.grader = spec["grader"]
        rewards.check_grader(self.grader)
        self.scorer = rewards.build(self.grader) if self.grader["type"] != "magistral" else None
        self.progress = progress
        self.output = Path(spec["output_dir"])
        self.threads = int(spec.get("threads") or 1)
        torch.set_num_threads(self.threads)
        torch.manual_seed(self.hp.seed)
        self.random = random.Random(self.hp.seed)  # noqa: S311 - sampling order, not secrets
        self.stop_asked = False

    def run(self) -> int:
        hp, progress = self.hp, self.progress
        self.tokenizer = load_tokenizer(self.spec["base"])
        system = SYSTEM_PROMPT if self.grader["type"] == "magistral" else None
        self.train = read_items(Path(self.spec["train"]), system=system)
        self.valid = (
            read_items(Path(self.spec["valid"]), system=system)[: hp.eval_samples]
            if self.spec.get("valid")
            else []
        )
        self.prompts: dict[int, list[int]] = {}
        for name, items in (("training", self.train), ("validation", self.valid)):
            for number, item in enumerate(items, start=1):
                problem = invalid_item(item, self.grader)
                length = len(self._prompt_ids(item))
                if problem is None and length + hp.max_tokens > hp.seq_len:
                    problem = (
                        f"{length} prompt tokens and max_tokens {hp.max_tokens} exceed the "
                        f"job's seq_len of {hp.seq_len}"
                    )
                if problem is not None:
                    progress.emit("invalid", line=number, file=name,
                                  message=f"{name} file line {number}: {problem}")  # fmt: skip
                    return INVALID_DATA
        progress.emit("validated", samples=len(self.train), tokens=0)
        started = time.monotonic()
        self._load()
        progress.emit("loaded", seconds=round(time.monotonic() - started, 2))
        signal.signal(signal.SIGTERM, self._ask_stop)
        if self.step == 0 and self.valid:
            progress.emit("eval", step=0, metrics=self.evaluate())
        if hp.max_steps == 0:  # an evaluation job: nothing to train
            progress.emit("done", step=0, tokens=0, adapter_dir=None, adapter_gguf=None,
                          metrics={})  # fmt: skip
            self.rollouts.close()
            return 0
        stopped = self._train()
        if stopped is not None:
            return stopped
        metrics: dict[str, Any] = dict(self.last_metrics)
        if self.valid:
            evaluation = self.evaluate()
            progress.emit("eval", step=self.step, metrics=evaluation)
            metrics["eval"] = evaluation
        adapter_dir = self.output / "adapter"
        self.model.save_pretrained(str(adapter_dir))
        adapter_gguf = _export_gguf(self.model.config, adapter_dir, self.output / "adapter.gguf")
        progress.emit("done", step=self.step, tokens=self.tokens, adapter_dir=str(adapter_dir),
                      adapter_gguf=str(adapter_gguf) if adapter_gguf else None,
                      metrics=metrics)  # fmt: skip
        self.rollouts.close()
        return 0

    def _train(self) -> int | None:
        """Steps until the last; an exit code if the job stops before (paused, collapsed)."""
        hp, progress = self.hp, self.progress
        collapse = Collapse(margin=hp.collapse_margin, window=hp.collapse_window)
        while self.step < hp.max_steps:
            if self.stop_asked:
                self._save(self.output / f"checkpoint-{self.step}")
                progress.emit("paused", step=self.step)
                return 0
            self._one_step()
            if self.grader["type"] == "magistral" and collapse.add(
                float(self.last_metrics["format_rate"])
            ):
                progress.emit("collapsed", step=self.step, start=collapse.start,
                              now=collapse.now, margin=hp.collapse_margin,
                              message=collapse.reason(self.step))  # fmt: skip
                self.rollouts.close()
                return REWARD_COLLAPSED
            if self.step % hp.save_steps == 0 or self.step == hp.max_steps:
                path = self.output / f"checkpoint-{self.step}"
                self._save(path)
                progress.emit("checkpoint", step=self.step, path=str(path),
                              metrics=dict(self.last_metrics))  # fmt: skip
        return None

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

        from souverain.training.rollouts import Rollouts

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
        self.order: list[int] = []
        gguf = Path(self.spec["base"]["path"]) / (self.spec["base"].get("gguf_file") or "")
        sequences = max(hp.batch_size * hp.group_size, min(len(self.valid), 32) or 1)
        self.eval_width = min(32, sequences)
        self.rollouts = Rollouts(gguf, sequences=sequences, context=sequences * hp.seq_len,
                                 threads=self.threads, seed=hp.seed)  # fmt: skip
        self._sync_adapter()

    def _sync_adapter(self) -> None:
        """The adapter as it is now, in the rollout engine."""
        export = self.output / "rollout-adapter"
        shutil.rmtree(export, ignore_errors=True)
        self.model.save_pretrained(str(export))
        gguf = _export_gguf(self.model.config, export, self.output / "rollout-adapter.gguf")
        if gguf is None:
            raise RuntimeError("rollouts with llama.cpp need a LLaMA-family model")
        self.rollouts.set_adapter(gguf)

    def _batch(self) -> list[Item]:
        picked: list[Item] = []
        while len(picked) < self.hp.batch_size:
            if not self.order:
                self.order = list(range(len(self.train)))
                self.random.shuffle(self.order)
            picked.append(self.train[self.order.pop()])
        return picked

    def _one_step(self) -> None:
        hp = self.hp
        began = time.monotonic()
        items = self._batch()
        prompts = [self._prompt_ids(item) for item in items]
        samples = self.rollouts.generate(prompts, n=hp.group_size, max_tokens=hp.max_tokens,
                                         temperature=hp.temperature, top_p=hp.top_p,
                                         round_seed=self.step + 1)  # fmt: skip
        rolled = time.monotonic()
        graded = [
            grade(self.grader, self.scorer, items[s.prompt],
                  self.tokenizer.decode(s.tokens, skip_special_tokens=True), len(s.tokens), hp)
            for s in samples
        ]  # fmt: skip
        groups = [
            [graded[i * hp.group_size + j].reward for j in range(hp.group_size)]
            for i in range(len(items))
        ]
        advantages = group_advantages(groups)
        kept = [i for i, a in enumerate(advantages) if a is not None]
        loss = self._update(prompts, samples, advantages, kept) if kept else 0.0
        self._sync_adapter()
        self.step += 1
        generated = sum(len(s.tokens) for s in samples)
        self.tokens += generated
        ended = time.monotonic()
        self.last_metrics = {
            **summary(graded),
            "zero_advantage_fraction": round(1 - len(kept) / len(items), 4),
            "loss": round(loss, 6),
        }
        self.progress.emit(
            "step",
            step=self.step,
            total=hp.max_steps,
            tokens=self.tokens,
            tokens_per_s=round(generated / (ended - began), 1),
            learning_rate=hp.learning_rate,
            generated_tokens=generated,
            step_s=round(ended - began, 3),
            rollout_s=round(rolled - began, 3),
            train_s=round(ended - rolled, 3),
            **self.last_metrics,
        )

    def _update(
        self,
        prompts: list[list[int]],
        samples: list[Any],
        advantages: list[list[float] | None],
        kept: list[int],
    ) -> float:
        import torch

        hp = self.hp
        chunks = [kept[i :: hp.minibatches] for i in range(min(hp.minibatches, len(kept)))]
        # Old log-probabilities: the policy that sampled, before any update of this step.
        # The first minibatch is trained before any update, so its own forward pass gives
        # them (detached); the others need theirs now.
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batches = []
        for index, chunk in enumerate(chunks):
            groups = [(prompts[g], [list(samples[g * hp.group_size + j].tokens)
                                    for j in range(hp.group_size)]) for g in chunk]  # fmt: skip
            adv = torch.tensor(normalise([advantages[g][j] for g in chunk  # type: ignore[index]
                                          for j in range(hp.group_size)]))  # fmt: skip
            with torch.no_grad():
                old = groups_logprobs(self.model, groups, pad)[0] if index else None
                ref = None
                if hp.beta:
                    with self.model.disable_adapter():
                        ref = groups_logprobs(self.model, groups, pad)[0]
            batches.append((groups, adv, old, ref))
        losses = []
        self.model.train()
        for groups, adv, old, ref in batches:
            logp, mask = groups_logprobs(self.model, groups, pad)
            old = logp.detach() if old is None else old
            loss = surrogate_loss(logp, old, adv, mask, epsilon_low=hp.epsilon_low,
                                  epsilon_high=hp.epsilon_high, beta=hp.beta,
                                  ref_logp=ref)  # fmt: skip
            self.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], hp.max_grad_norm
            )
            self.optimizer.step()
            losses.append(float(loss.detach()))
        self.model.eval()
        return statistics.fmean(losses)

    def evaluate(self) -> dict[str, Any]:
        """Greedy answers to the held-out prompts: pass@1, format rate, mean reward and
        language consistency, overall and per language."""
        hp = self.hp
        graded: list[tuple[Item, Graded]] = []
        for start in range(0, len(self.valid), self.eval_width):
            items = self.valid[start : start + self.eval_width]
            samples = self.rollouts.generate([self._prompt_ids(i) for i in items], n=1,
                                             max_tokens=hp.max_tokens, temperature=0.0)  # fmt: skip
            for sample in samples:
                item = items[sample.prompt]
                text = self.tokenizer.decode(sample.tokens, skip_special_tokens=True)
                graded.append((item, grade(self.grader, self.scorer, item, text,
                                           len(sample.tokens), hp)))  # fmt: skip
        by_language: dict[str, list[Graded]] = defaultdict(list)
        for item, g in graded:
            by_language[str(item.fields.get("language") or g.language or "?")].append(g)
        report: dict[str, Any] = {"overall": _eval_summary([g for _, g in graded])}
        report["languages"] = {lang: _eval_summary(gs) for lang, gs in sorted(by_language.items())}
        return report

    def _save(self, path: Path) -> None:
        import torch

        path.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(str(path))
        torch.save(self.optimizer.state_dict(), path / "optimizer.pt")
        (path / "trainer_state.json").write_text(json.dumps({
            "global_step": self.step, "tokens": self.tokens,
            "random": self.random.getstate(),
        }))  # fmt: skip


def _eval_summary(graded: Sequence[Graded]) -> dict[str, Any]:
    base = summary(graded)
    return {
        "samples": len(graded),
        "pass_at_1": base.get("correct_rate"),
        "format_rate": base.get("format_rate"),
        "mean_reward": base.get("reward_mean"),
        "language_consistency": base.get("consistency"),
    }


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
