"""Split a replica's energy over an interval among the requests it served then.

Each request weighs prompt_tokens × prompt_weight + completion_tokens × completion_weight
(prefill is cheaper per token than decoding, so completion tokens weigh more by default).
What no request accounts for is the deployment's idle energy, kept, not hidden.
Conservation holds by construction: Σ attributed + idle = measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Served:
    record_id: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class Split:
    per_record: dict[str, float]
    idle_j: float


def weight(served: Served, *, prompt_weight: float, completion_weight: float) -> float:
    return served.prompt_tokens * prompt_weight + served.completion_tokens * completion_weight


def attribute(
    energy_j: float,
    served: Sequence[Served],
    *,
    prompt_weight: float = 1.0,
    completion_weight: float = 3.0,
) -> Split:
    weights = {
        s.record_id: weight(s, prompt_weight=prompt_weight, completion_weight=completion_weight)
        for s in served
    }
    total = sum(weights.values())
    if total <= 0:
        return Split(per_record={record_id: 0.0 for record_id in weights}, idle_j=energy_j)
    return Split(
        per_record={record_id: energy_j * w / total for record_id, w in weights.items()}, idle_j=0.0
    )


def co2e_grams(energy_j: float, grams_per_kwh: float) -> float:
    return energy_j / 3.6e6 * grams_per_kwh
