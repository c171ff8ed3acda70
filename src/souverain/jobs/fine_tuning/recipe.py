"""What a fine-tuning request resolves to: the recipe's configuration, each setting bounded.

`Asked` is a job request in either API shape; `resolve_hyperparameters` (supervised),
`resolve_reinforcement` (GRPO, the Magistral defaults) and `resolve_evaluation` (the
reinforcement recipe with no step) turn it into the recipe's typed configuration
(training/configs.py: defaults, bounds and the reasons for them live there, once) and
return it as the job stores it. A setting that cannot learn is refused with a 400 naming
it and saying why; what this installation or model cannot take (steps, epochs, a context
longer than the model's) with a 422. Nothing here reads the database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from souverain.core.errors import InvalidRequestError, UnprocessableError
from souverain.training.configs import (
    C,
    GRPOConfig,
    SettingError,
    SFTConfig,
    bounds_of,
    built,
    check_budget,
    check_setting,
    default_of,
    tenant_settings,
    why_of,
)

# OpenAI's learning_rate_multiplier scales the recipe's default rate
BASE_LEARNING_RATE: float = default_of(SFTConfig, "learning_rate")
BASE_RL_LEARNING_RATE: float = default_of(GRPOConfig, "learning_rate")


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


def resolve_hyperparameters(
    asked: Asked, *, samples: int, context_length: int, limits: Limits
) -> dict[str, Any]:
    """What the supervised recipe runs with (`SFTConfig`). "auto" (None) picks values that
    work for small data: batches of up to 8, three epochs, the config's learning rate."""
    batch = asked.batch_size if asked.batch_size is not None else max(1, min(8, samples))
    _check(SFTConfig, "batch_size", batch)
    steps_per_epoch = math.ceil(samples / batch)
    steps = _steps(asked, steps_per_epoch, default_epochs=3, limits=limits)
    config = _built(SFTConfig, {
        "max_steps": steps, "batch_size": batch, "learning_rate": _rate(asked, SFTConfig),
        "seq_len": _seq_len(asked, SFTConfig, context_length=context_length, limits=limits),
        "warmup_fraction": _or(asked.warmup_fraction, 0.0),
        "weight_decay": _or(asked.weight_decay, 0.0), "seed": asked.seed or 0,
        "save_steps": max(1, math.ceil(steps / 4)),  # four checkpoints a job
    })  # fmt: skip
    return asdict(config) | {"n_epochs": math.ceil(steps / steps_per_epoch)}


def resolve_reinforcement(
    asked: Asked, *, samples: int, context_length: int, limits: Limits
) -> dict[str, Any]:
    """What the GRPO recipe runs with (`GRPOConfig`), each setting bounded; the grader
    checked (400 if it cannot run here: a Python grader would run the tenant's code)."""
    grader = _checked_grader(asked.grader)
    given = _given_settings(asked.reinforcement or {})
    max_tokens = given.get("max_tokens", default_of(GRPOConfig, "max_tokens"))
    try:
        check_budget(max_tokens, grader["type"])
    except SettingError as error:
        raise InvalidRequestError(str(error), param=error.name) from None
    batch = _or(asked.batch_size, default_of(GRPOConfig, "batch_size"))
    _check(GRPOConfig, "batch_size", batch)
    steps = _steps(asked, math.ceil(samples / batch), default_epochs=1, limits=limits)
    seq_len = _seq_len(asked, GRPOConfig, context_length=context_length, limits=limits)
    config = _built(GRPOConfig, given | {
        "max_steps": steps, "batch_size": batch, "learning_rate": _rate(asked, GRPOConfig),
        "seq_len": seq_len, "seed": asked.seed or 0, "save_steps": max(1, math.ceil(steps / 4)),
    })  # fmt: skip
    return asdict(config) | {
        "n_epochs": math.ceil(steps * batch / max(samples, 1)),
        "grader": grader,
    }


