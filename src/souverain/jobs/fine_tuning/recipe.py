"""What a fine-tuning request resolves to: the recipe's hyperparameters, each bounded.

`Asked` is a job request in either API shape; `resolve_hyperparameters` (supervised),
`resolve_reinforcement` (GRPO, the Magistral defaults) and `resolve_evaluation` (the
reinforcement recipe with no step) turn it into what the training process runs with, or
refuse it with a 422 naming the parameter. Nothing here reads the database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from souverain.core.errors import InvalidRequestError, UnprocessableError

BASE_LEARNING_RATE = 2e-4  # LoRA; OpenAI's learning_rate_multiplier scales this


@dataclass(frozen=True)
class Limits:
    max_steps: int
    max_epochs: int
    max_seq_len: int
    max_dataset_bytes: int
    max_samples: int
    cpus: float
    max_active_jobs: int = 4


@dataclass(frozen=True)
class Asked:
    """A job request, whichever shape it came in."""

    shape: str  # openai | mistral
    model: str
    training_files: Sequence[tuple[str, float]]  # (file id, weight)
    validation_file: str | None
    n_epochs: int | None = None
    batch_size: int | None = None
    learning_rate_multiplier: float | None = None
    learning_rate: float | None = None
    training_steps: int | None = None
    seq_len: int | None = None
    warmup_fraction: float | None = None
    weight_decay: float | None = None
    suffix: str | None = None
    seed: int | None = None
    metadata: dict[str, str] | None = None
    auto_start: bool = True
    jurisdictions: Sequence[str] | None = None
    hyperparameters: dict[str, Any] | None = None  # as given, for the job object
    method: str = "supervised"  # supervised | reinforcement
    grader: dict[str, Any] | None = None  # reinforcement
    reinforcement: dict[str, Any] | None = None  # its other hyperparameters, as given


# Reinforcement: bounds of each hyperparameter (inclusive), and the defaults (Magistral's
# where the paper gives them; sized for CPUs otherwise). See training/grpo.py.
BASE_RL_LEARNING_RATE = 5e-5
RL_BOUNDS: dict[str, tuple[float, float]] = {
    "group_size": (2, 32), "max_tokens": (16, 4096), "length_cache": (1, 4096),
    "temperature": (0.05, 2.0), "top_p": (0.05, 1.0), "epsilon_low": (0.0, 0.9),
    "epsilon_high": (0.0, 5.0), "beta": (0.0, 1.0), "minibatches": (1, 16),
    "eval_samples": (1, 1000),
}  # fmt: skip
RL_DEFAULTS: dict[str, Any] = {
    "group_size": 8, "max_tokens": 192, "length_cache": 64, "temperature": 0.8, "top_p": 1.0,
    "epsilon_low": 0.2, "epsilon_high": 0.28, "beta": 0.0, "minibatches": 2, "eval_samples": 100,
}  # fmt: skip
MAX_ROLLOUT_SEQUENCES = 64  # prompts a step × group size (training/rollouts.py)


def resolve_hyperparameters(
    asked: Asked, *, samples: int, context_length: int, limits: Limits
) -> dict[str, Any]:
    """What the recipe runs with. "auto" (None) picks values that work for small data."""
    batch = asked.batch_size if asked.batch_size is not None else max(1, min(8, samples))
    if not 1 <= batch <= 256:
        raise UnprocessableError("batch_size must be 1 to 256", param="batch_size")
    steps_per_epoch = math.ceil(samples / batch)
    steps = _steps(asked, steps_per_epoch, default_epochs=3, limits=limits)
    if asked.learning_rate is not None:
        rate = asked.learning_rate
        if not 0 < rate <= 1:
            raise UnprocessableError("learning_rate must be in (0, 1]", param="learning_rate")
    else:
        multiplier = (
            asked.learning_rate_multiplier if asked.learning_rate_multiplier is not None else 1.0
        )
        if not 0 < multiplier <= 100:
            raise UnprocessableError(
                "learning_rate_multiplier must be in (0, 100]", param="learning_rate_multiplier"
            )
        rate = BASE_LEARNING_RATE * multiplier
    seq_len = (
        asked.seq_len
        if asked.seq_len is not None
        else min(2048, context_length, limits.max_seq_len)
    )
    if not 16 <= seq_len <= min(context_length, limits.max_seq_len):
        raise UnprocessableError(
            f"seq_len must be 16 to {min(context_length, limits.max_seq_len)} for this model",
            param="seq_len",
        )
    warmup = asked.warmup_fraction if asked.warmup_fraction is not None else 0.0
    decay = asked.weight_decay if asked.weight_decay is not None else 0.0
    if not 0 <= warmup <= 1:
        raise UnprocessableError("warmup_fraction must be in [0, 1]", param="warmup_fraction")
    if not 0 <= decay <= 1:
        raise UnprocessableError("weight_decay must be in [0, 1]", param="weight_decay")
    return {
        "max_steps": steps,
        "batch_size": batch,
        "learning_rate": rate,
        "seq_len": seq_len,
        "warmup_fraction": warmup,
        "weight_decay": decay,
        "lora_rank": 8,
        "lora_alpha": 16,
        "seed": asked.seed or 0,
        "save_steps": max(1, math.ceil(steps / 4)),  # four checkpoints a job
        "n_epochs": math.ceil(steps / steps_per_epoch),
    }


def resolve_reinforcement(
    asked: Asked, *, samples: int, context_length: int, limits: Limits
) -> dict[str, Any]:
    """The GRPO recipe's hyperparameters, each bounded; the grader checked (400 if it
    cannot run here: a Python grader would run the tenant's code)."""
    from souverain.training import rewards

    if asked.grader is None:
        raise InvalidRequestError(
            "A reinforcement job needs a grader (method.reinforcement.grader); "
            '{"type": "magistral"} is the built-in one for math with reasoning.',
            param="method.reinforcement.grader",
        )
    try:
        rewards.check_grader(asked.grader)
    except rewards.GraderError as error:
        raise InvalidRequestError(str(error), param="method.reinforcement.grader") from None
    given = dict(asked.reinforcement or {})
    defaults = dict(RL_DEFAULTS)
    if isinstance(max_tokens := given.get("max_tokens"), int) and max_tokens >= 2:
        # the length penalty's ramp is at most half the budget unless asked otherwise
        defaults["length_cache"] = min(defaults["length_cache"], max_tokens // 2)
    resolved: dict[str, Any] = {}
    for name, default in defaults.items():
        value = given.get(name, default)
        low, high = RL_BOUNDS[name]
        integer = isinstance(default, int)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (integer and not isinstance(value, int))
            or not low <= value <= high
        ):
            kind = "an integer" if integer else "a number"
            raise UnprocessableError(f"{name} must be {kind} from {low:g} to {high:g}",
                                     param=name)  # fmt: skip
        resolved[name] = value
    batch = asked.batch_size if asked.batch_size is not None else 2
    if not 1 <= batch * resolved["group_size"] <= MAX_ROLLOUT_SEQUENCES:
        raise UnprocessableError(
            f"batch_size × group_size must be at most {MAX_ROLLOUT_SEQUENCES} "
            "(the completions sampled together each step)",
            param="batch_size",
        )
    if resolved["minibatches"] > batch:
        raise UnprocessableError("minibatches must be at most batch_size", param="minibatches")
    if resolved["length_cache"] >= resolved["max_tokens"]:
        raise UnprocessableError("length_cache must be below max_tokens", param="length_cache")
    steps = _steps(asked, math.ceil(samples / batch), default_epochs=1, limits=limits)
    multiplier = (
        asked.learning_rate_multiplier if asked.learning_rate_multiplier is not None else 1.0
    )
    if not 0 < multiplier <= 100:
        raise UnprocessableError(
            "learning_rate_multiplier must be in (0, 100]", param="learning_rate_multiplier"
        )
    seq_len = (
        asked.seq_len
        if asked.seq_len is not None
        else min(context_length, limits.max_seq_len, 1024)
    )
    if not resolved["max_tokens"] + 16 <= seq_len <= min(context_length, limits.max_seq_len):
        raise UnprocessableError(
            f"seq_len must leave room for max_tokens and be at most "
            f"{min(context_length, limits.max_seq_len)} for this model",
            param="seq_len",
        )
    return resolved | {
        "max_steps": steps,
        "batch_size": batch,
        "learning_rate": BASE_RL_LEARNING_RATE * multiplier,
        "seq_len": seq_len,
        "lora_rank": 8,
        "lora_alpha": 16,
        "seed": asked.seed or 0,
        "save_steps": max(1, math.ceil(steps / 4)),
        "n_epochs": math.ceil(steps * batch / max(samples, 1)),
        "grader": asked.grader,
    }


