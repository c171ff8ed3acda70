"""Ray's own traffic encrypted: a head started by `souverain node head` and a node joined by
`souverain node join` with the directory `souverain node certify` made for it, on this
host's address. A driver's actor call and object transfer to the joined node work; a
client without this cluster's certificates, or with another cluster's, is refused; and a
capture of the interface while a replica spec whose secret is a canary crosses Ray holds
neither the canary nor the cluster's token, yet saw the traffic."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from souverain.cluster import ray_node, ray_tls
from souverain.core.ids import new_id
from tests.cluster import test_node_commands as nodes
from tests.conftest import Platform, on_one_database
from tests.security.test_link_capture import LinkCapture, packets

pytestmark = [
    pytest.mark.ray,
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("tcpdump") is None, reason="needs tcpdump (make tcpdump)"),
    on_one_database(),
]

IP = nodes.IP
ROOT = Path(__file__).parents[2]
head = nodes.head  # the module's own head (token authentication and TLS)


@pytest.fixture(scope="module")
async def joined(
    platform: Platform, head: nodes.Head, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Path]:
    """A node of datacenter node-fra joined with its certified directory; that directory."""
    home = tmp_path_factory.mktemp("fra")
    tls = home / "ray-tls"
    key = await platform.operator_key()
    certified = await nodes.souverain(
        platform, key, "node", "certify", "--node-ip-address", IP, "--datacenter", "node-fra",
        "--out", str(tls),
        home=head.root,
    )  # fmt: skip
    assert certified.returncode == 0, certified.stderr + certified.stdout
    temp_dir = Path(f"/tmp/sf-test-{os.getpid()}-t")
    started = await nodes.souverain(
        platform, key, "node", "join", "--address", head.address, "--node-ip-address", IP,
        "--datacenter", "node-fra", "--token-file", str(head.token_file), "--tls-dir", str(tls),
        "--temp-dir", str(temp_dir), "--num-cpus", "1", home=home,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stderr + started.stdout
        yield tls
    finally:
        ray_node.stop(temp_dir)


class TestCertificates:
    async def test_the_authority_stays_on_the_head_and_every_file_is_private(
        self, head: nodes.Head, joined: Path
    ) -> None:
        assert (head.tls / "ca.key").is_file()
        assert sorted(os.listdir(joined)) == ["ca.crt", "node.crt", "node.key"]
        for directory in (head.tls, joined):
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
            for path in [directory / name for name in os.listdir(directory)]:
                assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        processes = ray_node._processes_under(ray_node.ray_temp_dir(head.temp_dir))
        key = (head.tls / "node.key").read_text()
        for process in processes:  # paths only: never a key in argv or the environment
            assert key not in " ".join(process.cmdline()) + str(process.environ())
            assert process.environ().get("RAY_USE_TLS") == "1"

    async def test_a_client_without_this_clusters_certificates_is_refused(
        self, head: nodes.Head, joined: Path, tmp_path: Path
    ) -> None:
        code, found = await asyncio.to_thread(ray_node.probe, head.address, head.token_file, joined)
        assert code == 0 and len(found) == 2
        code, found = await asyncio.to_thread(ray_node.probe, head.address, head.token_file, None)
        assert code != 0 and found == []  # a Ray client with the token but no certificate
        foreign = tmp_path / "foreign"
        ray_tls.ensure_head(foreign, IP)  # another cluster's authority, a valid certificate
        host, port = head.address.rsplit(":", 1)
        assert await asyncio.to_thread(answers_http2, host, int(port), joined)
        for tls in (None, foreign):
            assert not await asyncio.to_thread(answers_http2, host, int(port), tls), tls


def answers_http2(host: str, port: int, tls: Path | None) -> bool:
    """Whether the GCS answers gRPC's preface after a handshake with the certificate of
    `tls` (or none): it ends the connection of a client it does not trust."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    if tls is not None:
        context.load_cert_chain(tls / "node.crt", tls / "node.key")
    with socket.create_connection((host, port), timeout=10) as raw:
        try:
            with context.wrap_socket(raw) as sock:
                sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes(9))
                return sock.recv(64) != b""
        except (ssl.SSLError, ConnectionError):
            return False


class TestLink:
    async def test_no_canary_and_no_token_cross_the_link_in_clear(
        self, head: nodes.Head, joined: Path, tmp_path: Path
    ) -> None:
        canary = f"CANARY-{new_id('c')}"
        capture = LinkCapture(0, tmp_path / "ray.pcap", expression=f"tcp and host {IP}")
        try:
            env = ray_node.ray_environment(head.token_file, joined)
            done = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "tests.cluster.ray_link_driver", head.address, "node-fra",
                 canary],
                cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
        finally:
            pcap = capture.stop()
        assert done.returncode == 0, done.stderr[-3000:]
        answer = json.loads(done.stdout.strip().splitlines()[-1])
        assert answer["datacenter"] == "node-fra"
        assert answer["secret_sha256"] == hashlib.sha256(canary.encode()).hexdigest()
        assert answer["blob_length"] == len(canary) * (1 + 200_000 // len(canary))
        seen = len(packets(pcap))
        print(f"[capture] Ray between the driver, the head and node-fra: {seen} packets")
        assert seen > 50  # the spec, the call and the object did cross the interface
        for secret in (canary, head.token_file.read_text().strip()):
            assert secret.encode() not in pcap, f"{secret[:12]}… crossed the link in clear"
