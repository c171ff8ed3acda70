"""Nothing of a tenant outlives its use on a node: plaintext lives in memory-backed scratch,
swept once its owner is gone, and workers die with the actor that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from souverain.node import scratch

CANARY = b"CANARY-adapter-weights-of-tenant-a"
OWNER = """
import sys, threading, subprocess, time
from pathlib import Path
from souverain.node import scratch
from souverain.node.exits import die_with_parent
path = scratch.claim("replica", "rep_tenant_a")
(path / "adapter.gguf").write_bytes(sys.argv[1].encode())
def start():  # as the training supervisor starts its worker: from a thread, own session
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                              start_new_session=True, preexec_fn=die_with_parent)
    print(path, worker.pid, flush=True)
    time.sleep(120)
threading.Thread(target=start).start()
"""


@pytest.fixture
def root(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path("/tmp")
    path = base / f"souverain-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(scratch.ROOT_ENV, str(path))
    yield path
    scratch.release(path)


def gone(pid: int, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


class TestScratch:
    def test_private_and_in_memory(self, root: Path) -> None:
        path = scratch.claim("training", "ftjob_1")
        assert path.parent == root and oct(root.stat().st_mode & 0o777) == "0o700"
        assert oct(path.stat().st_mode & 0o777) == "0o700"
        if str(root).startswith("/dev/shm/"):
            mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
            assert {fields[2] for fields in mounts if fields[1] == "/dev/shm"} == {"tmpfs"}

    def test_a_symlinked_root_is_refused(self, root: Path, tmp_path: Path) -> None:
        root.symlink_to(tmp_path)
        with pytest.raises(Exception, match="not a plain directory"):
            scratch.claim("replica", "rep_1")
        root.unlink()

    def test_a_killed_owner_leaves_no_plaintext_and_no_worker(self, root: Path) -> None:
        owner = subprocess.Popen(
            [sys.executable, "-c", OWNER, CANARY.decode()],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
        assert owner.stdout is not None
        line = owner.stdout.readline().decode().split()
        path, worker = Path(line[0]), int(line[1])
        assert (path / "adapter.gguf").read_bytes() == CANARY
        owner.send_signal(signal.SIGKILL)  # the actor dies mid-serving, nothing cleans up
        owner.wait()
        assert gone(worker), "the worker outlived its actor"
        assert path.exists()  # until anything of souverain starts on this node again
        scratch.claim("replica", "rep_next")
        assert not path.exists()
        assert [p.name for p in root.iterdir()] == [n for n in os.listdir(root) if "rep_next" in n]

    def test_a_live_owner_is_left_alone(self, root: Path) -> None:
        mine = scratch.claim("replica", "rep_live")
        (mine / "adapter.gguf").write_bytes(CANARY)
        assert scratch.sweep() == []
        assert (mine / "adapter.gguf").exists()