def resolve_evaluation(
    asked: Asked, *, samples: int, context_length: int, limits: Limits
) -> dict[str, Any]:
    """An evaluation is the reinforcement recipe with no step: each held-out prompt
    answered greedily once and graded."""
    steps_free = replace(
        asked,
        training_steps=1,
        batch_size=1,
        reinforcement={**(asked.reinforcement or {}), "group_size": 2, "minibatches": 1},
    )
    resolved = resolve_reinforcement(
        steps_free, samples=samples, context_length=context_length, limits=limits
    )
    return resolved | {"max_steps": 0, "save_steps": 1, "n_epochs": 0}


def _steps(asked: Asked, steps_per_epoch: int, *, default_epochs: int, limits: Limits) -> int:
    """The job's length: `training_steps` as asked, else epochs of the data; bounded."""
    if asked.training_steps is not None:
        steps = asked.training_steps
    else:
        epochs = asked.n_epochs if asked.n_epochs is not None else default_epochs
        if not 1 <= epochs <= limits.max_epochs:
            raise UnprocessableError(f"n_epochs must be 1 to {limits.max_epochs}", param="n_epochs")
        steps = steps_per_epoch * epochs
    if not 1 <= steps <= limits.max_steps:
        raise UnprocessableError(
            f"this job would take {steps} training steps; at most {limits.max_steps} are allowed",
            param="training_steps" if asked.training_steps is not None else "n_epochs",
        )
    return steps
