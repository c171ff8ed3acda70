"""`souverain node head`, `certify` and `join`, run as an operator runs them: a head with
token authentication and TLS, and a node joined to it with its datacenter label and the
TLS directory certified for it; each bad input a clear error naming the fix, with nothing
left running. The controller refuses `auto` and a cluster without TLS or a token (Ray's
TLS itself: test_ray_tls.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from souverain.cluster import ray_cluster, ray_node, ray_tls
from souverain.testing.live import free_port
from tests.conftest import Platform, on_one_database

pytestmark = [pytest.mark.ray, pytest.mark.slow]

SOUVERAIN = str(Path(sys.executable).with_name("souverain"))


def this_host() -> str:
    """This host's own (non-loopback) address: Ray takes 127.0.0.1 to mean "find mine"."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("203.0.113.1", 9))  # no packet is sent: it only picks a route
        return str(probe.getsockname()[0])


IP = this_host()


def remove_node_dirs() -> None:
    for leftover in Path("/tmp").glob(f"sf-test-{os.getpid()}-*"):
        shutil.rmtree(leftover, ignore_errors=True)


@dataclass
class Head:
    address: str
    token_file: Path
    temp_dir: Path
    root: Path

    @property
    def tls(self) -> Path:
        """The head's TLS directory: the cluster's authority and the head's certificate."""
        return self.token_file.parent / "tls"


