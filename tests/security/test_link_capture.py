"""What crosses the link between the gateway and an engine: a capture of that link (tcpdump
on the loopback, the engine's port) during a chat, a stream, an embedding and a batch line
holds no canary from the prompts and no replica secret in clear, yet saw the traffic."""

from __future__ import annotations

import asyncio
import getpass
import io
import json
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from souverain.core.ids import new_id
from souverain.core.roles import Role
from tests.conftest import Platform
from tests.files.test_batches import wait_done
from tests.security.helpers import serve

pytestmark = pytest.mark.skipif(
    shutil.which("tcpdump") is None, reason="needs tcpdump (make tcpdump, as root)"
)


class LinkCapture:
    """`tcpdump -i lo -w` on one TCP port (or a capture filter, or another interface),
    written as packets arrive."""

    def __init__(
        self, port: int, path: Path, *, expression: str | None = None, interface: str = "lo"
    ) -> None:
        self.path = path
        self._process = subprocess.Popen(
            [
                "tcpdump",
                "-i",
                interface,
                "-U",
                "--immediate-mode",  # each packet as it comes, not in blocks that a stop can lose
                "-s",
                "0",
                "-Z",
                getpass.getuser(),
                "-w",
                str(path),
                expression or f"tcp port {port}",
            ],
            stderr=subprocess.PIPE,
        )
        assert self._process.stderr is not None
        line = self._process.stderr.readline().decode()
        assert "listening on" in line, line

    def stop(self) -> bytes:
        time.sleep(0.3)  # the last packets
        self._process.send_signal(signal.SIGINT)
        self._process.wait(timeout=10)
        return self.path.read_bytes()


def packets(pcap: bytes) -> list[bytes]:
    """The packets of a classic pcap file."""
    found, offset = [], 24
    while offset + 16 <= len(pcap):
        (length,) = struct.unpack_from("<I", pcap, offset + 8)
        found.append(pcap[offset + 16 : offset + 16 + length])
        offset += 16 + length
    return found


async def test_no_canary_and_no_replica_secret_cross_the_engine_link(
    platform: Platform, tmp_path: Path
) -> None:
    canary = f"CANARY-{new_id('c')}"
    chat = await serve(platform)
    embed = await serve(platform, capabilities=("embeddings",))
    tenant = await platform.factory.tenant(roles={"m": Role.MEMBER})
    key = (await platform.factory.member_key(tenant, "m", Role.MEMBER)).key
    sdk = openai.OpenAI(base_url=f"{platform.url}/v1", api_key=key, max_retries=0)
    line = {"custom_id": "1", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": chat.name, "max_tokens": 4,
                     "messages": [{"role": "user", "content": f"batch {canary}"}]}}  # fmt: skip
    uploaded = sdk.files.create(file=("in.jsonl", io.BytesIO(json.dumps(line).encode())),
                                purpose="batch")  # fmt: skip
    capture = LinkCapture(urlsplit(platform.stand_in_url).port or 0, tmp_path / "link.pcap")
    try:
        message = [{"role": "user", "content": f"chat {canary}"}]
        answer = await asyncio.to_thread(
            sdk.chat.completions.create, model=chat.name, messages=message, max_tokens=4
        )
        assert answer.choices[0].message.content
        stream = sdk.chat.completions.create(model=chat.name, stream=True, max_tokens=4,
                                             messages=[{"role": "user", "content": f"stream {canary}"}])  # fmt: skip
        assert [c for c in stream]
        vectors = sdk.embeddings.create(model=embed.name, input=f"embedding {canary}")
        assert vectors.data[0].embedding
        batch = sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                   completion_window="24h")  # fmt: skip
        assert (await wait_done(sdk, batch.id)).request_counts.completed == 1
    finally:
        pcap = capture.stop()
    seen = packets(pcap)
    print(f"[capture] gateway→engine link: {len(seen)} packets, {len(pcap)} bytes")
    assert len(seen) > 20  # the four exchanges did cross the link
    for secret in (canary, chat.secret, embed.secret, "Bearer"):
        assert secret.encode() not in pcap, f"{secret[:12]}… crossed the link in clear"
