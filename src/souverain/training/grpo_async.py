"""Asynchronous generation for GRPO (Mistral AI, "Magistral", 2025): the rollouts of the
next step are sampled while the trainer updates on this one's.

A background thread (the generator) samples batches one after the other with the adapter
it holds, and never waits for the trainer except to bound staleness: it waits while
`ahead` finished batches are queued. Each batch is stamped with the adapter version that
sampled it (the number of trainer updates behind that adapter). The trainer publishes each
new adapter (`publish`); the generator swaps it in between batches, never inside one, so
every sequence of a batch comes from one adapter.

Staleness of a batch consumed at trainer version v: v - its version. With `ahead` = k
batches queued and one in flight, a step consuming at least one batch, a batch is at most
k updates old when the trainer takes it; the trainer still checks (`take` with
`max_staleness`) and discards, counted, any batch older than k (a refill-heavy step or a
restart could otherwise let one through). A stale batch needs no other correction: its
samples carry their own rollout log-probabilities, and the update weighs every token by
min(π_trainer / π_rollout, tis_cap), the truncated importance ratio against the policy
that actually sampled it.

Waiting is measured on both sides: `trainer_wait_s` (the trainer had no batch to take) and
`generator_wait_s` (the generator had `ahead` batches queued), read and reset per step by
`waits`.

`stop` ends the thread after the batch in flight (llama.cpp is not interrupted inside a
decode); the queued batches stay, and `drop` discards them explicitly, returning how many
groups were dropped, so a pause neither trains on them nor counts their tokens.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

G = TypeVar("G")


@dataclass(frozen=True)
class Stamped(Generic[G]):
    """A batch of groups and the adapter version that sampled it."""

    version: int
    groups: Sequence[G]


@dataclass
class Taken(Generic[G]):
    """What the trainer took for one draw: a fresh batch, and the groups it discarded."""

    batch: Stamped[G]
    discarded: int = 0  # groups older than max_staleness, never trained on


class Generator(Generic[G]):
    """Batches sampled in a background thread by `draw(round_number)`; adapters swapped in
    by `load(path)` between batches (both run in the generator's thread only)."""

    def __init__(
        self,
        draw: Callable[[int], Sequence[G]],
        load: Callable[[Path], None],
        *,
        ahead: int,
        first_round: int = 0,
    ) -> None:
        if ahead < 1:
            raise ValueError("the generator needs room for at least one batch ahead")
        self._draw, self._load, self.ahead = draw, load, ahead
        self._cond = threading.Condition()
        self._ready: deque[Stamped[G]] = deque()
        self._published: tuple[int, Path | None] = (0, None)
        self._loaded: int | None = None  # version in the engine; None: reload the published
        self._stopping = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._finished = False  # the thread returned (it samples nothing more)
        self.next_round = first_round
        self.trainer_wait_s = 0.0
        self.generator_wait_s = 0.0

    # -- the trainer's side ------------------------------------------------------------

    def publish(self, version: int, path: Path | None) -> None:
        """The adapter of trainer `version`: the generator takes it before its next batch.
        `path` None: the engine already holds it (the trainer set it while stopped)."""
        with self._cond:
            self._published = (version, path)
            if path is None:
                self._loaded = version
            self._cond.notify_all()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._stopping = self._finished = False
        self._thread = threading.Thread(target=self._run, name="grpo-generator", daemon=True)
        self._thread.start()

    def stop(self, *, wait: bool = True) -> None:
        """The thread ended after its batch in flight; queued batches are kept. `wait`
        False: told to start no further batch, not waited for (a later stop waits)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if wait and self._thread is not None:
            self._thread.join()
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def loaded(self) -> int | None:
        """The adapter version the engine holds (None: none loaded by the generator yet)."""
        with self._cond:
            return self._loaded

    def drop(self) -> int:
        """Discard every queued batch (the generator stopped); the groups dropped."""
        with self._cond:
            dropped = sum(len(b.groups) for b in self._ready)
            self._ready.clear()
            self._cond.notify_all()
        return dropped

    def take(self, version: int, *, max_staleness: int) -> Taken[G]:
        """The oldest queued batch at most `max_staleness` updates older than `version`,
        waiting for one; older batches are discarded and counted."""
        discarded = 0
        with self._cond:
            while True:
                began = time.monotonic()
                while not self._ready and self._error is None:
                    if self._thread is None or self._finished:
                        raise RuntimeError("the generator is stopped and holds no batch")
                    self._cond.wait()
                self.trainer_wait_s += time.monotonic() - began
                if self._error is not None:
                    raise RuntimeError("the rollout generator failed") from self._error
                batch = self._ready.popleft()
                self._cond.notify_all()
                if version - batch.version <= max_staleness:
                    return Taken(batch, discarded)
                discarded += len(batch.groups)

    def waits(self) -> tuple[float, float]:
        """(trainer, generator) seconds waited since the last call."""
        with self._cond:
            waited = (self.trainer_wait_s, self.generator_wait_s)
            self.trainer_wait_s = self.generator_wait_s = 0.0
        return waited

    # -- the generator's thread ----------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    began = time.monotonic()
                    while not self._stopping and len(self._ready) >= self.ahead:
                        self._cond.wait()
                    self.generator_wait_s += time.monotonic() - began
                    if self._stopping:
                        return
                    version, path = self._published
                    if self._loaded != version and path is not None:
                        self._load(path)  # under the lock: the file is not replaced meanwhile
                    self._loaded = version
                    number = self.next_round
                    self.next_round += 1
                groups = self._draw(number)
                with self._cond:
                    self._ready.append(Stamped(version, list(groups)))
                    self._cond.notify_all()
        except BaseException as error:  # handed to the trainer at its next take
            with self._cond:
                self._error = error
        finally:
            with self._cond:
                self._finished = True
                self._cond.notify_all()
