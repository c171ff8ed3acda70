"""The trainer's half of a GRPO step: the policy update on a step's informative groups.

The kept groups split into `minibatches`; in each, advantages are normalised (mean 0,
standard deviation 1) and the clipped surrogate objective (training/grpo_objective.py) is
minimised, each token weighted by its truncated importance ratio min(π_trainer /
π_rollout, tis_cap); one optimiser step a minibatch. The old log-probabilities are the
policy that sampled, before any update of this step: the first minibatch is trained
before any update, so its own forward pass gives them (detached); the others are scored
before the first update. With `beta` > 0 the base model (the adapter switched off) is the
reference of the KL term.
"""

from __future__ import annotations

import statistics
from typing import Any

from souverain.training.configs import GRPOConfig
from souverain.training.grpo_groups import Group
from souverain.training.grpo_objective import (
    Mismatch,
    groups_logprobs,
    normalise,
    surrogate_loss,
    truncated_importance_weights,
)

Scored = list[tuple[list[int], list[list[int]]]]  # (prompt, completions) a group


def update(
    model: Any, optimizer: Any, kept: list[Group], *, pad: int, hp: GRPOConfig
) -> tuple[float, Mismatch]:
    """One optimiser step a minibatch of `kept`; the mean loss and the rollout/trainer
    mismatch over the step's tokens."""
    import torch

    chunks = [kept[i :: hp.minibatches] for i in range(min(hp.minibatches, len(kept)))]
    batches = []
    for index, chunk in enumerate(chunks):
        groups = [(g.prompt, [list(s.tokens) for s in g.samples]) for g in chunk]
        adv = torch.tensor(normalise([a for g in chunk for a in g.advantages or ()]))
        with torch.no_grad():
            old = _logprobs(model, groups, pad, hp)[0] if index else None
            ref = None
            if hp.beta:
                with model.disable_adapter():
                    ref = _logprobs(model, groups, pad, hp)[0]
        rolled = [s.logprobs for g in chunk for s in g.samples]
        batches.append((groups, adv, old, ref, rolled))
    losses, gaps = [], []
    model.train()
    for groups, adv, old, ref, rolled in batches:
        logp, mask = _logprobs(model, groups, pad, hp)
        old = logp.detach() if old is None else old
        weights, gap = truncated_importance_weights(old, padded(rolled, mask), mask, cap=hp.tis_cap)
        loss = surrogate_loss(logp, old, adv, mask, epsilon_low=hp.epsilon_low,
                              epsilon_high=hp.epsilon_high, beta=hp.beta,
                              ref_logp=ref, weights=weights)  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(
            [p for p in model.parameters() if p.requires_grad], hp.max_grad_norm
        )
        optimizer.step()
        losses.append(float(loss.detach()))
        gaps.append(gap)
    model.eval()
    return statistics.fmean(losses), merged(gaps)


def _logprobs(model: Any, groups: Scored, pad: int, hp: GRPOConfig) -> Any:
    """The trainer's log-probabilities at the rollouts' temperature."""
    return groups_logprobs(model, groups, pad, temperature=hp.temperature)


def padded(rows: list[tuple[float, ...]], mask: Any) -> Any:
    """The rollouts' log-probabilities laid out as the trainer's [rows, tokens] (`mask`:
    the trainer's, 1 on each completion's tokens); one for every token, or ValueError."""
    import torch

    out = torch.zeros(tuple(mask.shape), dtype=torch.float32)
    for row, values in enumerate(rows):
        tokens = int(mask[row].sum())
        if len(values) != tokens:
            raise ValueError(f"completion {row}: {len(values)} rollout log-probabilities "
                             f"for {tokens} tokens")  # fmt: skip
        out[row, :tokens] = torch.tensor(values, dtype=torch.float32)
    return out


def merged(gaps: list[Mismatch]) -> Mismatch:
    """The minibatches' mismatches as the step's."""
    return Mismatch(
        gap_mean=statistics.fmean(g.gap_mean for g in gaps),
        gap_p99=max(g.gap_p99 for g in gaps),
        outside_fraction=statistics.fmean(g.outside_fraction for g in gaps),
        capped_fraction=statistics.fmean(g.capped_fraction for g in gaps),
        floored_tokens=sum(g.floored_tokens for g in gaps),
    )
