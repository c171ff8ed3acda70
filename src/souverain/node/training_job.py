"""One fine-tuning job on one node: its data in clear only here, its process supervised.

    prepare   decrypt the training and validation files (and the checkpoint to resume
              from) into the job's private memory-backed directory on this node
              (node/scratch.py: swept if this actor dies without cleaning up)
    run       `python -m souverain.training.sft SPEC` (or `.grpo`, for reinforcement) in its
              own process group; follow its
              progress file; seal every checkpoint (a tar of the trainer's directory) and
              the results into the job's output store as soon as they appear
    restart   a worker that dies (a crash, the OOM killer, a SIGKILL) is started again from
              the last checkpoint, up to `MAX_ATTEMPTS` times
    end       the job directory, with every decrypted byte, is deleted

The worker is started with PR_SET_PDEATHSIG: if the actor is killed, its worker dies with
it instead of training on, orphaned, over the job's plaintext.

Events are the recipe's progress lines (numbers, never training text), numbered; the
controller asks for those after the last one it has. Pause = SIGTERM (the recipe saves a
checkpoint and stops); cancel = SIGKILL of the process group. A pause may carry an energy
limit (the job's energy budget ran out: the limit is what the job holds): a worker still
running when its energy reaches it is stopped there with SIGKILL, and the job is paused at
its last sealed checkpoint, so a slow step or save never spends past the reservation.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from souverain.core.fleet import (
    SealedObject,
    TrainingSpec,
    TrainingStatus,
)
from souverain.core.fleet import (
    training_object_id as object_id,
)
from souverain.core.fleet import (
    training_object_key as object_key,
)
from souverain.energy.sources import pick_source, process_cpu_seconds
from souverain.node import scratch
from souverain.node.artifacts import ArtifactError, resolve
from souverain.node.exits import describe_exit, die_with_parent
from souverain.node.node_dir import open_log
from souverain.node.sealed import decrypt_to
from souverain.storage.crypto import Sealer
from souverain.storage.stores import store_from_uri
from souverain.training.collapse import REWARD_COLLAPSED
from souverain.training.sft import INVALID_DATA

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
TRAINING_NICENESS = 10  # serving first: a training worker yields the CPU to the engines
RECIPES = {
    "supervised": "souverain.training.sft",
    "reinforcement": "souverain.training.grpo",
    "evaluation": "souverain.training.grpo",  # with no step: evaluates once
}
POLL_S = 0.5
READ_CHUNK = 1 << 20


class TrainingSupervisor:
    def __init__(self, spec: TrainingSpec, *, node_id: str, gpu_indices: list[int]) -> None:
        self._spec = spec
        self._node_id = node_id
        self._gpus = gpu_indices
        self._lock = threading.Lock()
        self._state = "starting"
        self._error = ""
        self._error_code = ""
        self._events: list[dict[str, Any]] = []
        self._sealed: list[SealedObject] = []
        self._step = spec.resume_step
        self._total = int(spec.hyperparameters.get("max_steps", 0))
        self._tokens = 0
        self._tokens_per_s: float | None = None
        self._loss: float | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._stop_asked: str | None = None  # "pause" | "cancel"
        self._energy_limit: float | None = None  # a pause's: SIGKILL once energy reaches it
        self._halted = False  # stopped at the energy limit, not at a checkpoint
        self._cpu_before = 0.0  # CPU seconds of the workers that ended
        self._cpu_live = 0.0  # of the one running, as last read
        self._energy_before = 0.0
        self._source: Any = None
        self._started = time.monotonic()
        self._attempt = spec.attempt
        self._dir = scratch.claim("training", spec.job_id)
        self._thread = threading.Thread(target=self._run, name=f"train-{spec.job_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    # -- what the controller sees -------------------------------------------------------

    def status(self, after_seq: int) -> TrainingStatus:
        with self._lock:
            events = tuple(e for e in self._events if e["seq"] > after_seq)
            return TrainingStatus(
                state=self._state,
                node_id=self._node_id,
                step=self._step,
                total_steps=self._total,
                tokens=self._tokens,
                tokens_per_s=self._tokens_per_s,
                train_loss=self._loss,
                error=self._error,
                error_code=self._error_code,
                events=events,
                event_seq=len(self._events),
                sealed=tuple(self._sealed),
                energy_j=self._energy(),
                energy_source=getattr(self._source, "name", "estimate"),
                cpu_seconds=self._cpu(),
                wall_s=round(time.monotonic() - self._started, 2),
                attempt=self._attempt,
            )

    def pause(self, energy_limit_j: float | None = None) -> None:
        if energy_limit_j is not None:
            with self._lock:
                held = self._energy_limit
                self._energy_limit = energy_limit_j if held is None else min(held, energy_limit_j)
        self._ask("pause", signal.SIGTERM)

    def cancel(self) -> None:
        self._ask("cancel", signal.SIGKILL)

    def _ask(self, what: str, sig: signal.Signals) -> None:
        with self._lock:
            self._stop_asked = self._stop_asked or what
            if self._state in ("starting", "validating", "running"):
                self._state = "pausing" if what == "pause" else "cancelling"
            process = self._process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)

    def worker_pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    # -- the job ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._prepare()
            outcome = self._train()
        except ArtifactError as error:
            outcome = ("failed", f"the base model is not usable on this node: {error}", "base")
        except Exception as error:  # the job fails with its cause, never silently
            log.exception("training job %s failed", self._spec.job_id)
            outcome = ("failed", f"{type(error).__name__}: {error}", "internal")
        finally:
            shutil.rmtree(self._dir, ignore_errors=True)  # every decrypted byte goes
        state, message, code = outcome
        with self._lock:
            self._state, self._error, self._error_code = state, message, code

    def _prepare(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir.mkdir(mode=0o700)
        data = self._dir / "data"
        data.mkdir(mode=0o700)
        decrypt_to(self._spec.training, data / "train.jsonl", join_lines=True)
        if self._spec.validation is not None:
            decrypt_to((self._spec.validation,), data / "valid.jsonl", join_lines=True)
        if self._spec.init_adapter is not None:  # the cold start to carry on from
            archive = self._dir / "init.tar"
            decrypt_to((self._spec.init_adapter,), archive)
            with tarfile.open(archive) as tar:
                tar.extractall(self._dir / "init", filter="data")
            archive.unlink()
        if self._spec.resume is not None:
            archive = self._dir / "resume.tar"
            decrypt_to((self._spec.resume,), archive)
            with tarfile.open(archive) as tar:
                tar.extractall(self._dir / "out", filter="data")
            archive.unlink()
            self._event("resumed", step=self._spec.resume_step)

    def _train(self) -> tuple[str, str, str]:
        spec = self._spec
        base = resolve(spec.base_artifact_uri, sha256=spec.base_artifact_sha256,
                       roots=spec.model_roots)  # fmt: skip
        out = self._dir / "out"
        out.mkdir(mode=0o700, exist_ok=True)
        attempts_left = MAX_ATTEMPTS
        while True:
            resume = _latest_checkpoint(out)
            recipe = {
                "base": {"path": str(base.parent), "gguf_file": base.name}
                if base.is_file()
                else {"path": str(base), "gguf_file": None},
                "train": str(self._dir / "data" / "train.jsonl"),
                "valid": str(self._dir / "data" / "valid.jsonl") if spec.validation else None,
                "output_dir": str(out),
                "resume_from": str(resume) if resume else None,
                "hyperparameters": spec.hyperparameters,
                "threads": spec.threads,
                "grader": spec.grader,
                "init_adapter": str(self._dir / "init" / "adapter")
                if spec.init_adapter is not None
                else None,
            }
            (self._dir / "spec.json").write_text(json.dumps(recipe))
            code = self._run_worker(out)
            with self._lock:
                asked = self._stop_asked
            if asked == "cancel":
                return "cancelled", "", ""
            if code == INVALID_DATA:
                return "failed", self._invalid_message(), "invalid_training_file"
            if code == REWARD_COLLAPSED:
                return "failed", self._message_of("collapsed"), "reward_collapsed"
            if code == 0:
                return ("paused", "", "") if self._last("paused") else self._finish(out)
            if asked == "pause" and self._halted:
                self._event("halted", energy_j=round(self._energy(), 1))
                return "paused", "", ""
            if asked == "pause" and code == -signal.SIGTERM:
                # asked to pause before its recipe took the request (still loading the model
                # or preparing the data): it stopped, and carries on from its last checkpoint
                return "paused", "", ""
            attempts_left -= 1
            # The exit code or signal only: the worker's log stays on the node (and goes with
            # the job directory), since a traceback may quote training data.
            reason = describe_exit(code, build_hint="").replace("engine", "worker", 1)
            if attempts_left <= 0 or asked == "pause":
                deaths = MAX_ATTEMPTS - attempts_left
                times = "once" if deaths == 1 else f"{deaths} times"
                return "failed", f"the training worker died {times}: {reason}", "worker"
            self._attempt += 1
            self._event("restart", reason=reason, attempt=self._attempt)

    def _run_worker(self, out: Path) -> int:
        log_fd = open_log(self._dir / "train.log")
        env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
               "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(self._spec.threads)}  # fmt: skip
        if not self._gpus:
            env["CUDA_VISIBLE_DEVICES"] = ""
        process = subprocess.Popen(
            [sys.executable, "-m", RECIPES[self._spec.method], str(self._dir / "spec.json")],
            stdout=log_fd,
            stderr=log_fd,
            env=env,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        os.close(log_fd)
        lower_priority(process.pid)
        with self._lock:
            self._process = process
            self._cpu_live = 0.0
            self._source = pick_source(
                gpu_indices=self._gpus,
                cpu_seconds=lambda: self._cpu_live,  # still readable once the worker ended
                watts_per_core=self._spec.watts_per_core,
            )
            if self._state == "starting":
                self._state = "validating"
            asked = self._stop_asked
        if asked:  # asked before the worker existed
            os.killpg(process.pid, signal.SIGKILL if asked == "cancel" else signal.SIGTERM)
        progress = out / "progress.jsonl"
        offset = 0
        while True:
            code = process.poll()
            offset = self._follow(progress, offset)
            if code is not None:
                self._follow(progress, offset)
                with self._lock:
                    self._energy_before = self._energy()
                    self._cpu_before, self._cpu_live = self._cpu_before + self._cpu_live, 0.0
                    self._source = None
                return code
            self._cpu_live = max(self._cpu_live, process_cpu_seconds(process.pid))
            self._halt_at_limit(process)
            time.sleep(POLL_S)

    def _halt_at_limit(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            limit = self._energy_limit
        if limit is None or self._halted or self._energy() < limit:
            return
        log.warning("training job %s reached its energy limit while pausing: stopped",
                    self._spec.job_id)  # fmt: skip
        self._halted = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    def _follow(self, progress: Path, offset: int) -> int:
        try:
            with progress.open("rb") as handle:
                handle.seek(offset)
                data = handle.read()
        except FileNotFoundError:
            return offset
        end = data.rfind(b"\n")
        if end < 0:
            return offset
        for line in data[: end + 1].splitlines():
            with contextlib.suppress(ValueError):
                self._on_progress(json.loads(line))
        return offset + end + 1

    def _on_progress(self, entry: dict[str, Any]) -> None:
        kind = entry.get("type")
        if kind == "step":
            with self._lock:
                self._state = "running" if self._state == "validating" else self._state
                self._step, self._total = int(entry["step"]), int(entry["total"])
                self._tokens, self._loss = int(entry["tokens"]), float(entry["loss"])
                self._tokens_per_s = entry.get("tokens_per_s") or self._tokens_per_s
        elif kind == "checkpoint":
            sealed = self._seal_dir(Path(entry["path"]), int(entry["step"]), entry["metrics"])
            entry = {**entry, "object": sealed.object_key}
            entry.pop("path", None)
        elif kind == "done":
            self._done = entry
        self._event(str(kind), **{k: v for k, v in entry.items() if k not in ("type", "path")})

    def _finish(self, out: Path) -> tuple[str, str, str]:
        done = self._last("done")
        if done is None:
            return "failed", "the training worker ended without its results", "worker"
        step, metrics = int(done["step"]), dict(done.get("metrics") or {})
        if self._spec.method == "evaluation":  # nothing trained, nothing to seal
            return "succeeded", "", ""
        if (out / "adapter.gguf").exists():
            self._seal_file(out / "adapter.gguf", "adapter.gguf", step, metrics)
        archive = self._dir / "adapter-peft.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(out / "adapter", arcname="adapter")
        self._seal_file(archive, "adapter-peft.tar", step, metrics)
        with self._lock:
            self._step = step
            self._tokens = int(done.get("tokens") or self._tokens)
        return "succeeded", "", ""

    def _seal_dir(self, path: Path, step: int, metrics: dict[str, Any]) -> SealedObject:
        archive = self._dir / f"checkpoint-{step}.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(path, arcname=path.name)
        try:
            return self._seal_file(archive, f"checkpoint-{step}", step, metrics)
        finally:
            archive.unlink(missing_ok=True)

    def _seal_file(self, path: Path, name: str, step: int, metrics: dict[str, Any]) -> SealedObject:
        spec = self._spec
        key, oid = object_key(spec.job_id, name), object_id(spec.job_id, name)
        digest = hashlib.sha256()
        size = 0

        async def sealed() -> AsyncIterator[bytes]:
            nonlocal size
            sealer = Sealer(spec.output_key, oid)
            yield sealer.header
            with path.open("rb") as handle:
                while chunk := handle.read(READ_CHUNK):
                    digest.update(chunk)
                    size += len(chunk)
                    for piece in sealer.feed(chunk):
                        yield piece
            yield sealer.finish()

        asyncio.run(store_from_uri(spec.output_store_uri).write(key, sealed()))
        entry = SealedObject(name, key, oid, digest.hexdigest(), size, step, metrics)
        with self._lock:
            self._sealed.append(entry)
        return entry

    # -- small parts --------------------------------------------------------------------

    def _event(self, kind: str, **data: Any) -> None:
        with self._lock:
            self._events.append(
                {"seq": len(self._events) + 1, "type": kind, "at": time.time(), **data}
            )

    def _last(self, kind: str) -> dict[str, Any] | None:
        with self._lock:
            for event in reversed(self._events):
                if event["type"] == kind:
                    return dict(event)
        return None

    def _invalid_message(self) -> str:
        invalid = self._last("invalid")
        return str(invalid["message"]) if invalid else "the training data is invalid"

    def _message_of(self, kind: str) -> str:
        said = self._last(kind)
        return str(said["message"]) if said else f"the training worker stopped ({kind})"

    def _cpu(self) -> float:
        return round(self._cpu_before + self._cpu_live, 3)

    def _energy(self) -> float:
        source = self._source
        return self._energy_before + (source.energy_joules() if source is not None else 0.0)


def lower_priority(pid: int) -> None:
    """A training worker yields the CPU to the model engines of its node: niceness
    TRAINING_NICENESS, or its parent's if that is already lower in priority (a process
    may always lower its children, never raise them without privilege)."""
    with contextlib.suppress(OSError):  # the worker may already have exited
        os.setpriority(
            os.PRIO_PROCESS, pid, max(TRAINING_NICENESS, os.getpriority(os.PRIO_PROCESS, 0))
        )


def _latest_checkpoint(out: Path) -> Path | None:
    found = [
        (int(p.name.split("-")[1]), p)
        for p in out.glob("checkpoint-*")
        if p.is_dir() and p.name.split("-")[1].isdigit() and (p / "trainer_state.json").exists()
    ]
    return max(found)[1] if found else None
