"""The engine supervisor with real engine processes (the stand-in engine, run as a process
of its own): ready only after a real generation, unready the moment the process exits, a
crash loop reported with the signal and the engine's last words, and recovery."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from souverain.core.fleet import ReplicaSpec
from souverain.core.ids import new_id
from souverain.node.engines.stand_in import StandInLauncher
from souverain.node.exits import CrashLoop, describe_exit, log_tail
from souverain.node.supervisor import EngineSupervisor

pytestmark = pytest.mark.slow


def spec(**engine_args: object) -> ReplicaSpec:
    return ReplicaSpec(
        replica_id=new_id("rep"),
        deployment_id="dep_test",
        model_name="stand-in",
        engine="stand-in",
        artifact_uri="builtin://smollm2-135m-instruct",
        artifact_sha256=None,
        secret="s3cret-for-this-replica",
        datacenter_id="local",
        cpus=0.1,
        gpus=0,
        threads=1,
        context_length=512,
        engine_args=dict(engine_args),
    )


@pytest.fixture
def supervised(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[EngineSupervisor]:
    args = getattr(request, "param", {})
    supervisor = EngineSupervisor(
        spec(**args), StandInLauncher(), host="127.0.0.1", node_id="node-1", log_dir=tmp_path
    )
    supervisor.start()
    yield supervisor
    supervisor.stop()


def wait_for(supervisor: EngineSupervisor, state: str, timeout_s: float) -> float:
    """Seconds until the supervisor reports `state`, through its long poll."""
    started = time.monotonic()
    status = supervisor.status()
    while status.state != state:
        left = timeout_s - (time.monotonic() - started)
        assert left > 0, f"still {status.state} ({status.error}) after {timeout_s}s"
        status = supervisor.watch(status.version, left)
    return time.monotonic() - started


class TestReadiness:
    def test_ready_engine_answers_with_its_secret_only(self, supervised: EngineSupervisor) -> None:
        wait_for(supervised, "ready", 30)
        url = supervised.status().url
        assert url is not None
        body = {"model": "stand-in", "prompt": "hi", "max_tokens": 2}
        good = httpx.post(
            f"{url}/v1/completions",
            json=body,
            headers={"Authorization": "Bearer s3cret-for-this-replica"},
        )
        assert good.status_code == 200 and good.json()["choices"]
        assert httpx.post(f"{url}/v1/completions", json=body).status_code == 401

    @pytest.mark.parametrize("supervised", [{"fault": "sigill"}], indirect=True)
    def test_engine_that_dies_on_its_first_generation_is_never_ready(
        self, supervised: EngineSupervisor
    ) -> None:
        seen = set()
        status = supervised.status()
        deadline = time.monotonic() + 40
        while status.state != "failed":
            assert time.monotonic() < deadline, "never marked failed"
            seen.add(status.state)
            status = supervised.watch(status.version, 5)
        assert "ready" not in seen
        assert status.url is None
        assert "illegal instruction (SIGILL)" in status.error
        assert "rebuild" in status.error and "without native flags" in status.error
        assert "executing an instruction this CPU does not have" in status.error  # log tail
        assert status.restarts >= 3


class TestStartCost:
    def test_a_ready_engine_reports_the_cpu_time_and_wall_time_of_its_start(
        self, supervised: EngineSupervisor
    ) -> None:
        """The stand-in engine is a Python process of its own: its start (interpreter,
        imports, the probe's generation) takes measurable CPU time, read at `ready`."""
        assert supervised.status().start_cpu_s is None  # not ready yet: nothing to say
        wait_for(supervised, "ready", 30)
        status = supervised.status()
        assert status.start_cpu_s is not None and status.start_cpu_s > 0
        assert status.start_wall_s is not None and status.start_wall_s > 0
        cores = os.cpu_count() or 1
        assert status.start_cpu_s <= status.start_wall_s * cores + 0.1  # this start's only


class TestExits:
    def test_an_exit_makes_the_replica_unready_at_once_then_it_comes_back(
        self, supervised: EngineSupervisor
    ) -> None:
        wait_for(supervised, "ready", 30)
        old_url = supervised.status().url
        assert supervised.pid is not None
        os.kill(supervised.pid, signal.SIGKILL)
        unready_after = wait_for(supervised, "starting", 5)
        assert unready_after < 1.0
        status = supervised.status()
        assert "SIGKILL" in status.error and status.url is None
        wait_for(supervised, "ready", 30)
        assert supervised.status().url not in (None, old_url)
        assert supervised.status().restarts == 1

    def test_a_crash_loop_clears_once_the_engine_answers_again(self, tmp_path: Path) -> None:
        broken = tmp_path / "node-is-broken"
        broken.touch()
        supervisor = EngineSupervisor(
            spec(fault="sigill", fault_while=str(broken)),
            StandInLauncher(),
            host="127.0.0.1",
            node_id="node-1",
            log_dir=tmp_path,
        )
        supervisor.start()
        try:
            wait_for(supervisor, "failed", 40)
            broken.unlink()  # the operator fixed the node; backoff retries continue
            wait_for(supervisor, "ready", 60)
            assert supervisor.status().error == ""
        finally:
            supervisor.stop()
        assert supervisor.status().state == "stopped"


class TestExitWords:
    def test_signals_and_codes_are_named(self) -> None:
        assert "SIGILL" in describe_exit(-4, build_hint="llama-cpp-python")
        assert "rebuild llama-cpp-python without native flags" in describe_exit(
            -4, build_hint="llama-cpp-python"
        )
        assert "SIGSEGV" in describe_exit(-11, build_hint="x")
        assert "out of memory" in describe_exit(-9, build_hint="x")
        assert describe_exit(3, build_hint="x") == "engine exited with code 3"
        assert describe_exit(3, build_hint="x", log_tail="boom").endswith("last log lines: boom")

    def test_log_tail_keeps_the_last_lines_short(self, tmp_path: Path) -> None:
        log = tmp_path / "engine.log"
        log.write_text("".join(f"line {i}\n" for i in range(100)) + "x" * 5000 + "\n\n")
        tail = log_tail(log)
        assert tail.startswith("line 98 | line 99 | ")
        assert len(tail.split(" | ")[-1]) == 200
        assert log_tail(tmp_path / "missing.log") == ""


class TestCrashLoop:
    def test_three_exits_within_the_window_are_a_loop(self) -> None:
        loop = CrashLoop(exits=3, window_s=120)
        for at in (0.0, 50.0):
            loop.record(at)
            assert not loop.looping
        loop.record(119.0)
        assert loop.looping

    def test_exits_spread_out_are_not(self) -> None:
        loop = CrashLoop(exits=3, window_s=120)
        for at in (0.0, 100.0, 200.0, 300.0):
            loop.record(at)
        assert not loop.looping

    def test_clear_forgets(self) -> None:
        loop = CrashLoop(exits=2, window_s=10)
        loop.record(0.0)
        loop.record(1.0)
        assert loop.looping
        loop.clear()
        assert not loop.looping


class TestNeverSilent:
    @pytest.mark.parametrize(
        "engine_args",
        [{"token_delay": "abc"}, {"token_delay": [1]}, {"fault": ["sigill"]}],
        ids=["text-for-a-number", "list-for-a-number", "list-for-a-choice"],
    )
    def test_a_bad_argument_that_reached_the_node_fails_visibly(
        self, tmp_path: Path, engine_args: dict[str, object]
    ) -> None:
        """Arguments are checked at the API; if one got past it (a row written by hand), the
        replica says so instead of staying `starting` with no reason."""
        supervisor = EngineSupervisor(
            spec(**engine_args), StandInLauncher(), host="127.0.0.1", node_id="n", log_dir=tmp_path
        )
        supervisor.start()
        try:
            wait_for(supervisor, "failed", 40)
            error = supervisor.status().error
        finally:
            supervisor.stop()
        assert "engine supervisor stopped" in error or "crash loop" in error

    def test_a_bad_artifact_uri_fails_visibly(self, tmp_path: Path) -> None:
        bad = ReplicaSpec(**{**spec().__dict__, "artifact_uri": "hf://../../etc/passwd"})
        supervisor = EngineSupervisor(
            bad, StandInLauncher(), host="127.0.0.1", node_id="n", log_dir=tmp_path
        )
        supervisor.start()
        try:
            wait_for(supervisor, "failed", 10)
            error = supervisor.status().error
        finally:
            supervisor.stop()
        assert "hf://" in error


class TestSecretStaysPrivate:
    def test_the_replica_secret_is_not_in_the_engines_argv_or_environment(
        self, supervised: EngineSupervisor
    ) -> None:
        wait_for(supervised, "ready", 30)
        pid = supervised.pid
        assert pid is not None
        secret = b"s3cret-for-this-replica"
        assert secret not in Path(f"/proc/{pid}/environ").read_bytes()
        assert secret not in Path(f"/proc/{pid}/cmdline").read_bytes()

    def test_engine_logs_are_private(self, tmp_path: Path) -> None:
        os.environ["SOUVERAIN_NODE_DIR"] = str(tmp_path / "node-home")
        try:
            supervisor = EngineSupervisor(spec(), StandInLauncher(), host="127.0.0.1", node_id="n")
            supervisor.start()
            wait_for(supervisor, "ready", 30)
            supervisor.stop()
        finally:
            del os.environ["SOUVERAIN_NODE_DIR"]
        engines = tmp_path / "node-home" / "node" / "engines"
        assert engines.stat().st_mode & 0o777 == 0o700
        assert (engines.parent.stat().st_mode & 0o777) == 0o700
        [log] = list(engines.iterdir())
        assert log.stat().st_mode & 0o777 == 0o600


class TestTemplateOverhead:
    def ready_overhead(self, replica: ReplicaSpec) -> tuple[int, int] | None:
        supervisor = EngineSupervisor(replica, StandInLauncher(), host="127.0.0.1", node_id="n")
        supervisor.start()
        try:
            wait_for(supervisor, "ready", 30)
            return supervisor.status().prompt_overhead
        finally:
            supervisor.stop()

    def test_measured_once_per_engine_and_model_on_a_node(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The second replica of a model on a node reads what the first measured (proved
        by a value no engine would measure); other engine arguments are measured anew."""
        monkeypatch.setenv("SOUVERAIN_NODE_DIR", str(tmp_path / "node-home"))
        measured = self.ready_overhead(spec())
        assert measured is not None and measured[0] > 0 and measured[1] > 0
        cache = tmp_path / "node-home" / "node" / "chat-template-overhead.json"
        assert cache.stat().st_mode & 0o777 == 0o600
        [(key, value)] = json.loads(cache.read_text()).items()
        assert value == list(measured)  # two integers under a digest: nothing of a request
        cache.write_text(json.dumps({key: [measured[0] + 100, measured[1]]}))

        assert self.ready_overhead(spec()) == (measured[0] + 100, measured[1])
        assert self.ready_overhead(spec(token_delay=0.001)) == measured
        assert len(json.loads(cache.read_text())) == 2

    def test_a_damaged_cache_is_measured_again(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("SOUVERAIN_NODE_DIR", str(tmp_path / "node-home"))
        measured = self.ready_overhead(spec())
        cache = tmp_path / "node-home" / "node" / "chat-template-overhead.json"
        [key] = json.loads(cache.read_text())
        for damaged in ('{"' + key + '": ["12", 3]}', "not json", "[1, 2]"):
            cache.write_text(damaged)
            assert self.ready_overhead(spec()) == measured
