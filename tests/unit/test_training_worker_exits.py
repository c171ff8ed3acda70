"""What a training node makes of its worker's exit (node/training_job.py): a reinforcement
job whose reward collapsed stopped itself on purpose, so it fails at once with code
`reward_collapsed` and the worker's own words, where a crashed worker is started again; a
worker asked to pause before its recipe could take the request (SIGTERM while it loads)
is paused, not a death; a worker still running when a budget pause's energy limit is
reached is stopped there, and the job is paused."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from souverain.energy.sources import EstimateSource
from souverain.node import training_job
from souverain.node.training_job import MAX_ATTEMPTS, TrainingSupervisor
from souverain.training.collapse import REWARD_COLLAPSED

COLLAPSED = {"type": "collapsed", "step": 7, "start": 0.9, "now": 0.4, "margin": 0.3,
             "message": "the reward collapsed: the format rate fell from 90% to 40%"}  # fmt: skip


def supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, code: int, lines: list[dict[str, Any]]
) -> tuple[TrainingSupervisor, list[int]]:
    """A supervisor whose worker writes `lines` and exits with `code` (no process)."""
    made = object.__new__(TrainingSupervisor)
    made._spec = SimpleNamespace(  # type: ignore[assignment]
        base_artifact_uri="builtin:tiny", base_artifact_sha256=None, model_roots=(),
        validation=None, hyperparameters={}, threads=1, grader={"type": "magistral"},
        init_adapter=None,
    )  # fmt: skip
    made._dir, made._lock, made._events = tmp_path, threading.Lock(), []
    made._stop_asked, made._attempt, made._halted = None, 0, False
    runs: list[int] = []

    def run_worker(out: Path) -> int:
        runs.append(code)
        for line in lines:
            made._on_progress(line)
        return code

    monkeypatch.setattr(training_job, "resolve", lambda *a, **k: tmp_path / "model.gguf")
    monkeypatch.setattr(made, "_run_worker", run_worker)
    return made, runs


class TestACollapsedRewardEndsTheJob:
    def test_the_job_fails_with_the_reason_and_is_not_restarted(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made, runs = supervisor(tmp_path, monkeypatch, code=REWARD_COLLAPSED, lines=[COLLAPSED])
        assert made._train() == ("failed", COLLAPSED["message"], "reward_collapsed")
        assert runs == [REWARD_COLLAPSED]
        [event] = [e for e in made._events if e["type"] == "collapsed"]
        assert (event["step"], event["start"], event["now"]) == (7, 0.9, 0.4)

    def test_a_crashed_worker_is_started_again_instead(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made, runs = supervisor(tmp_path, monkeypatch, code=1, lines=[])
        state, _, code = made._train()
        assert (state, code) == ("failed", "worker") and len(runs) == MAX_ATTEMPTS


class TestAPauseWhileTheWorkerLoads:
    def test_a_worker_stopped_by_the_pause_before_its_recipe_listened_is_paused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Out of budget while the model loads: the pause's SIGTERM ends the worker before
        its recipe set its handler. The job is paused (to resume from its last checkpoint),
        not failed as a worker that died three times."""
        made, runs = supervisor(tmp_path, monkeypatch, code=-signal.SIGTERM, lines=[])
        made._stop_asked = "pause"
        assert made._train() == ("paused", "", "")
        assert runs == [-signal.SIGTERM]

    def test_a_worker_that_crashes_while_pausing_died_once(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made, runs = supervisor(tmp_path, monkeypatch, code=-signal.SIGSEGV, lines=[])
        made._stop_asked = "pause"
        state, message, code = made._train()
        assert (state, code) == ("failed", "worker") and len(runs) == 1
        assert message.startswith("the training worker died once:"), message


class TestAPauseAtTheEnergyLimit:
    """A job paused because its energy budget ran out carries what it holds as a limit: a
    worker still running when its energy reaches it (a slow step, a slow checkpoint) is
    stopped there, and the job is paused, not failed."""

    def test_a_worker_that_does_not_stop_is_stopped_at_the_limit(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        (tmp_path / "stubborn.py").write_text(  # takes SIGTERM as a slow step would: later
            "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n"
        )
        monkeypatch.setenv("PYTHONPATH", str(tmp_path))
        monkeypatch.setitem(training_job.RECIPES, "supervised", "stubborn")
        monkeypatch.setattr(training_job, "pick_source", lambda **k: EstimateSource(
            k["cpu_seconds"], watts_per_core=1000.0))  # fmt: skip
        # at the niceness of training, a busy machine would starve it of the CPU it must spend
        monkeypatch.setattr(training_job, "lower_priority", lambda pid: None)
        made = object.__new__(TrainingSupervisor)
        made._spec = SimpleNamespace(job_id="ftjob-limit", threads=1, method="supervised",  # type: ignore[assignment]
                                     watts_per_core=1000.0)  # fmt: skip
        made._dir, made._lock, made._events, made._gpus = tmp_path, threading.Lock(), [], []
        made._stop_asked, made._state, made._process, made._source = None, "running", None, None
        made._cpu_before = made._cpu_live = made._energy_before = 0.0
        made._energy_limit, made._halted = None, False
        ended: list[int] = []
        worker = threading.Thread(
            target=lambda: ended.append(made._run_worker(tmp_path)), daemon=True
        )
        worker.start()
        try:
            deadline = time.monotonic() + 60
            while made._energy() < 500 and time.monotonic() < deadline:  # half a CPU-second
                time.sleep(0.05)
            limit = made._energy() + 1500
            made.pause(energy_limit_j=limit)
            worker.join(timeout=120)
        finally:  # the stubborn worker never outlives the test, whatever it asserts
            made.cancel()
        assert ended == [-signal.SIGKILL] and made._halted
        # stopped within one reading of the limit: a core at 1 kW for POLL_S, and a tick
        assert limit <= made._energy() <= limit + 1000 * training_job.POLL_S + 20

    def test_the_job_stopped_at_the_limit_is_paused(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        made, runs = supervisor(tmp_path, monkeypatch, code=-signal.SIGKILL, lines=[])
        made._stop_asked, made._halted = "pause", True
        made._energy_before, made._source = 37_000.0, None
        assert made._train() == ("paused", "", "")
        [halted] = [e for e in made._events if e["type"] == "halted"]
        assert halted["energy_j"] == 37_000.0 and runs == [-signal.SIGKILL]
