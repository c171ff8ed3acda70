"""GRPO's objective, on numbers and tensors (tested numerically): group advantages, their
normalisation, the clipped surrogate with clip-higher and an optional KL term, truncated
importance sampling against the rollout engine, and the log-probabilities of completions
that share a prompt (training/grpo.py runs them).

On-policy means the loss scores tokens with the distribution that sampled them: the
trainer divides its logits by the rollouts' temperature, and what still differs between
llama.cpp and PyTorch (quantised weights, kernels, a nucleus) is corrected per token by
truncated importance sampling (Yao et al., "Your efficient RL framework secretly brings you
off-policy RL training", 2025): the surrogate of each token is weighted by
min(π_trainer(token) / π_rollout(token), cap), a constant (no gradient flows through it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ADV_EPS = 1e-6
# A rollout log-probability of a token llama.cpp sampled but the engine's own nucleus
# left out (the two disagree at the nucleus' edge): finite, so that no infinity reaches
# the weights, the metrics or the progress lines; such tokens are counted and left
# uncorrected (weight 1).
LOGPROB_FLOOR = -1e4


def group_advantages(rewards_by_group: Sequence[Sequence[float]]) -> list[list[float] | None]:
    """reward - group mean; None for a group whose rewards are all equal (no signal)."""
    out: list[list[float] | None] = []
    for group in rewards_by_group:
        mean = sum(group) / len(group)
        if max(group) - min(group) <= 1e-9:
            out.append(None)
        else:
            out.append([r - mean for r in group])
    return out


def normalise(advantages: Sequence[float]) -> list[float]:
    """Over a minibatch: mean 0, standard deviation 1."""
    mean = sum(advantages) / len(advantages)
    std = math.sqrt(sum((a - mean) ** 2 for a in advantages) / len(advantages))
    return [(a - mean) / (std + ADV_EPS) for a in advantages]


def surrogate_loss(
    logp: Any,
    old_logp: Any,
    advantages: Any,
    mask: Any,
    *,
    epsilon_low: float,
    epsilon_high: float,
    beta: float = 0.0,
    ref_logp: Any = None,
    weights: Any = None,
) -> Any:
    """-(1/T) Σ_i Σ_t w_it min(ρ A_i, clip(ρ, 1-ε_low, 1+ε_high) A_i) [+ β KL], T = Σ mask;
    w: the truncated importance weights (`truncated_importance_weights`), 1 without them.

    logp, old_logp, ref_logp, mask, weights: [sequences, tokens]; advantages: [sequences]."""
    import torch

    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    per_token = -torch.minimum(
        ratio * adv, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv
    )
    if weights is not None:
        per_token = per_token * weights.detach()
    if beta:
        if ref_logp is None:
            raise ValueError("beta > 0 needs the reference model's log-probabilities")
        log_ratio = ref_logp - logp
        per_token = per_token + beta * (torch.exp(log_ratio) - log_ratio - 1)  # k3 estimator
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


@dataclass(frozen=True)
class Mismatch:
    """How far the rollout engine's log-probabilities were from the trainer's, over a
    step's generated tokens: |log π_trainer - log π_rollout| mean and 99th percentile, the
    share of ratios outside [0.8, 1.25], and the share truncated at the cap; tokens whose
    rollout log-probability was floored (`LOGPROB_FLOOR`) are counted, not measured."""

    gap_mean: float
    gap_p99: float
    outside_fraction: float
    capped_fraction: float
    floored_tokens: int = 0

    def as_metrics(self) -> dict[str, float]:
        return {
            "logprob_gap_mean": round(self.gap_mean, 5),
            "logprob_gap_p99": round(self.gap_p99, 5),
            "ratio_outside_fraction": round(self.outside_fraction, 5),
            "tis_capped_fraction": round(self.capped_fraction, 5),
            "rollout_logprob_floored": self.floored_tokens,
        }


def truncated_importance_weights(
    trainer_logp: Any, rollout_logp: Any, mask: Any, *, cap: float
) -> tuple[Any, Mismatch]:
    """min(exp(trainer - rollout), cap) per token (0 where the mask is 0, 1 where the
    rollout's log-probability was floored), and the gap."""
    import torch

    if not bool(torch.isfinite(rollout_logp).all()):
        raise ValueError("rollout log-probabilities must be finite (floor them first)")
    floored = (rollout_logp <= LOGPROB_FLOOR) & mask.bool()
    measured = mask * ~floored
    log_ratio = (trainer_logp - rollout_logp).detach() * measured
    ratio = torch.exp(log_ratio)
    weights = torch.clamp(ratio, max=cap) * measured + floored.float()
    kept = measured.bool()
    gaps = log_ratio.abs()[kept]
    ratios = ratio[kept]
    count = int(floored.sum())
    if gaps.numel() == 0:
        return weights, Mismatch(0.0, 0.0, 0.0, 0.0, count)
    return weights, Mismatch(
        gap_mean=float(gaps.mean()),
        gap_p99=float(torch.quantile(gaps.double(), 0.99)),
        outside_fraction=float(((ratios < 0.8) | (ratios > 1.25)).double().mean()),
        capped_fraction=float((ratios > cap).double().mean()),
        floored_tokens=count,
    )


def token_logprobs(model: Any, input_ids: Any, attention: Any, completion_mask: Any) -> Any:
    """log π(token | prefix) for every position (0 where the mask is 0)."""
    import torch

    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp * completion_mask[:, 1:]


def shared_prompt_logprobs(
    model: Any,
    prompt: list[int],
    completions: list[list[int]],
    pad: int,
    *,
    temperature: float = 1.0,
) -> tuple[Any, Any]:
    """log π_T(token | prefix), with π_T = softmax(logits / temperature): the distribution
    the rollouts sampled from. Of each completion's tokens, for completions of one prompt
    (a group): the prompt is run once and its KV cache repeated for every completion, so
    a long shared prompt (the reasoning system prompt) costs one forward and one backward
    pass per group instead of one per completion, and logits are computed for the
    completions' positions only. Equal to `token_logprobs` on each whole sequence.

    Returns (logp, mask), both [completions, longest completion]."""
    import torch

    if len(prompt) < 2:
        raise ValueError("a prompt of at least two tokens is needed")
    count, width = len(completions), max(1, *(len(c) for c in completions))
    cache = model(input_ids=torch.tensor([prompt[:-1]]), use_cache=True).cache
    cache.batch_repeat_interleave(count)
    ids = torch.full((count, width), pad, dtype=torch.long)
    targets = torch.full((count, width), pad, dtype=torch.long)
    mask = torch.zeros((count, width), dtype=torch.float32)
    for row, completion in enumerate(completions):
        fed = [prompt[-1], *completion[:-1]][: max(1, len(completion))]
        ids[row, : len(fed)] = torch.tensor(fed)
        if completion:
            targets[row, : len(completion)] = torch.tensor(completion)
            mask[row, : len(completion)] = 1.0
    seen = torch.ones((count, len(prompt) - 1), dtype=torch.long)
    fed_mask = (torch.arange(width).unsqueeze(0) < mask.sum(1, keepdim=True).clamp(min=1)).long()
    logits = model(input_ids=ids, attention_mask=torch.cat([seen, fed_mask], dim=1),
                   cache=cache).logits.float()  # fmt: skip
    logp = (
        torch.log_softmax(logits / temperature, dim=-1)
        .gather(-1, targets.unsqueeze(-1))
        .squeeze(-1)
    )
    return logp * mask, mask


def groups_logprobs(
    model: Any,
    groups: list[tuple[list[int], list[list[int]]]],
    pad: int,
    *,
    temperature: float = 1.0,
) -> tuple[Any, Any]:
    """`shared_prompt_logprobs` of several groups, stacked: [rows, longest completion]."""
    import torch

    parts = [shared_prompt_logprobs(model, prompt, completions, pad, temperature=temperature)
             for prompt, completions in groups]  # fmt: skip
    width = max(logp.shape[1] for logp, _ in parts)

    def padded(tensor: Any) -> Any:
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))

    return (torch.cat([padded(logp) for logp, _ in parts]),
            torch.cat([padded(mask) for _, mask in parts]))  # fmt: skip
