"""The generator's half of a GRPO step: prompts sampled into groups of completions by the
rollout engine, each completion graded, each group given its advantages.

A group whose rewards are all equal gets no advantages (None): it has nothing to teach,
and the step's refill (training/selection.py) samples another batch in its place. The
trainer's half (training/grpo_update.py) needs from a group only its prompt's token ids,
each completion's tokens with their rollout log-probabilities, and the advantages, so the
two halves meet at `Group` and nothing else.

Sampling seeds are numbered by round so that no two calls to the engine in a job share
their random draws: a step's batches take the rounds below `DRAWS_PER_STEP` of that step,
the held-out evaluation (training/grpo_heldout.py) the rounds above every step's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from souverain.training.configs import GRPOConfig
from souverain.training.grading import Graded, Item
from souverain.training.grpo_objective import group_advantages

# Sampling seeds by round: a step's batches below DRAWS_PER_STEP (16 a step: at most
# 1 + refill_rounds batches), evaluation calls above every step's.
DRAWS_PER_STEP = 16


def training_round(step: int, draw: int) -> int:
    """The sampling round of a step's `draw`-th batch (from 1)."""
    return step * DRAWS_PER_STEP + draw


@dataclass(frozen=True)
class Group:
    """One prompt's completions in a step, graded."""

    prompt: list[int]
    samples: list[Any]  # rollouts.Sample
    graded: list[Graded]
    advantages: list[float] | None  # None: every reward equal (nothing to learn)


def sample_groups(
    rollouts: Any,
    prompts: Sequence[list[int]],
    items: Sequence[Item],
    *,
    hp: GRPOConfig,
    round_seed: int,
    grade: Callable[[Item, Any], Graded],
) -> list[Group]:
    """`group_size` completions of each prompt sampled together at the job's temperature
    (one engine call), graded against its item, with the group's advantages."""
    samples = rollouts.generate(list(prompts), n=hp.group_size, max_tokens=hp.max_tokens,
                                temperature=hp.temperature, top_p=hp.top_p,
                                round_seed=round_seed)  # fmt: skip
    groups = []
    for index, (item, prompt) in enumerate(zip(items, prompts, strict=True)):
        mine = samples[index * hp.group_size : (index + 1) * hp.group_size]
        graded = [grade(item, s) for s in mine]
        advantages = group_advantages([[g.reward for g in graded]])[0]
        groups.append(Group(prompt, mine, graded, advantages))
    return groups
