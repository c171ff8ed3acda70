"""What a training node makes of its worker's exit (node/training_job.py): a reinforcement
job whose reward collapsed stopped itself on purpose, so it fails at once with code
`reward_collapsed` and the worker's own words, where a crashed worker is started again; a
worker asked to pause before its recipe could take the request (SIGTERM while it loads)
is paused, not a death."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

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
    made._stop_asked, made._attempt = None, 0
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
