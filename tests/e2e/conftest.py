"""`souverain up` as a user runs it: a real process, embedded Ray, llama.cpp serving SmolLM2."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from souverain.testing.live import free_port

BANNER = "souverain is up"


@dataclass
class Up:
    data_dir: Path
    port: int
    config: Path
    process: subprocess.Popen[str] | None = None
    output: list[str] = field(default_factory=list)
    first_key: str | None = None
    seconds_to_ready: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SOUVERAIN_CONFIG": str(self.config),
            "SOUVERAIN_DATA_DIR": str(self.data_dir),
            "PYTHONUNBUFFERED": "1",
        }

    def start(self, timeout_s: float = 180.0) -> None:
        self.output = []
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "souverain.cli.main", "up", "--port", str(self.port)],
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.process and self.process.stdout
            for line in self.process.stdout:
                self.output.append(line)
                if BANNER in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout_s):
            self.stop()
            raise AssertionError(
                "souverain up did not become ready:\n" + "".join(self.output[-60:])
            )
        time.sleep(1.0)  # the rest of the banner
        self.seconds_to_ready = time.monotonic() - started
        # Its output is not a terminal: the banner says a key was made, the config holds it.
        made = "Operator API key" in "".join(self.output)
        self.first_key = json.loads(self.config.read_text())["api_key"] if made else None

    def stop(self, timeout_s: float = 60.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def cli(
        self, *args: str, check: bool = True, key: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = self.env() | {"COLUMNS": "200"}
        if key:
            env["SOUVERAIN_API_KEY"] = key
        result = subprocess.run(
            [sys.executable, "-m", "souverain.cli.main", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"souverain {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
            )
        return result

    def replica_urls(self) -> list[str]:
        with sqlite3.connect(self.data_dir / "souverain.db") as db:
            return [row[0] for row in db.execute("SELECT url FROM replicas WHERE url IS NOT NULL")]

    def engine_processes(self) -> list[psutil.Process]:
        """The llama.cpp engine processes (llama-server or llama-cpp-python) serving this
        installation's replicas."""
        ports = {url.rsplit(":", 1)[1] for url in self.replica_urls()}
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            argv = proc.info["cmdline"] or []
            program = "souverain.node.engines.llamacpp_main" in argv or (
                bool(argv) and argv[0].endswith("llama-server")
            )  # either runtime of the llamacpp engine
            serving = program and "--port" in argv
            if serving and argv[argv.index("--port") + 1] in ports:
                found.append(proc)
        return found

    def training_processes(self) -> list[psutil.Process]:
        """The training workers of this installation's jobs (their spec lies in the node's
        scratch, in a directory named after the job)."""
        with sqlite3.connect(self.data_dir / "souverain.db") as db:
            jobs = [row[0] for row in db.execute("SELECT id FROM fine_tuning_jobs")]
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            argv = proc.info["cmdline"] or []
            if any(a.startswith("souverain.training.") for a in argv) and any(
                job in argv[-1] for job in jobs
            ):
                found.append(proc)
        return found


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    base = tmp_path_factory.mktemp("up")
    instance = Up(data_dir=base / "data", port=free_port(), config=base / "cli.json")
    instance.start()
    yield instance
    instance.stop()
