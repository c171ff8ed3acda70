"""Which prompts a GRPO step trains on: the online difficulty band and DAPO's refill.

A group whose completions all earn the same reward has no advantage, so it teaches
nothing and only costs its rollouts. Two things keep steps full of groups that do teach
(Yu et al., "DAPO", 2025, dynamic sampling; Bae et al., "Online difficulty filtering for
reasoning oriented reinforcement learning", 2025):

- the band: a prompt whose last group was all right or all wrong (success share at or
  outside [low, high]) rests for `rest_epochs` passes over the data before it is drawn
  again (the model changes, so it may come back into the band); when every prompt rests,
  they are drawn anyway (a step never starves);
- the refill: a step samples a batch; if fewer than the planned informative groups came
  out, it samples another batch, at most `rounds` more times, and trains on at most the
  planned number.

Pure: no model, no engine; training/grpo.py gives them its draws.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

G = TypeVar("G")


class DifficultyBand:
    """Shuffled passes over `size` prompts that skip the prompts resting out of the band."""

    def __init__(
        self, size: int, rng: random.Random, *, low: float, high: float, rest_epochs: int
    ) -> None:
        if size < 1:
            raise ValueError("a band needs at least one prompt")
        self.size, self.rng = size, rng
        self.low, self.high, self.rest_epochs = low, high, rest_epochs
        self.resting: dict[int, int] = {}  # prompt → passes left to rest
        self.order: list[int] = []
        self.skipped = 0  # draws skipped because their prompt rested (a metric)

    def draw(self, count: int) -> list[int]:
        picked: list[int] = []
        while len(picked) < count:
            if not self.order:
                self._new_pass()
            picked.append(self.order.pop())
        return picked

    def observe(self, prompt: int, success_share: float) -> None:
        """A group's share of successful completions for `prompt`."""
        if self.rest_epochs and not self.low < success_share < self.high:
            self.resting[prompt] = self.rest_epochs
        else:
            self.resting.pop(prompt, None)

    def _new_pass(self) -> None:
        awake = [i for i in range(self.size) if i not in self.resting]
        self.skipped += self.size - len(awake) if awake else 0
        self.resting = {i: left - 1 for i, left in self.resting.items() if left > 1}
        self.order = awake or list(range(self.size))
        self.rng.shuffle(self.order)


@dataclass
class Filled(Generic[G]):
    kept: list[G]  # the informative groups trained on (at most the planned number)
    drawn: list[G] = field(default_factory=list)  # every group sampled, kept or not
    rounds: int = 0  # sampling rounds after the first


def fill_informative(
    draw: Callable[[], Sequence[G]],
    informative: Callable[[G], bool],
    *,
    planned: int,
    rounds: int,
) -> Filled[G]:
    """Draw batches until `planned` informative groups are found or `rounds` refills are
    spent; the first `planned` informative ones are kept, in the order drawn."""
    filled: Filled[G] = Filled(kept=[])
    for round_ in range(rounds + 1):
        batch = list(draw())
        filled.drawn.extend(batch)
        filled.rounds = round_
        for group in batch:
            if informative(group) and len(filled.kept) < planned:
                filled.kept.append(group)
        if len(filled.kept) >= planned:
            break
    return filled
