"""The controller tests that need a Ray cluster with token authentication (controllers
refuse any other), run in a pytest of their own: Ray reads its authentication mode when it
is imported, so that process starts with the token and Ray's TLS files in its environment,
as `souverain node head` starts Ray, and its `par1_cluster` is authenticated and encrypted
from the first process on."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from souverain.cluster import ray_tls
from souverain.cluster.ray_cluster import source_address
from souverain.cluster.ray_node import ensure_token_file, ray_environment

pytestmark = [pytest.mark.ray, pytest.mark.engine, pytest.mark.slow]


def test_controllers_hand_over_on_an_authenticated_cluster(tmp_path: Path) -> None:
    _run(tmp_path, "tests/faults/test_controller_failover.py")


def test_a_fine_tuning_job_carries_on_through_a_controller_kill(tmp_path: Path) -> None:
    _run(tmp_path, "tests/faults/test_fine_tuning_controller_kill.py")


def _run(tmp_path: Path, module: str) -> None:
    token = tmp_path / "auth_token"
    ensure_token_file(token)
    tls = tmp_path / "ray-tls"  # Ray's TLS too, for this host's address and the loopback
    ray_tls.ensure_head(tls, source_address("203.0.113.1:9"), "par1")  # its one node's
    env = ray_environment(token, tls) | {
        "SOUVERAIN_RAY_TOKEN_FILE": str(token),
        "SOUVERAIN_RAY_TLS_DIR": str(tls),
    }
    env.pop("SOUVERAIN_TEST_POSTGRES_URL", None)  # these modules use SQLite only
    root = Path(__file__).parents[2]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-s", module],
        cwd=root, env=env, capture_output=True, text=True, timeout=1500, check=False,
    )  # fmt: skip
    print(run.stdout[-6000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert re.search(r"(^|\s)1 passed", run.stdout) and "skipped" not in run.stdout
