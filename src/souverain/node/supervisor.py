"""Keeps one engine process alive and says, truthfully, whether it can answer.

One long-lived thread owns the process: it resolves the model file, starts the engine
bound to the node's private address, and calls it ready only once it has answered a tiny
real generation with the replica secret (an HTTP route that answers proves nothing about
the first decode). When the process exits the replica is unready at once, and watchers
(`watch`, a long poll) hear of it within milliseconds. Three exits within two minutes are
a crash loop: the replica is `failed`, with a reason naming the signal or exit code and
the engine's last log lines; restarts go on with backoff, and a success clears it.

Engine processes are started with PR_SET_PDEATHSIG, so they die with the thread that
started them: if the actor's process is killed, its engine cannot outlive it.

An engine serves HTTPS with the replica's own certificate: its key and certificate are
written as 0600 files into the replica's memory-backed scratch directory (node/scratch.py)
just before the engine starts, and removed once it answers. The probe checks the engine
as the gateway does (the installation's authority, the replica's name, TLS 1.3); an engine
whose certificate is refused (expired, foreign, another replica's) or that answers in
clear is `failed` at once, with that reason, and is not restarted. The adapter and the
engine's temporary files live in the same scratch directory, swept if the actor dies.

A start is timed in steps (`start_marks`, wall clock on the node, in the status): `actor`
(the supervisor exists), `spawned` (the engine process is running), `listening` (its first
HTTP answer, often "loading"), `answered` (the probe's generation), `ready` (after the chat
template's overhead is known: measured after `ready` instead, its two requests slowed the
first real one by more than they saved; measured once per engine and model file on a node,
node/template_cache.py). While an engine starts it is probed every
50 ms: a scale-from-zero request may be waiting for it. At `ready` the engine process's CPU
time (with its children's, from /proc through psutil) is read: the CPU seconds of that
start (`start_cpu_s`), which the controller records with the start's energy.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx

from souverain.core.fleet import (
    AdapterChange,
    AdapterState,
    HostedAdapter,
    ReplicaSpec,
    ReplicaStatus,
)
from souverain.energy.sources import PowerSource, pick_source, process_cpu_seconds
from souverain.node import (
    artifacts,
    engine_http,
    hosted_adapters,
    runtime_adapters,
    scratch,
    template_cache,
)
from souverain.node.engines.base import EngineLauncher, chat_overhead_probes
from souverain.node.exits import CrashLoop, describe_exit, die_with_parent, log_tail
from souverain.node.node_dir import node_dir, open_log
from souverain.node.sealed import check_digest, decrypt_to
from souverain.node.secret import SECRET_ENV, SECRET_FD_ENV, secret_pipe

SourceFactory = Callable[[int], PowerSource]  # engine pid -> its power source

LOG_ROTATE_BYTES = 16 * 2**20
BACKOFF_MAX_S = 30.0
PROBE_EVERY_S = 0.05  # while starting: each probe is one tiny request to a local process


def _plain(error: BaseException) -> str:
    """An exception in words, without Python's internals."""
    text = str(error).splitlines()[0][:300] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class EngineSupervisor:
    def __init__(
        self,
        spec: ReplicaSpec,
        launcher: EngineLauncher,
        *,
        host: str,
        node_id: str | None,
        start_timeout_s: float = 600.0,
        log_dir: Path | None = None,
        gpu_indices: Sequence[int] = (),
        power: SourceFactory | None = None,
        crash_loop: CrashLoop | None = None,
    ) -> None:
        self._spec = spec
        self._launcher = launcher
        self._host = host
        self._node_id = node_id
        self._start_timeout_s = start_timeout_s
        self._log_dir = log_dir
        self._log_path = (log_dir or Path(".")) / f"{spec.replica_id}.log"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # Versions are wall-clock nanoseconds, so a restarted actor's status is newer than
        # anything its previous incarnation reported.
        self._version = time.time_ns()
        self._state = "starting"
        self._url: str | None = None
        self._error = ""
        self._restarts = 0
        self._crashes = crash_loop or CrashLoop()
        self._process: subprocess.Popen[bytes] | None = None
        self._log_start = 0  # where the current engine run's output begins in its log
        self._prompt_overhead: tuple[int, int] | None = None
        self._adapters: tuple[AdapterState, ...] = ()  # a shared replica's, once checked
        self._changing = threading.Lock()  # one change of adapters at a time
        self._runs = 0  # which run of the engine serves: a change commits to its own run only
        self._runtime_load: bool | None = None  # whether the engine loads adapters as it runs
        self._model_path: Path | None = None
        self._power = power or self._default_power(gpu_indices, spec.watts_per_core)
        self._source: PowerSource | None = None
        self._energy_base = 0.0  # energy of engine processes that have exited
        self._energy_source = "estimate"
        self._untrusted = ""  # why the engine's TLS was refused, if it was
        self._marks: dict[str, float] = {"actor": time.time()}
        self._start_cpu_s: float | None = None  # the last start's, read at `ready`
        self._scratch = scratch.claim("replica", spec.replica_id)
        self._thread = threading.Thread(
            target=self._run, name=f"engine-{spec.replica_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    @staticmethod
    def _default_power(gpu_indices: Sequence[int], watts_per_core: float) -> SourceFactory:
        def factory(pid: int) -> PowerSource:
            return pick_source(
                gpu_indices=gpu_indices,
                cpu_seconds=lambda: process_cpu_seconds(pid),
                watts_per_core=watts_per_core,
            )

        return factory

    def energy_joules(self) -> float:
        """Cumulative energy of this replica's engine processes."""
        with self._lock:
            source, base = self._source, self._energy_base
        return base + (source.energy_joules() if source is not None else 0.0)

    def status(self) -> ReplicaStatus:
        measured_at = datetime.now(UTC)
        energy = self.energy_joules()
        with self._lock:
            return ReplicaStatus(
                state=self._state,
                url=self._url,
                node_id=self._node_id,
                restarts=self._restarts,
                error=self._error,
                energy_j=energy,
                energy_source=self._energy_source,
                version=self._version,
                prompt_overhead=self._prompt_overhead,
                runtime=self._launcher.runtime,
                slots=self._launcher.slots(self._spec),
                measured_at=measured_at,
                start_marks=tuple(self._marks.items()),
                adapters=self._adapters,
                start_cpu_s=self._start_cpu_s,
            )

    def watch(self, version: int, timeout_s: float) -> ReplicaStatus:
        """Wait until the status is newer than `version` (or `timeout_s` passes); return it."""
        with self._changed:
            self._changed.wait_for(lambda: self._version > version, timeout=timeout_s)
        return self.status()

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        self._terminate(timeout_s)
        self._thread.join(timeout=timeout_s)
        scratch.release(self._scratch)  # the adapter, the TLS key, the engine's temporary files
        self._set("stopped")

    def _set(self, state: str, *, url: str | None = None, error: str = "") -> None:
        with self._changed:
            if (self._state, self._url, self._error) == (state, url, error):
                return
            self._state, self._url, self._error = state, url, error
            self._version = max(self._version + 1, time.time_ns())
            self._changed.notify_all()

    def _run(self) -> None:
        """The supervisor thread. It never dies silently: whatever goes wrong becomes
        `failed` with its reason, where a person looks."""
        try:
            self._supervise()
        except Exception as error:  # a bug or a bad argument must not leave "starting"
            self._set("failed", error=f"the engine supervisor stopped: {_plain(error)}")

    def _supervise(self) -> None:
        try:
            model_path = artifacts.resolve(
                self._spec.artifact_uri,
                sha256=self._spec.artifact_sha256,
                roots=self._spec.model_roots,
            )
        except artifacts.ArtifactError as error:
            self._set("failed", error=str(error))
            return
        self._model_path = model_path
        if self._spec.adapter is not None:
            try:
                self._spec = replace(self._spec, adapter_path=str(self._decrypt_adapter()))
            except Exception as error:  # a key erased, an object gone or tampered with
                self._set("failed", error=f"the model's adapter cannot be read: {_plain(error)}")
                return
        if self._spec.adapters:  # a refused one is left out; the replica serves the others
            loaded, states = hosted_adapters.prepare(
                self._spec.adapters, scratch=self._scratch, base=model_path,
                runtime=self._launcher.runtime,
            )  # fmt: skip
            with self._lock:
                self._spec, self._adapters = replace(self._spec, adapters=loaded), states
        backoff = 1.0
        while not self._stop.is_set():
            started = time.monotonic()
            reason = self._serve_once(model_path)
            if self._stop.is_set():
                break
            if self._untrusted:  # a restart would present the same certificate
                self._set("failed", error=self._untrusted)
                break
            self._exited(reason)
            if time.monotonic() - started > 60:
                backoff = 1.0
            self._stop.wait(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    def change_adapters(self, wanted: tuple[HostedAdapter, ...]) -> AdapterChange:
        """Hold `wanted` from now on: load what the replica lacks and unload what it holds
        beyond it, while its engine serves (node/runtime_adapters.py). `runtime_load` is
        False when its engine loads adapters at start only; raises when it is not serving
        or its engine restarted meanwhile. A change that stopped part way is recorded as
        far as it went, and that is the answer (the controller asks again next round)."""
        with self._changing:
            with self._lock:
                url, state, model_path, run = self._url, self._state, self._model_path, self._runs
            if self._launcher.runtime not in hosted_adapters.RUNTIMES:
                return AdapterChange(runtime_load=False)
            if state != "ready" or url is None or model_path is None:
                raise RuntimeError(f"the engine is not serving ({state})")
            headers = {"Authorization": f"Bearer {self._spec.secret}"}
            with self._client(httpx.Timeout(60.0, connect=5.0)) as client:
                engine = runtime_adapters.EngineAdapters(
                    lambda path, body: self._post(client, url + path, json=body, headers=headers)
                )
                if self._runtime_load is None:
                    self._runtime_load = engine.supported()
                if not self._runtime_load:
                    return AdapterChange(runtime_load=False)
                done = runtime_adapters.change(
                    engine, self._adapters, self._spec.adapters, wanted,
                    scratch=self._scratch, base=model_path,
                )  # fmt: skip
            self._commit(done, run)
            return AdapterChange(True, done.states, done.kept)

    def _commit(self, done: runtime_adapters.Changed, run: int) -> None:
        """Record `done` if the engine run it changed still serves, and only then delete the
        unloaded adapters' clear copies. A run that ended meanwhile took the spec as it was,
        and the next one starts with the files that spec names: those are kept, and the
        ones `done` loaded into the ended run are deleted instead."""
        with self._changed:
            current = self._runs == run
            if current:
                self._adapters, self._spec = done.states, replace(self._spec, adapters=done.loaded)
                self._version = max(self._version + 1, time.time_ns())
                self._changed.notify_all()
            named = {adapter.path for adapter in self._spec.adapters}
        runtime_adapters.discard(done, committed=current, named=named)
        if not current:
            raise RuntimeError("the engine restarted during the change of its adapters")

    def _decrypt_adapter(self) -> Path:
        """The fine-tuned model's adapter, in clear in this node's private directory only
        for as long as the replica runs."""
        assert self._spec.adapter is not None
        path = self._scratch / "adapter.gguf"
        path.unlink(missing_ok=True)
        check_digest(self._spec.adapter)
        decrypt_to([self._spec.adapter], path)
        return path

    def _exited(self, reason: str) -> None:
        """Unready at once; `failed` when the exits make a crash loop."""
        self._crashes.record(time.monotonic())
        with self._lock:
            self._restarts += 1
            failed = self._state == "failed"
        if self._crashes.looping or failed:
            self._set("failed", error=f"crash loop: {reason}")
        else:
            self._set("starting", error=reason)

    def _serve_once(self, model_path: Path) -> str:
        """Run the engine until it exits; returns why it did."""
        port = engine_http.free_port(self._host)
        self._rotate_log()
        tls = engine_http.tls_files(self._spec, self._scratch)
        url = engine_http.url_for(self._host, port, tls=tls is not None)
        secret = secret_pipe(self._spec.secret)
        log = open_log(self._log_path)
        with self._lock:  # a new run numbers the adapters loaded at run time anew
            self._adapters = runtime_adapters.renumbered(self._adapters, self._spec.adapters)
            self._runs += 1  # a change begun in the previous run may no longer commit
            spec = self._spec  # its `--lora`s: the files on disk now
        try:
            argv = self._launcher.command(
                spec=spec, model_path=model_path, host=self._host, port=port,
                secret_fd=secret, tls=tls,
            )  # fmt: skip
            env = {**os.environ, **self._launcher.environment(spec=self._spec)}
            env[SECRET_FD_ENV] = str(secret)
            env["TMPDIR"] = str(self._scratch)  # the engine's scratch is in memory too
            env.pop(SECRET_ENV, None)
            self._log_start = os.lseek(log, 0, os.SEEK_END)
            process = subprocess.Popen(
                argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(secret,),
                preexec_fn=die_with_parent,
            )
        finally:
            os.close(log)
            os.close(secret)
        self._process = process
        self._mark("spawned")
        self._attach_power(process.pid)
        not_ready = self._wait_ready(url, process)
        if tls is not None:  # loaded by the engine, or of no more use
            tls.key.unlink(missing_ok=True)
            tls.certificate.unlink(missing_ok=True)
        if not_ready is not None:
            self._terminate(5.0)
            return not_ready
        self._crashes.clear()
        self._measure_template(url, argv, model_path)
        cpu_s = process_cpu_seconds(process.pid)  # since its spawn: this start's alone
        with self._lock:
            self._start_cpu_s = cpu_s if cpu_s > 0 else None  # 0: the node could not read it
        self._mark("ready")
        self._set("ready", url=url)
        process.wait()
        return self._exit_reason(process.returncode)

    def _client(self, timeout: httpx.Timeout | float) -> httpx.Client:
        return engine_http.engine_client(self._spec, timeout)

    def _post(self, client: httpx.Client, url: str, **kwargs: object) -> httpx.Response:
        return engine_http.post(self._spec, client, url, **kwargs)

    def _measure_template(self, url: str, argv: Sequence[str], model_path: Path) -> None:
        """How many prompt tokens the chat template adds, for admission's bound on what a
        request may cost (an empty message is far from free: a default system prompt).
        Measured once per engine and model file on this node, then read from the node's
        cache (its two requests are a tenth of a start from zero)."""
        if not self._launcher.measures_chat_template or self._prompt_overhead is not None:
            return
        key = template_cache.key_of(self._launcher, self._spec, argv, model_path)
        known = template_cache.known(key)
        if known is not None:
            with self._lock:
                self._prompt_overhead = known
            return
        headers = {"Authorization": f"Bearer {self._spec.secret}"}
        counts = []
        with (
            contextlib.suppress(httpx.HTTPError, ValueError, KeyError, TypeError),
            self._client(60.0) as client,
        ):
            for body in chat_overhead_probes(self._spec.model_name):
                answer = self._post(
                    client, url + "/v1/chat/completions", json=body, headers=headers
                )
                counts.append(int(answer.json()["usage"]["prompt_tokens"]))
        if len(counts) == 2:
            one, three = counts
            per_message = max(1, (three - one + 1) // 2)
            with self._lock:
                self._prompt_overhead = (one, per_message)
            template_cache.remember(key, (one, per_message))

    def _exit_reason(self, code: int | None) -> str:
        return describe_exit(
            code,
            build_hint=self._launcher.build_hint,
            log_tail=log_tail(self._log_path, since=self._log_start),
        )

    def _rotate_log(self) -> None:
        if self._log_dir is None:  # engine logs live in the node's private directory
            self._log_path = node_dir("engines") / self._log_path.name
        else:
            self._log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            if self._log_path.stat().st_size > LOG_ROTATE_BYTES:
                self._log_path.replace(self._log_path.with_suffix(".log.1"))

    def _attach_power(self, pid: int) -> None:
        """Measure the new engine process, keeping what the previous one consumed."""
        previous = self.energy_joules()
        source = self._power(pid)
        with self._lock:
            self._energy_base, self._source, self._energy_source = previous, source, source.name

    def _wait_ready(self, url: str, process: subprocess.Popen[bytes]) -> str | None:
        """None once the engine answered the probe; else why it never did."""
        probe = self._launcher.probe(spec=self._spec)
        headers = {
            "Authorization": f"Bearer {self._spec.secret}",
            "Content-Type": "application/json",
        }
        content = json.dumps(probe.body).encode()
        deadline = time.monotonic() + self._start_timeout_s
        with self._client(httpx.Timeout(60.0, connect=2.0)) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if process.poll() is not None:
                    return self._exit_reason(process.returncode)
                try:
                    answer = self._post(client, url + probe.path, content=content, headers=headers)
                    self._mark("listening", first=True)
                    if answer.status_code == 200 and probe.answered(answer.json()):
                        self._mark("answered")
                        return None
                except (httpx.HTTPError, ValueError) as error:
                    if refused := engine_http.tls_refusal(error):
                        self._untrusted = refused
                        return refused
                self._stop.wait(PROBE_EVERY_S)
        if process.poll() is not None:
            return self._exit_reason(process.returncode)
        return f"engine did not answer a generation within {self._start_timeout_s:.0f}s"

    def _mark(self, step: str, *, first: bool = False) -> None:
        """When `step` of this start happened (`first`: only its first time this start)."""
        with self._lock:
            if step == "spawned":  # a new start: the previous one's later steps are void
                self._marks = {k: v for k, v in self._marks.items() if k == "actor"}
                self._start_cpu_s = None
            if not (first and step in self._marks):
                self._marks[step] = time.time()

    def _terminate(self, timeout_s: float) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout_s)
