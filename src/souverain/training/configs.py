"""One typed configuration per training method: each setting's default, bounds and help,
in the style of TRL's config dataclasses (`trl.SFTConfig`, `trl.GRPOConfig`).

Everything else derives from these two classes:
- the recipes run with them (training/sft.py, training/grpo.py build one from their spec,
  and refuse a spec outside the bounds before loading anything);
- the API's bounds: a job request is resolved into one (jobs/fine_tuning/recipe.py) and
  refused with the setting's name and reason when `check` finds a problem; the request
  shapes accept, beside OpenAI's and Mistral's own names, the settings marked `tenant`;
- the CLI's options: `souverain finetune create --set NAME=VALUE` takes the same names,
  checked here before any request is sent, and its help lists them with their bounds.

Bounds say what can learn, not only what fits: a learning rate of zero changes nothing and a
huge one makes the adapter diverge; a group of one completion has no advantage (its reward
is its own mean); a completion budget too short for a thinking block and an answer earns no
reward at all. Nothing here imports torch: the server and the CLI read these classes too.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

MAX_ROLLOUT_SEQUENCES = 64  # prompts a step × group size, sampled together (training/rollouts.py)
REASONING_MIN_TOKENS = 64  # a thinking block, then a boxed answer (the magistral grader)


class SettingError(ValueError):
    """A setting that cannot be used, with its name (the API's `param`)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def setting(
    default: T, *, low: float, high: float, help: str, tenant: bool = False, why: str = ""
) -> T:
    """A field with its bounds (inclusive) and help; `tenant`: a job request may set it by
    this name; `why`: what a value outside the bounds would do, said when one is refused."""
    metadata = {"help": help, "low": low, "high": high, "tenant": tenant, "why": why}
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning with LoRA (training/sft.py, on TRL's SFTTrainer)."""

    max_steps: int = setting(100, low=1, high=1_000_000, help="Optimiser steps of the job.")
    batch_size: int = setting(8, low=1, high=256, help="Chats a step.")
    learning_rate: float = setting(
        2e-4, low=1e-7, high=1e-2, help="The LoRA's peak learning rate (linear decay).",
        why="below 1e-7 the adapter barely moves; above 1e-2 a LoRA's loss diverges",
    )  # fmt: skip
    seq_len: int = setting(
        2048, low=16, high=1_048_576, help="The longest chat, in tokens (at most the model's)."
    )
    warmup_fraction: float = setting(0.0, low=0, high=1, help="Share of steps warming up.")
    weight_decay: float = setting(0.0, low=0, high=1, help="AdamW's weight decay.")
    lora_rank: int = setting(8, low=1, high=256, help="The adapter's rank.")
    lora_alpha: int = setting(16, low=1, high=1024, help="The adapter's scale numerator.")
    seed: int = setting(0, low=0, high=2**31 - 1, help="Seed of sampling and initialisation.")
    save_steps: int = setting(10, low=1, high=1_000_000, help="Steps between checkpoints.")


@dataclass(frozen=True)
class GRPOConfig:
    """Reinforcement fine-tuning with GRPO and the Magistral changes (training/grpo.py).
    Defaults are Magistral's where the paper gives them, sized for CPUs otherwise."""

    max_steps: int = setting(20, low=0, high=1_000_000, help="Steps; 0 evaluates only.")
    batch_size: int = setting(2, low=1, high=64, help="Prompts a step.")
    group_size: int = setting(
        8, low=2, high=32, tenant=True, help="Completions sampled for each prompt.",
        why="a group of one completion has no advantage: its reward is its own mean",
    )  # fmt: skip
    learning_rate: float = setting(
        5e-5, low=1e-7, high=1e-3, help="The LoRA's learning rate (constant).",
        why="below 1e-7 nothing is learnt; above 1e-3 the adapter diverges (public GRPO "
        "runs of small LoRA models already fell below their start at 1e-4)",
    )  # fmt: skip
    max_tokens: int = setting(
        192, low=16, high=4096, tenant=True, help="The longest completion (l_max)."
    )
    length_cache: int = setting(
        64, low=1, high=4096, tenant=True,
        help="The soft length penalty's ramp before max_tokens (l_cache).",
    )  # fmt: skip
    temperature: float = setting(
        0.8, low=0.05, high=2.0, tenant=True, help="Sampling temperature of the rollouts.",
        why="near 0 every completion of a group is the same (no advantage); above 2 they "
        "are noise",
    )  # fmt: skip
    top_p: float = setting(1.0, low=0.05, high=1.0, tenant=True, help="Nucleus sampling.")
    epsilon_low: float = setting(
        0.2, low=0.0, high=0.9, tenant=True, help="Lower clip of the importance ratio."
    )
    epsilon_high: float = setting(
        0.28, low=0.0, high=5.0, tenant=True, help="Upper clip (clip-higher, as Magistral)."
    )
    beta: float = setting(
        0.0, low=0.0, high=1.0, tenant=True, help="KL weight; 0: no reference model at all."
    )
    tis_cap: float = setting(
        2.0, low=1.0, high=100.0, tenant=True,
        help="Truncated importance sampling: a token's weight π_trainer / π_rollout is cut "
        "at this cap (corrects what differs between llama.cpp and PyTorch).",
    )  # fmt: skip
    refill_rounds: int = setting(
        2, low=0, high=8, tenant=True,
        help="Extra batches sampled in a step while it has fewer than batch_size groups "
        "whose rewards differ (DAPO's dynamic sampling).",
    )  # fmt: skip
    band_rest_epochs: int = setting(
        1, low=0, high=100, tenant=True,
        help="Passes over the data a prompt rests after a group all right or all wrong "
        "(online difficulty filtering; 0: off).",
    )  # fmt: skip
    minibatches: int = setting(
        2, low=1, high=16, tenant=True, help="Optimiser steps a step (groups split evenly)."
    )
    max_grad_norm: float = setting(1.0, low=0.01, high=100.0, help="Gradient clipping.")
    lora_rank: int = setting(8, low=1, high=256, help="The adapter's rank.")
    lora_alpha: int = setting(16, low=1, high=1024, help="The adapter's scale numerator.")
    seed: int = setting(0, low=0, high=2**31 - 1, help="Seed of sampling and initialisation.")
    save_steps: int = setting(10, low=1, high=1_000_000, help="Steps between checkpoints.")
    seq_len: int = setting(
        1024, low=32, high=1_048_576, help="Prompt and completion, in tokens (at most the model's)."
    )
    eval_samples: int = setting(
        100, low=1, high=1000, tenant=True, help="Held-out prompts evaluated, at most."
    )
    eval_samples_per_prompt: int = setting(
        4, low=0, high=16, tenant=True,
        help="Completions sampled at the training temperature for each held-out prompt, "
        "beside the greedy one (0: greedy only).",
    )  # fmt: skip
    dev_samples: int = setting(
        0, low=0, high=1000, tenant=True,
        help="Training lines held back as a dev split: the job keeps the adapter whose "
        "dev reward was best, not the last (0: the last).",
    )  # fmt: skip
    dev_steps: int = setting(
        5, low=1, high=1_000_000, tenant=True, help="Steps between dev evaluations."
    )
    max_staleness: int = setting(
        0, low=0, high=4, tenant=True,
        help="Asynchronous generation: the rollouts of the next step are sampled while the "
        "trainer updates, by an adapter at most this many updates old (0: synchronous, "
        "every group sampled by the adapter it trains).",
        why="beyond 4 updates the truncated importance weights cut most of a stale group's "
        "tokens, so its rollouts are wasted",
    )  # fmt: skip
    collapse_margin: float = setting(
        0.3, low=0.0, high=1.0, tenant=True,
        help="Stop the job when the format rate falls this far below its start (1: never).",
    )  # fmt: skip
    collapse_window: int = setting(
        5, low=1, high=100, tenant=True,
        help="Steps averaged for the format rate at the start and now.",
    )  # fmt: skip


Config = SFTConfig | GRPOConfig
C = TypeVar("C", SFTConfig, GRPOConfig)


def settings_of(config: type[Config] | Config) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(config)}