def resolve_evaluation(
    asked: Asked, *, samples: int, context_length: int, limits: Limits
) -> dict[str, Any]:
    """An evaluation is the reinforcement recipe with no step: each held-out prompt
    answered greedily once and graded."""
    settings = dict(asked.reinforcement or {})
    top_p = settings.pop("top_p", default_of(GRPOConfig, "top_p"))  # no training: a nucleus may do
    steps_free = replace(
        asked,
        training_steps=1,
        batch_size=1,
        reinforcement={**settings, "group_size": 2, "minibatches": 1},
    )
    resolved = resolve_reinforcement(
        steps_free, samples=samples, context_length=context_length, limits=limits
    )
    _check(GRPOConfig, "top_p", top_p)
    return resolved | {"max_steps": 0, "save_steps": 1, "n_epochs": 0, "top_p": top_p}


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


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _check(config: type[SFTConfig | GRPOConfig], name: str, value: Any) -> None:
    try:
        check_setting(config, name, value)
    except SettingError as error:
        raise InvalidRequestError(str(error), param=error.name) from None


def _built(config: type[C], values: dict[str, Any]) -> C:
    try:
        return built(config, values)
    except SettingError as error:
        raise InvalidRequestError(str(error), param=error.name) from None


def _rate(asked: Asked, config: type[SFTConfig | GRPOConfig]) -> float:
    """The learning rate: as given (Mistral's shape), else the config's default times
    OpenAI's multiplier; the multiplier's bounds are the rate's, divided by the default."""
    if asked.learning_rate is not None:
        _check(config, "learning_rate", asked.learning_rate)
        return asked.learning_rate
    multiplier = _or(asked.learning_rate_multiplier, 1.0)
    base = default_of(config, "learning_rate")
    low, high = bounds_of(config, "learning_rate")
    if isinstance(multiplier, bool) or not low <= multiplier * base <= high:
        raise InvalidRequestError(
            f"learning_rate_multiplier must be from {low / base:g} to {high / base:g} (a "
            f"learning rate of {low:g} to {high:g}): {why_of(config, 'learning_rate')}",
            param="learning_rate_multiplier",
        )
    return float(multiplier * base)


def _seq_len(
    asked: Asked,
    config: type[SFTConfig | GRPOConfig],
    *,
    context_length: int,
    limits: Limits,
) -> int:
    """As asked, else the config's default within the model's context."""
    most = min(context_length, limits.max_seq_len)
    if asked.seq_len is None:
        return min(most, int(default_of(config, "seq_len")))
    _check(config, "seq_len", asked.seq_len)
    if asked.seq_len > most:
        raise UnprocessableError(f"seq_len must be at most {most} for this model",
                                 param="seq_len")  # fmt: skip
    return asked.seq_len


def _checked_grader(grader: dict[str, Any] | None) -> dict[str, Any]:
    from souverain.training import rewards

    if grader is None:
        raise InvalidRequestError(
            "A reinforcement job needs a grader (method.reinforcement.grader); "
            '{"type": "magistral"} is the built-in one for math with reasoning.',
            param="method.reinforcement.grader",
        )
    try:
        rewards.check_grader(grader)
    except rewards.GraderError as error:
        raise InvalidRequestError(str(error), param="method.reinforcement.grader") from None
    return grader


def _given_settings(asked: dict[str, Any]) -> dict[str, Any]:
    """The GRPO settings a request gave by name, each within its bounds."""
    given = dict(asked)
    for name, value in given.items():
        if name not in tenant_settings(GRPOConfig):
            raise InvalidRequestError(f"unknown reinforcement hyperparameter {name!r}; known: "
                                      f"{', '.join(tenant_settings(GRPOConfig))}", param=name)  # fmt: skip
        _check(GRPOConfig, name, value)
    if "length_cache" not in given and "max_tokens" in given:
        # the length penalty's ramp is at most half the budget unless asked otherwise
        ramp = default_of(GRPOConfig, "length_cache")
        given["length_cache"] = min(ramp, max(1, given["max_tokens"] // 2))
    return given
