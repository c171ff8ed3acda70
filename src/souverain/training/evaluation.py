"""A reinforcement job's held-out evaluation, and the numbers that make it honest.

Every prompt is answered greedily once and sampled `k` times at the training temperature
(what GRPO optimises); its scores are the greedy reward and the mean of its samples. The
job evaluates before its first step and after its last on the same prompts, so the change
is paired: a bootstrap over prompts (resample prompts with replacement, take the mean of
their after - before, 2,000 times) gives its 95 % percentile interval (Efron & Tibshirani,
"An Introduction to the Bootstrap", 1993, ch. 13). Held-out prompts that also occur in the
training data are left out of the evaluation and counted.

Held-out prompts made from templates (a `template` field, as `souverain datasets math`
writes) are also reported apart, with their own paired change: those whose template the
job trained on (`trained`: new numbers in a known phrasing) and those whose template it
never saw (`unseen`: whether what was learnt carries over to another phrasing).
"""

from __future__ import annotations

import random
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

RESAMPLES = 2000
TEMPLATE_SETS = ("trained", "unseen")


class Score(Protocol):
    @property
    def reward(self) -> float: ...
    @property
    def correct(self) -> bool: ...
    @property
    def formatted(self) -> bool: ...
    @property
    def consistent(self) -> bool | None: ...


@dataclass(frozen=True)
class Answered:
    """One held-out prompt's answers: greedy, and sampled at the training temperature."""

    group: str  # language (or the grader's "?")
    greedy: Score
    sampled: Sequence[Score]
    templates: str | None = None  # "trained" or "unseen" (TEMPLATE_SETS); None: no template

    @property
    def sampled_reward(self) -> float:
        return statistics.fmean(s.reward for s in self.sampled) if self.sampled else 0.0

    @property
    def sampled_correct(self) -> float:
        return statistics.fmean(s.correct for s in self.sampled) if self.sampled else 0.0


@dataclass(frozen=True)
class Change:
    before: float
    after: float
    delta: float
    low: float  # the 95 % interval of delta
    high: float
    prompts: int


def percentile_interval(means: Sequence[float]) -> tuple[float, float]:
    """The 95 % percentile interval of sorted bootstrap means: as many of them (2.5 %)
    below its low end as above its high end."""
    tail = int(0.025 * len(means))
    return means[tail], means[len(means) - 1 - tail]


def paired_bootstrap(
    before: Sequence[float], after: Sequence[float], *, resamples: int = RESAMPLES, seed: int = 0
) -> Change:
    """The mean of after - before over prompts, with its 95 % percentile interval."""
    if len(before) != len(after) or not before:
        raise ValueError("a paired comparison needs the same prompts, at least one")
    diffs = [a - b for b, a in zip(before, after, strict=True)]
    rng = random.Random(seed)  # noqa: S311 - resampling, not secrets
    count = len(diffs)
    means = sorted(statistics.fmean(rng.choices(diffs, k=count)) for _ in range(resamples))
    low, high = percentile_interval(means)
    return Change(
        before=round(statistics.fmean(before), 4),
        after=round(statistics.fmean(after), 4),
        delta=round(statistics.fmean(diffs), 4),
        low=round(low, 4),
        high=round(high, 4),
        prompts=count,
    )


def normalised_prompt(text: str) -> str:
    return " ".join(text.split()).casefold()


def overlapping(train: Iterable[str], heldout: Sequence[str]) -> list[int]:
    """Indices of the held-out prompts whose text (spacing and case aside) is trained on."""
    seen = {normalised_prompt(t) for t in train}
    return [i for i, text in enumerate(heldout) if normalised_prompt(text) in seen]


def report(answered: Sequence[Answered], *, samples: int, temperature: float) -> dict[str, Any]:
    """Overall and per group: greedy (pass@1, format, mean reward, consistency, the names
    of before) and `sampled` at the training temperature."""
    by_group: dict[str, list[Answered]] = defaultdict(list)
    by_templates: dict[str, list[Answered]] = defaultdict(list)
    for a in answered:
        by_group[a.group].append(a)
        if a.templates is not None:
            by_templates[a.templates].append(a)
    out: dict[str, Any] = {
        "overall": _summary(answered, samples, temperature),
        "languages": {
            g: _summary(rows, samples, temperature) for g, rows in sorted(by_group.items())
        },
    }
    if by_templates:
        out["templates"] = {
            name: _summary(rows, samples, temperature)
            for name, rows in sorted(by_templates.items())
        }
    return out


def _summary(rows: Sequence[Answered], samples: int, temperature: float) -> dict[str, Any]:
    greedy = [a.greedy for a in rows]
    formatted = [g for g in greedy if g.formatted]
    out: dict[str, Any] = {
        "samples": len(rows),
        "pass_at_1": _mean(float(g.correct) for g in greedy),
        "format_rate": _mean(float(g.formatted) for g in greedy),
        "mean_reward": _mean(g.reward for g in greedy),
        "language_consistency": _mean(float(bool(g.consistent)) for g in formatted),
    }
    if samples:
        out["sampled"] = {
            "per_prompt": samples,
            "temperature": temperature,
            "mean_reward": _mean(a.sampled_reward for a in rows),
            "pass_at_1": _mean(a.sampled_correct for a in rows),
        }
    return out


def per_prompt(answered: Sequence[Answered]) -> dict[str, list[float]]:
    """Each prompt's scores, in prompt order (what the job keeps of its first evaluation
    to pair the last one with, across a pause)."""
    scores = {
        "greedy_mean_reward": [a.greedy.reward for a in answered],
        "greedy_pass_at_1": [float(a.greedy.correct) for a in answered],
    }
    if answered and answered[0].sampled:
        scores["sampled_mean_reward"] = [a.sampled_reward for a in answered]
        scores["sampled_pass_at_1"] = [a.sampled_correct for a in answered]
    return scores


def changes(
    before: dict[str, list[float]], after: dict[str, list[float]], *, seed: int
) -> dict[str, Any]:
    """Paired before → after of every score both evaluations have."""
    return {
        name: asdict(paired_bootstrap(before[name], after[name], seed=seed))
        for name in sorted(set(before) & set(after))
    }


def changes_by_templates(
    before: dict[str, list[float]],
    after: dict[str, list[float]],
    answered: Sequence[Answered],
    *,
    seed: int,
) -> dict[str, Any]:
    """`changes` for each template set of the held-out prompts (in `answered`'s order, the
    order of both evaluations' scores); empty when no prompt has a template."""
    out = {}
    for name in TEMPLATE_SETS:
        kept = [i for i, a in enumerate(answered) if a.templates == name]
        if kept:
            out[name] = changes({k: [v[i] for i in kept] for k, v in before.items()},
                                {k: [v[i] for i in kept] for k, v in after.items()},
                                seed=seed)  # fmt: skip
    return out


def _mean(values: Iterable[float]) -> float | None:
    listed = list(values)
    return round(statistics.fmean(listed), 4) if listed else None