def tenant_settings(config: type[Config]) -> list[str]:
    """The names a job request may set directly."""
    return [name for name, f in settings_of(config).items() if f.metadata["tenant"]]


def default_of(config: type[Config], name: str) -> Any:
    return settings_of(config)[name].default


def bounds_of(config: type[Config], name: str) -> tuple[float, float]:
    meta = settings_of(config)[name].metadata
    return meta["low"], meta["high"]


def why_of(config: type[Config], name: str) -> str:
    """What a value outside the setting's bounds would do."""
    return str(settings_of(config)[name].metadata["why"])


def check_setting(config: type[Config], name: str, value: Any) -> Any:
    """`value` if `name` may take it; SettingError saying why otherwise."""
    fields = settings_of(config)
    if name not in fields:
        raise SettingError(name, f"unknown setting {name!r}; known: {', '.join(fields)}")
    meta = fields[name].metadata
    integer = isinstance(fields[name].default, int)
    kind = "an integer" if integer else "a number"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
        or not math.isfinite(value)
    ):
        raise SettingError(name, f"{name} must be {kind} from {meta['low']:g} to {meta['high']:g}")
    if not meta["low"] <= value <= meta["high"]:
        because = f": {meta['why']}" if meta["why"] else ""
        raise SettingError(
            name, f"{name} must be {kind} from {meta['low']:g} to {meta['high']:g}{because}"
        )
    return value


