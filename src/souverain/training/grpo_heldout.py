"""A GRPO job's held-out and dev evaluations, and the adapter it keeps.

Evaluation (training/evaluation.py holds the arithmetic): before the first step and after
the last, every held-out prompt (those also in the training file left out) is answered
greedily and `eval_samples_per_prompt` times at the training temperature; the last
carries the paired before → after change with its bootstrap 95 % interval (the first's
per-prompt scores are kept on disk, so a paused job pairs them too); held-out prompts
with a `template` field are also reported apart by whether the job trains on their
template (`templates`, `change_by_templates`). With `dev_samples`,
the dev split (training lines held back) is sampled at the training temperature before
the first step and every `dev_steps`; the job ends with the adapter of the best dev
reward, the starting one when no step beat it.

`HeldOut` is mixed into the job (training/grpo.py), whose model, rollout engine, prompts
and grader it uses.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from souverain.training import configs, evaluation
from souverain.training.configs import GRPOConfig
from souverain.training.grading import Graded, Item
from souverain.training.grpo_groups import DRAWS_PER_STEP
from souverain.training.sft import Progress

EVAL_WIDTH = 32  # sequences an evaluation call samples together, at most
# Evaluation calls sample in rounds above every step's batches (training/grpo_groups.py),
# so no evaluation repeats a training batch's random draws whatever the number of steps.
EVAL_ROUNDS = DRAWS_PER_STEP * (configs.bounds_of(GRPOConfig, "max_steps")[1] + 1)


def evaluation_round(start: int) -> int:
    """The sampling round of an evaluation call beginning at prompt `start`."""
    return int(EVAL_ROUNDS) + start


class HeldOut:
    """The evaluations of a job; what the job provides is declared here."""

    hp: GRPOConfig
    progress: Progress
    output: Path
    rollouts: Any  # rollouts.Rollouts
    model: Any  # the PEFT model being trained
    step: int
    valid: list[Item]  # the held-out prompts
    dev: list[Item]  # the dev split (training lines held back)
    overlap: int  # held-out prompts left out because they are trained on
    best: tuple[int, float] | None  # (step, dev mean reward) of the kept adapter
    eval_width: int  # sequences an evaluation call samples together
    trained_templates: set[str]  # the templates of the prompts trained on

    def _prompt_ids(self, item: Item) -> list[int]:
        raise NotImplementedError

    def _grade(self, item: Item, sample: Any) -> Graded:
        raise NotImplementedError

    def _sync_adapter(self) -> None:
        raise NotImplementedError

    def answer(self, items: list[Item], *, samples: int) -> list[evaluation.Answered]:
        """Each item answered greedily, and `samples` times at the training temperature."""
        hp = self.hp
        out: list[evaluation.Answered] = []
        width = max(1, self.eval_width // max(1, samples))
        for start in range(0, len(items), width):
            chunk = items[start : start + width]
            prompts = [self._prompt_ids(i) for i in chunk]
            greedy = self.rollouts.generate(prompts, n=1, max_tokens=hp.max_tokens,
                                            temperature=0.0)  # fmt: skip
            sampled = self.rollouts.generate(prompts, n=samples, max_tokens=hp.max_tokens,
                                             temperature=hp.temperature, top_p=hp.top_p,
                                             round_seed=evaluation_round(start)) if samples else []  # fmt: skip
            for index, item in enumerate(chunk):
                best = self._grade(item, greedy[index])
                drawn = [self._grade(item, s) for s in sampled if s.prompt == index]
                group = str(item.fields.get("language") or best.language or "?")
                out.append(evaluation.Answered(group, best, drawn, self._templates_of(item)))
        return out

    def _templates_of(self, item: Item) -> str | None:
        """Whether `item`'s template is one the job trains on; None without a template
        or a step (an evaluation job trains on nothing)."""
        template = item.fields.get("template")
        if not isinstance(template, str) or self.hp.max_steps == 0:
            return None
        return "trained" if template in self.trained_templates else "unseen"

    def evaluate(self, *, first: bool) -> dict[str, Any]:
        """The held-out prompts: greedy and sampled, overall and per language; the last
        evaluation also the paired change since the first (kept on disk across a pause)."""
        hp = self.hp
        answered = self.answer(self.valid, samples=hp.eval_samples_per_prompt)
        report = evaluation.report(answered, samples=hp.eval_samples_per_prompt,
                                   temperature=hp.temperature)  # fmt: skip
        report["left_out_as_trained"] = self.overlap
        scores = evaluation.per_prompt(answered)
        before = self.output / "eval-before.json"
        if first:
            before.write_text(json.dumps(scores))
        elif before.exists():
            kept = json.loads(before.read_text())
            report["change"] = evaluation.changes(kept, scores, seed=hp.seed)
            if by_templates := evaluation.changes_by_templates(kept, scores, answered,
                                                               seed=hp.seed):  # fmt: skip
                report["change_by_templates"] = by_templates
        return report

    def _dev_check(self) -> None:
        """The dev split sampled at the training temperature; the best adapter kept."""
        answered = self.answer(self.dev, samples=max(1, self.hp.eval_samples_per_prompt))
        reward = statistics.fmean(a.sampled_reward for a in answered)
        if self.best is None or reward > self.best[1]:
            self.best = (self.step, reward)
            self.model.save_pretrained(str(self.output / "best"))
        self.progress.emit("dev", step=self.step, mean_reward=round(reward, 4),
                           best_step=self.best[0])  # fmt: skip

    def _restore_best(self) -> dict[str, Any]:
        """The best dev adapter back in the model and the rollout engine."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        assert self.best is not None
        step, reward = self.best
        if step != self.step:
            state = load_file(str(self.output / "best" / "adapter_model.safetensors"))
            set_peft_model_state_dict(self.model, state)
            self._sync_adapter()
        return {"step": step, "dev_mean_reward": round(reward, 4)}
