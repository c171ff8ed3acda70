"""`souverain up` on a node whose llama.cpp build cannot run: it never says `ready`, says
why and how to fix it, and exits non-zero.

The broken build is real in effect, for either runtime of the llamacpp engine: a
`llama_cpp` package placed first on the engine's path, or a `llama-server` program, dies
of SIGILL when loaded, as a build with instructions the CPU lacks does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from souverain.testing.live import free_port

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow]

BROKEN_BUILD = """
import os, signal, sys
print("llama_cpp: ggml_backend_amx_mul_mat: tilezero", file=sys.stderr, flush=True)
os.kill(os.getpid(), signal.SIGILL)
"""


BROKEN_SERVER = """#!/bin/sh
echo "ggml_backend_amx_mul_mat: tilezero" >&2
kill -ILL $$
"""


def broken_runtime(runtime: str, directory: Path) -> dict[str, str]:
    """The environment of a node whose `runtime` build dies of SIGILL."""
    if runtime == "llama-server":
        program = directory / "llama-server"
        program.write_text(BROKEN_SERVER)
        program.chmod(0o755)
        return {"SOUVERAIN_LLAMACPP_RUNTIME": runtime, "SOUVERAIN_LLAMA_SERVER": str(program)}
    broken = directory / "broken-build" / "llama_cpp"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text(BROKEN_BUILD)
    return {"SOUVERAIN_LLAMACPP_RUNTIME": runtime, "PYTHONPATH": str(broken.parent)}


@pytest.mark.parametrize("runtime", ["llama-server", "llama-cpp-python"])
def test_up_reports_an_engine_that_cannot_run_and_exits_non_zero(
    tmp_path: Path, runtime: str
) -> None:
    env = {
        **os.environ,
        **broken_runtime(runtime, tmp_path),
        "SOUVERAIN_DATA_DIR": str(tmp_path / "data"),
        "SOUVERAIN_CONFIG": str(tmp_path / "cli.json"),
        "SOUVERAIN_UP_READY_TIMEOUT_S": "240",
        "PYTHONUNBUFFERED": "1",
    }
    finished = subprocess.run(
        [sys.executable, "-m", "souverain.cli.main", "up", "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 1, output[-3000:]
    assert "smollm2-135m-instruct: ready" not in output
    assert "souverain could not start its model" in output
    assert "illegal instruction (SIGILL)" in output
    assert "tilezero" in output  # the engine's last words
    assert "make clean setup" in output  # how to fix it
