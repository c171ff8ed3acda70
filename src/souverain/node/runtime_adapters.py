"""Adapters loaded into, and unloaded from, a shared replica's engine while it serves.

Without this a new fine-tuned model on a shared replica costs a whole engine start (the
controller replaces the replica, rolling), and on a full cluster the replacement cannot be
placed at all. llama-server as souverain builds it (scripts/patches/
llama-server-runtime-lora.patch) loads an adapter from a path (`POST /lora-adapters/load`,
answering its id) and unloads one (`POST /lora-adapters/unload`), in its serving loop
between two decoding steps, so the base model and the other adapters serve on:

- ids stay stable: a loaded adapter gets the next id and keeps it, an unloaded one's id is
  never given again in that run of the engine, and a request naming an id not loaded now is
  refused rather than served by the base model;
- an adapter a running request applies is not freed under it: the engine refuses the
  unload (503) and the node asks again for a moment, then reports it `kept`;
- a file the engine refuses (llama.cpp returns no adapter) changes nothing in the engine.

Every file is checked exactly as at start (node/hosted_adapters.py: sha256 of the
plaintext, GGUF LoRA of the base) before the engine sees it, and an unloaded adapter's
clear copy is deleted from the node's scratch as soon as the replica's spec (what a
restart of the engine passes as `--lora`) no longer names it. Whatever the engine did
before a call fails is recorded, so the spec always names the files on disk. An engine
built without the patch answers 404 on these routes: `supported` is False and the
controller falls back to replacing the replica.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence, Set
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from souverain.core.fleet import ADAPTER_UNAVAILABLE, AdapterState, HostedAdapter
from souverain.node import hosted_adapters

LOAD, UNLOAD = "/lora-adapters/load", "/lora-adapters/unload"
UNLOAD_WAIT_S = 2.0  # how long an unload waits for the running requests that use it
UNLOAD_RETRY_S = 0.1

log = logging.getLogger(__name__)

Post = Callable[[str, dict[str, object]], httpx.Response]  # engine path, JSON body -> answer


@dataclass(frozen=True)
class EngineAdapters:
    """The engine's adapter routes, called with the replica secret like every other."""

    post: Post

    def supported(self) -> bool:
        """Whether the engine loads adapters at run time: the patched one refuses an empty
        body (400); one built without the patch has no such route (404)."""
        return self.post(LOAD, {}).status_code == 400

    def load(self, path: Path) -> int | None:
        """The id the engine gave the adapter at `path`; None when it refused the file."""
        answer = self.post(LOAD, {"path": str(path)})
        if answer.status_code == 400:
            log.warning("the engine refused the adapter at %s: %s", path, answer.text[:300])
            return None
        answer.raise_for_status()
        return int(answer.json()["id"])

    def unload(self, lora_id: int, *, wait_s: float = UNLOAD_WAIT_S) -> bool:
        """Unload adapter `lora_id`; False while a running request still applies it."""
        deadline = time.monotonic() + wait_s
        while True:
            answer = self.post(UNLOAD, {"id": lora_id})
            if answer.status_code in (200, 404):  # 404: not loaded (any more)
                return True
            if answer.status_code != 503:
                answer.raise_for_status()
            if time.monotonic() >= deadline:
                return False
            time.sleep(UNLOAD_RETRY_S)


@dataclass(frozen=True)
class Changed:
    """A replica's adapters after a change: what the engine holds after the last of its
    calls that succeeded, even when a later one failed (`error`)."""

    states: tuple[AdapterState, ...]  # every adapter it holds, loaded or refused, by model id
    loaded: tuple[HostedAdapter, ...]  # those in the engine, with their clear paths, by id
    kept: tuple[str, ...]  # models still in the engine that should have left it
    removed: tuple[Path, ...] = ()  # clear copies of the unloaded ones, still on disk
    error: str = ""  # why the change stopped part way ("" when it went through)


