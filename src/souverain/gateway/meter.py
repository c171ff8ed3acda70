"""How tokens become an energy (and cost) estimate, before and after a request."""

from __future__ import annotations

from dataclasses import dataclass

from souverain.energy.attribution import Served, weight
from souverain.metering.budgets import Amounts
from souverain.metering.prices import Price
from souverain.settings import Settings


@dataclass(frozen=True)
class Meter:
    """How tokens turn into energy for estimates: the weights and the prior per token."""

    prompt_weight: float
    completion_weight: float
    j_per_token_prior: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Meter:
        return cls(
            settings.energy_prompt_weight,
            settings.energy_completion_weight,
            settings.energy_j_per_token_prior,
        )

    def per_token(self, j_per_token: float | None) -> float:
        return self.j_per_token_prior if j_per_token is None else j_per_token

    def amounts(
        self, *, prompt: int, completion: int, price: Price | None, j_per_token: float
    ) -> Amounts:
        weighted = weight(
            Served("", prompt, completion),
            prompt_weight=self.prompt_weight,
            completion_weight=self.completion_weight,
        )
        return Amounts(
            tokens=prompt + completion,
            cost=price.cost(prompt, completion) if price else 0.0,
            energy_j=weighted * j_per_token,
        )
