"""A reinforcement job that stops itself when its reward collapses.

With the magistral grader a completion earns nothing unless it is formatted (a thinking
block, then an answer), so the format rate is what the reward rests on: once the policy
unlearns the format, every later step makes the model worse and the tenant pays for it.
`Collapse` keeps each step's format rate; the start is the mean of the first `window`
steps, now the mean of the last `window`; the job has collapsed when now is below the
start by more than `margin`. With `margin` 1 it never stops (a rate cannot fall by more).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

REWARD_COLLAPSED = 4  # the recipe's exit code when the job stopped itself


@dataclass
class Collapse:
    margin: float
    window: int
    rates: list[float] = field(default_factory=list)

    @property
    def start(self) -> float | None:
        return statistics.fmean(self.rates[: self.window]) if self.rates else None

    @property
    def now(self) -> float | None:
        return statistics.fmean(self.rates[-self.window :]) if self.rates else None

    def add(self, format_rate: float) -> bool:
        """This step's format rate; whether the job has collapsed (never before the start
        window is full and one step past it)."""
        self.rates.append(format_rate)
        if len(self.rates) <= self.window:
            return False
        assert self.start is not None and self.now is not None
        return self.now < self.start - self.margin

    def reason(self, step: int) -> str:
        """Why the job stopped, in words a tenant acts on."""
        return (
            f"the reward collapsed: the format rate fell from {self.start:.0%} over the first "
            f"{self.window} steps to {self.now:.0%} over the last {self.window}, more than the "
            f"margin of {self.margin:.0%}; the job stopped itself at step {step} (try a lower "
            "learning rate, or a larger collapse_margin)"
        )