def check(config: Config) -> None:
    """Every setting within its bounds, and the settings that bound each other consistent."""
    for name in settings_of(config):
        check_setting(type(config), name, getattr(config, name))
    if isinstance(config, GRPOConfig):
        _check_grpo(config)


def _check_grpo(c: GRPOConfig) -> None:
    if c.batch_size * c.group_size > MAX_ROLLOUT_SEQUENCES:
        raise SettingError(
            "batch_size",
            f"batch_size × group_size must be at most {MAX_ROLLOUT_SEQUENCES} "
            "(the completions sampled together each step)",
        )
    if c.top_p < 1.0 and c.max_steps > 0:
        raise SettingError(
            "top_p",
            "top_p below 1 cannot train: the rollouts would sample from a nucleus while the "
            "trainer scores the whole distribution, so the loss would not be on-policy; use "
            "top_p 1 (an evaluation, with no training step, may use a nucleus)",
        )
    if c.minibatches > c.batch_size:
        raise SettingError("minibatches", "minibatches must be at most batch_size")
    if c.length_cache >= c.max_tokens:
        raise SettingError("length_cache", "length_cache must be below max_tokens")
    if c.max_tokens + 16 > c.seq_len:
        raise SettingError(
            "seq_len", f"seq_len must leave room for max_tokens ({c.max_tokens}) and a prompt"
        )


def check_budget(max_tokens: int, grader_type: str) -> None:
    """SettingError unless a completion of `max_tokens` can earn the grader's reward: the
    magistral grader pays nothing without a thinking block and a boxed answer."""
    if grader_type == "magistral" and max_tokens < REASONING_MIN_TOKENS:
        raise SettingError(
            "max_tokens",
            f"max_tokens {max_tokens} leaves no room for a thinking block and a boxed answer: "
            f"the magistral grader needs at least {REASONING_MIN_TOKENS}, or no completion "
            "can earn a reward",
        )


def built(config: type[C], values: dict[str, Any]) -> C:
    """A checked configuration from a recipe's spec (unknown names refused)."""
    unknown = sorted(set(values) - set(settings_of(config)))
    if unknown:
        raise SettingError(unknown[0], f"unknown setting {unknown[0]!r}")
    made = config(**values)
    check(made)
    return made


def help_lines(config: type[Config], *, tenant_only: bool = False) -> list[str]:
    """One line a setting: name, default, bounds and help (the CLI's help)."""
    lines = []
    for name, f in settings_of(config).items():
        if tenant_only and not f.metadata["tenant"]:
            continue
        meta = f.metadata
        lines.append(f"{name} (default {f.default:g}, {meta['low']:g} to {meta['high']:g}): "
                     f"{meta['help']}")  # fmt: skip
    return lines