async def souverain(
    platform: Platform, key: str, *args: str, home: Path
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SOUVERAIN_URL": platform.url, "SOUVERAIN_API_KEY": key,
           "HOME": str(home), "SOUVERAIN_NODE_DIR": str(home / "node")}  # fmt: skip
    return await asyncio.to_thread(
        subprocess.run, [SOUVERAIN, *args], env=env, capture_output=True, text=True,
        timeout=180, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
async def head(platform: Platform, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Head]:
    root = tmp_path_factory.mktemp("head")
    await platform.factory.datacenter("node-par", country="FR")
    await platform.factory.datacenter("node-fra", country="DE")
    port = free_port()
    temp_dir = Path(f"/tmp/sf-test-{os.getpid()}-h")
    started = await souverain(
        platform, await platform.operator_key(), "node", "head", "--node-ip-address", IP,
        "--port", str(port), "--datacenter", "node-par", "--temp-dir", str(temp_dir),
        "--num-cpus", "1", home=root,
    )  # fmt: skip
    assert started.returncode == 0, started.stderr + started.stdout
    token_file = root / "node" / "node" / "ray" / "auth_token"
    try:
        yield Head(f"{IP}:{port}", token_file, temp_dir, root)
    finally:
        ray_node.stop(temp_dir)
        remove_node_dirs()


@on_one_database()
class TestHead:
    async def test_the_head_requires_its_token_and_keeps_its_files_private(
        self, head: Head
    ) -> None:
        assert stat.S_IMODE(head.token_file.stat().st_mode) == 0o600
        assert stat.S_IMODE(head.temp_dir.stat().st_mode) == 0o700
        ray_dir = ray_node.ray_temp_dir(head.temp_dir)
        for directory in [ray_dir, *ray_dir.glob("session_2*")]:
            assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0, directory
        code, nodes = await asyncio.to_thread(
            ray_node.probe, head.address, head.token_file, head.tls
        )
        assert code == 0
        assert [n["labels"].get("souverain.io/datacenter") for n in nodes] == ["node-par"]  # type: ignore[union-attr]
        assert (await asyncio.to_thread(ray_node.probe, head.address, None, head.tls))[0] == 3
        for process in ray_node._processes_under(ray_dir):  # no token in argv or env
            token = head.token_file.read_text()
            assert token not in " ".join(process.cmdline())
            assert token not in str(process.environ())
            assert process.environ().get("RAY_USAGE_STATS_ENABLED") == "0"

    async def test_a_second_head_is_refused(self, platform: Platform, head: Head) -> None:
        port = head.address.rsplit(":", 1)[1]
        second = await souverain(
            platform, await platform.operator_key(), "node", "head", "--node-ip-address", IP,
            "--port", port, "--temp-dir", f"/tmp/sf-test-{os.getpid()}-h2", home=head.root,
        )  # fmt: skip
        assert second.returncode == 1
        assert f"port {port} is already in use" in second.stderr


async def certify(platform: Platform, head: Head, ip: str, out: Path) -> None:
    """`souverain node certify` on the head's host: a TLS directory for the host at `ip`, of
    datacenter node-fra."""
    done = await souverain(
        platform, await platform.operator_key(), "node", "certify", "--node-ip-address", ip,
        "--datacenter", "node-fra", "--out", str(out), home=head.root,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr + done.stdout


@on_one_database()
class TestJoin:
    async def join(
        self, platform: Platform, head: Head, home: Path, *extra: str, address: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        if "--tls-dir" not in extra:
            tls = home / "ray-tls"
            if not tls.exists():
                await certify(platform, head, IP, tls)
            extra = (*extra, "--tls-dir", str(tls))
        return await souverain(
            platform, await platform.operator_key(), "node", "join",
            "--address", address or head.address, "--node-ip-address", IP,
            "--temp-dir", f"/tmp/sf-test-{os.getpid()}-w", "--num-cpus", "1", *extra, home=home,
        )  # fmt: skip

    async def test_a_node_joins_with_its_label(
        self, platform: Platform, head: Head, tmp_path: Path
    ) -> None:
        worker_dir = Path(f"/tmp/sf-test-{os.getpid()}-w")
        joined = await self.join(
            platform, head, tmp_path, "--datacenter", "node-fra", "--token-file",
            str(head.token_file),
        )  # fmt: skip
        try:
            assert joined.returncode == 0, joined.stderr + joined.stdout
            _, nodes = await asyncio.to_thread(
                ray_node.probe, head.address, head.token_file, head.tls
            )
            labels = sorted(n["labels"].get("souverain.io/datacenter") for n in nodes)  # type: ignore[union-attr]
            assert labels == ["node-fra", "node-par"]
            again = await self.join(
                platform, head, tmp_path, "--datacenter", "node-fra", "--token-file",
                str(head.token_file),
            )  # fmt: skip
            assert again.returncode == 1 and "already runs on this host" in again.stderr
        finally:
            ray_node.stop(worker_dir)

    async def test_bad_joins_say_what_to_fix_and_leave_nothing_running(
        self, platform: Platform, head: Head, tmp_path: Path
    ) -> None:
        wrong_token = tmp_path / "wrong"
        wrong_token.write_text("not-the-token")
        wrong_token.chmod(0o600)
        open_token = tmp_path / "open"
        open_token.write_text(head.token_file.read_text())
        open_token.chmod(0o644)
        other_ip, foreign, open_key = (
            tmp_path / "other-ip",
            tmp_path / "foreign",
            tmp_path / "open-key",
        )
        ray_node.certify(head.tls, "10.99.0.9", other_ip, "node-fra")
        ray_tls.ensure_head(foreign, IP, "node-fra")  # another cluster's authority
        ray_node.certify(head.tls, IP, open_key, "node-fra")
        paris = tmp_path / "certified-par"  # this host's certificate, for another datacenter
        ray_node.certify(head.tls, IP, paris, "node-par")
        (open_key / "node.key").chmod(0o644)
        token = ("--datacenter", "node-fra", "--token-file", str(head.token_file))
        cases = [
            (("--datacenter", "nowhere", "--token-file", str(head.token_file)),
             None, "datacenter 'nowhere' is not declared"),
            (("--datacenter", "node-fra", "--token-file", str(tmp_path / "missing")),
             None, "no Ray token file"),
            (("--datacenter", "node-fra", "--token-file", str(open_token)),
             None, "chmod 600"),
            (("--datacenter", "node-fra", "--token-file", str(wrong_token)),
             None, "refused this token"),
            (("--datacenter", "node-fra", "--token-file", str(head.token_file)),
             f"{IP}:{free_port()}", "cannot reach the Ray head"),
            ((*token, "--tls-dir", str(tmp_path / "missing-tls")), None, "no Ray TLS directory"),
            ((*token, "--tls-dir", str(other_ip)), None, f"is not for {IP}"),
            ((*token, "--tls-dir", str(open_key)), None, "chmod 600"),
            ((*token, "--tls-dir", str(foreign)), None, "did not issue for it"),
            ((*token, "--tls-dir", str(paris)), None,
             "certified for datacenter node-par, not node-fra: join with --datacenter node-par"),
        ]  # fmt: skip
        for extra, address, expected in cases:
            refused = await self.join(platform, head, tmp_path, *extra, address=address)
            assert refused.returncode == 1, (extra, refused.stdout)
            assert expected in refused.stderr, (expected, refused.stderr)
            worker = ray_node.ray_temp_dir(Path(f"/tmp/sf-test-{os.getpid()}-w"))
            assert ray_node._processes_under(worker) == []
        _, nodes = await asyncio.to_thread(ray_node.probe, head.address, head.token_file, head.tls)
        assert len(nodes) == 1


class TestControllerAddress:
    def test_auto_and_no_address_are_refused(self) -> None:
        for address in (None, "", "auto", "AUTO"):
            with pytest.raises(ray_cluster.ClusterRefused, match="SOUVERAIN_RAY_ADDRESS"):
                ray_cluster.explicit_address(address)
        assert ray_cluster.explicit_address("10.24.0.1:6379") == "10.24.0.1:6379"

    async def test_a_cluster_without_tls_or_token_authentication_is_refused(
        self, tmp_path: Path
    ) -> None:
        token = tmp_path / "token"
        token.write_text("some-token")
        token.chmod(0o600)
        tls = tmp_path / "tls"
        ray_tls.ensure_head(tls, IP)
        open_env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
        for env, expected in (
            (open_env, "does not encrypt its traffic"),
            (open_env | ray_tls.ray_tls_environment(tls), "accepts clients without a token"),
        ):
            port = free_port()
            temp_dir = Path(f"/tmp/sf-test-{os.getpid()}-open")
            ray_node.check_private_dir(temp_dir)
            ray = str(Path(sys.executable).with_name("ray"))
            started = await asyncio.to_thread(
                subprocess.run,
                [ray, "start", "--head", "--node-ip-address", IP, "--port", str(port),
                 "--temp-dir", str(ray_node.ray_temp_dir(temp_dir)), "--include-dashboard=false",
                 "--num-cpus", "0"],
                env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            try:
                assert started.returncode == 0, started.stderr
                with pytest.raises(ray_cluster.ClusterRefused, match=expected):
                    await asyncio.to_thread(
                        ray_cluster.connect_authenticated,
                        f"{IP}:{port}",
                        token_file=token,
                        tls_dir=tls,
                    )
            finally:
                ray_node.stop(temp_dir)
