"""What TLS costs on the serving path: the gateway's own engine client (`Upstream`, which
checks the replica's certificate and name) against the same engine process served over
TLS, versus plain HTTP to a second process of the same engine, same model, same prompts,
same run, rounds alternating.

    python bench/tls.py [--rounds 4] [--max-tokens 64] [--concurrency 1 8]

The engine is souverain's llama.cpp engine (`llamacpp_main`, uvicorn: the embeddings engine
and the stand-in serve TLS the same way) with the built-in SmolLM2; it decodes one request
at a time, so at 8 streams they queue, the same for both. Prints, per concurrency, the
aggregate tokens/s and time to first token p50 with and without TLS, and the ratio / the
difference. Traffic stays on this machine; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import httpx

from souverain.core.fleet import replica_server_name
from souverain.gateway.upstream import Upstream
from souverain.installation import authority
from souverain.node.artifacts import builtin_path
from souverain.testing.live import free_port
from souverain.testing.tls import write_files

SECRET = "bench-secret"
REPLICA = "rep_bench"


def start_engine(port: int, tls: list[str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "souverain.node.engines.llamacpp_main",
            "--model", str(builtin_path("smollm2-135m-instruct")), "--alias", "bench",
            "--host", "127.0.0.1", "--port", str(port), "--threads", "2", "--ctx", "1024", *tls]  # fmt: skip
    env = {**os.environ, "SOUVERAIN_ENGINE_SECRET": SECRET}
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_up(url: str, verify: object) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/v1/models", verify=verify, timeout=2)  # type: ignore[arg-type]
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise SystemExit(f"engine at {url} never answered")


def body(max_tokens: int, i: int) -> bytes:
    return json.dumps({"model": "bench", "stream": True, "max_tokens": max_tokens,
                       "temperature": 0, "seed": i,
                       "messages": [{"role": "user", "content": f"Tell me a story, number {i}."}]}).encode()  # fmt: skip


async def one_stream(post: object, content: bytes) -> tuple[float, int]:
    """(time to first token, tokens) of one streamed chat."""
    started, first, tokens = time.perf_counter(), 0.0, 0
    response = await post(content)  # type: ignore[operator]
    async for line in response.lines():
        if line.startswith("data: {") and '"content"' in line:
            tokens += 1
            first = first or time.perf_counter() - started
    response.close()
    return first, tokens


class Plain:
    """aiohttp in clear, shaped like `Upstream`'s answer for one_stream."""

    def __init__(self, url: str) -> None:
        self.url, self.session = url, aiohttp.ClientSession()

    async def post(self, content: bytes) -> Plain.Answer:
        return Plain.Answer(await self.session.post(self.url, data=content, headers=HEADERS))

    class Answer:
        def __init__(self, response: aiohttp.ClientResponse) -> None:
            self.response = response

        async def lines(self):  # type: ignore[no-untyped-def]
            async for raw in self.response.content:
                yield raw.decode().rstrip("\r\n")

        def close(self) -> None:
            self.response.close()


HEADERS = {"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"}


async def round_of(
    post: object, concurrency: int, max_tokens: int, seed: int
) -> tuple[float, list[float]]:
    started = time.perf_counter()
    results = await asyncio.gather(
        *(one_stream(post, body(max_tokens, seed + i)) for i in range(concurrency))
    )
    wall = time.perf_counter() - started
    return sum(t for _, t in results) / wall, [f for f, _ in results]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    trusted = authority.create()
    files = write_files(
        authority.issue(trusted, replica_server_name(REPLICA)), Path(tempfile.mkdtemp())
    )
    tls_port, plain_port = free_port(), free_port()
    engines = [
        start_engine(
            tls_port, ["--ssl-cert-file", str(files.certificate), "--ssl-key-file", str(files.key)]
        ),
        start_engine(plain_port, []),
    ]
    try:
        verify = httpx.create_ssl_context(verify=False)
        wait_up(f"https://127.0.0.1:{tls_port}", verify)
        wait_up(f"http://127.0.0.1:{plain_port}", True)
        upstream = Upstream(timeout_s=300, authority=trusted.certificate_pem)
        tls_url = f"https://127.0.0.1:{tls_port}/v1/chat/completions"

        async def with_tls(content: bytes) -> object:
            return await upstream.post(
                tls_url, content, HEADERS, server_name=replica_server_name(REPLICA)
            )

        plain = Plain(f"http://127.0.0.1:{plain_port}/v1/chat/completions")
        await round_of(with_tls, 1, 4, 0), await round_of(plain.post, 1, 4, 0)  # warm both
        for concurrency in args.concurrency:
            measured: dict[str, tuple[list[float], list[float]]] = {
                "tls": ([], []),
                "plain": ([], []),
            }
            for r in range(args.rounds):
                order = [("tls", with_tls), ("plain", plain.post)]
                for name, post in order if r % 2 == 0 else order[::-1]:
                    rate, firsts = await round_of(post, concurrency, args.max_tokens, r * 100)
                    measured[name][0].append(rate)
                    measured[name][1].extend(firsts)
            rate = {k: statistics.median(v[0]) for k, v in measured.items()}
            ttft = {k: statistics.median(v[1]) * 1000 for k, v in measured.items()}
            print(f"{concurrency} stream(s): tokens/s tls {rate['tls']:.1f} plain {rate['plain']:.1f} "
                  f"(ratio {rate['tls'] / rate['plain']:.3f}); TTFT p50 tls {ttft['tls']:.1f} ms "
                  f"plain {ttft['plain']:.1f} ms (+{ttft['tls'] - ttft['plain']:.1f} ms)")  # fmt: skip
        await upstream.close()
        await plain.session.close()
    finally:
        for engine in engines:
            engine.terminate()
            engine.wait(timeout=30)


if __name__ == "__main__":
    asyncio.run(main())