def change(
    engine: EngineAdapters, held: Sequence[AdapterState], loaded: Sequence[HostedAdapter],
    wanted: Sequence[HostedAdapter], *, scratch: Path, base: Path,
) -> Changed:  # fmt: skip
    """Unload what `held` has and `wanted` lacks, then load what `wanted` has and `held`
    lacks, each checked first. A refused adapter is held with its reason, like at start, so
    it is not tried again until it leaves the wanted set, unless its store could not be
    read (`ADAPTER_UNAVAILABLE`: tried again once per change). An unloaded adapter's clear
    copy is not deleted here but listed in `removed`: the caller deletes it once its spec no
    longer names the file (a restart would pass it to the engine). An engine call that
    raises (the engine died, timed out, answered an error) ends the change there, and the
    result says what was done before it."""
    work = _Work(held, loaded)
    wanted_ids = {adapter.model_id for adapter in wanted}
    try:
        for state in held:
            if state.model_id not in wanted_ids:
                work.unload(engine, state)
        for adapter in wanted:
            work.load(engine, adapter, scratch=scratch, base=base)
    except Exception as error:
        log.warning("the change of adapters stopped part way: %s", hosted_adapters.plain(error))
        return work.result(error=hosted_adapters.plain(error))
    return work.result()


class _Work:
    """A change in progress: what the engine holds after each call that succeeded."""

    def __init__(self, held: Sequence[AdapterState], loaded: Sequence[HostedAdapter]) -> None:
        self.states = {state.model_id: state for state in held}
        self.files = {adapter.model_id: adapter for adapter in loaded}
        self.kept: list[str] = []
        self.removed: list[Path] = []

    def unload(self, engine: EngineAdapters, state: AdapterState) -> None:
        if state.lora_id is not None and not engine.unload(state.lora_id):
            self.kept.append(state.model_id)
            return
        del self.states[state.model_id]
        gone = self.files.pop(state.model_id, None)
        if gone is not None and gone.path:
            self.removed.append(Path(gone.path))

    def load(
        self, engine: EngineAdapters, adapter: HostedAdapter, *, scratch: Path, base: Path
    ) -> None:
        held = self.states.get(adapter.model_id)
        if held is not None and held.error != ADAPTER_UNAVAILABLE:
            return
        path, refused = hosted_adapters.check(adapter, scratch / _file_name(adapter), base)
        try:
            lora_id = None if refused else engine.load(path)
        except Exception:
            path.unlink(missing_ok=True)  # in no spec: no run of the engine will load it
            raise
        if lora_id is None:
            path.unlink(missing_ok=True)
            error = refused or hosted_adapters.NOT_FOR_BASE
            self.states[adapter.model_id] = AdapterState(adapter.model_id, error)
        else:
            self.states[adapter.model_id] = AdapterState(adapter.model_id, lora_id=lora_id)
            self.files[adapter.model_id] = replace(adapter, path=str(path))

    def result(self, *, error: str = "") -> Changed:
        states = self.states
        return Changed(
            states=tuple(sorted(states.values(), key=lambda s: s.model_id)),
            loaded=tuple(
                sorted(self.files.values(), key=lambda a: states[a.model_id].lora_id or 0)
            ),
            kept=tuple(self.kept),
            removed=tuple(self.removed),
            error=error,
        )


def renumbered(
    states: Sequence[AdapterState], loaded: Sequence[HostedAdapter]
) -> tuple[AdapterState, ...]:
    """The states as a new run of the engine numbers them: its `--lora`s in order."""
    ids = {adapter.model_id: index for index, adapter in enumerate(loaded)}
    return tuple(
        state if state.error else replace(state, lora_id=ids.get(state.model_id))
        for state in states
    )


def discard(done: Changed, *, committed: bool, named: Set[str | None]) -> None:
    """Delete the clear copies no run of the engine will read: once `done` is recorded,
    those of the adapters it unloaded; when the run it changed ended first (the next run
    starts with the files the spec names, `named`), those it loaded that are not named."""
    if committed:
        for path in done.removed:
            path.unlink(missing_ok=True)
        return
    for adapter in done.loaded:
        if adapter.path and adapter.path not in named:
            Path(adapter.path).unlink(missing_ok=True)


def _file_name(adapter: HostedAdapter) -> str:
    """A name of its own in the replica's scratch (a model id is not a file name)."""
    return f"adapter-{hashlib.sha256(adapter.model_id.encode()).hexdigest()[:16]}.gguf"
