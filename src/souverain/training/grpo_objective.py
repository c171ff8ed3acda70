"""GRPO's objective, on numbers and tensors (tested numerically): group advantages, their
normalisation, the clipped surrogate with clip-higher and an optional KL term, and the
log-probabilities of completions that share a prompt (training/grpo.py runs them).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

ADV_EPS = 1e-6


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
) -> Any:
    """-(1/T) Σ_i Σ_t min(ρ A_i, clip(ρ, 1-ε_low, 1+ε_high) A_i) [+ β KL], T = Σ mask.

    logp, old_logp, ref_logp, mask: [sequences, tokens]; advantages: [sequences]."""
    import torch

    ratio = torch.exp(logp - old_logp)
    adv = advantages.unsqueeze(1)
    per_token = -torch.minimum(
        ratio * adv, torch.clamp(ratio, 1 - epsilon_low, 1 + epsilon_high) * adv
    )
    if beta:
        if ref_logp is None:
            raise ValueError("beta > 0 needs the reference model's log-probabilities")
        log_ratio = ref_logp - logp
        per_token = per_token + beta * (torch.exp(log_ratio) - log_ratio - 1)  # k3 estimator
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


def token_logprobs(model: Any, input_ids: Any, attention: Any, completion_mask: Any) -> Any:
    """log π(token | prefix) for every position (0 where the mask is 0)."""
    import torch

    logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp * completion_mask[:, 1:]


def shared_prompt_logprobs(
    model: Any, prompt: list[int], completions: list[list[int]], pad: int
) -> tuple[Any, Any]:
    """log π(token | prefix) of each completion's tokens, for completions of one prompt
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
    logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return logp * mask, mask


def groups_logprobs(
    model: Any, groups: list[tuple[list[int], list[list[int]]]], pad: int
) -> tuple[Any, Any]:
    """`shared_prompt_logprobs` of several groups, stacked: [rows, longest completion]."""
    import torch

    parts = [shared_prompt_logprobs(model, prompt, completions, pad)
             for prompt, completions in groups]  # fmt: skip
    width = max(logp.shape[1] for logp, _ in parts)

    def padded(tensor: Any) -> Any:
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]))

    return (torch.cat([padded(logp) for logp, _ in parts]),
            torch.cat([padded(mask) for _, mask in parts]))  # fmt: skip
