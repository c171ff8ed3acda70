"""End to end: `souverain up` time to first token, then single-stream tokens/s and time to
first token through souverain versus straight to the llama.cpp engine, same prompt, same
run, alternating order.

    python bench/e2e_tokens.py [--rounds 8] [--max-tokens 128] [--concurrency 1 4]

Prints medians and the ratio souverain / direct (1.00 means no cost); at concurrency > 1
also the aggregate tokens/s of the parallel streams (llama.cpp serves one request at a
time, so they queue). Traffic stays on this machine; every loop is bounded.

    python bench/e2e_tokens.py --engines [--rounds 4] [--concurrency 1 4 16]

compares the serving engines instead, same run, same prompts, rounds alternating:
(a) through souverain (`souverain up` with the llama-server runtime), (b) straight to that
replica's engine, (c) a plain `llama-server` started by hand with the same slots and
llama.cpp's own defaults, (d) the llama-cpp-python engine. Aggregate tokens/s and time to
first token p50/p99 at each concurrency, the ratios a/c and a/d; then fairness (one
tenant streams 16 at once, another 1: the second's time to first token against idle;
`--fairness [--rounds 3]` measures only that, a round at a time),
and prefix reuse (a long shared system prompt: a tenant's first request, which may not
reuse another's cache, against its next ones).

    python bench/e2e_tokens.py --builds WHEELDIR WHEELDIR…

compares llama.cpp builds instead (folders made by scripts/build-llamacpp, each holding a
wheel and the CMAKE_ARGS it was built with): one engine per build, same model, same
prompt, rounds alternating, single-stream tokens/s and the ratio of each build to the
first. A build that cannot run on this CPU is reported with how it died.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
from _processes import spawn

from souverain.core.ids import replica_secret
from souverain.testing.live import free_port

MODEL = "smollm2-135m-instruct"
KEY_RE = re.compile(r"sk-souv-[0-9a-f]{16}_[A-Za-z0-9_-]{43}")
PROMPT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


@dataclass
class Sample:
    ttft_s: float
    tokens: int
    decode_s: float

    @property
    def tokens_per_s(self) -> float:
        return (self.tokens - 1) / self.decode_s if self.decode_s > 0 and self.tokens > 1 else 0.0


async def stream_once(
    client: httpx.AsyncClient, url: str, key: str, max_tokens: int,
    messages: list[dict[str, str]] | None = None,
) -> Sample:  # fmt: skip
    body = {
        "model": MODEL,
        "messages": messages or PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    first = last = 0.0
    pieces = 0
    headers = {"Authorization": f"Bearer {key}"}
    async with client.stream(
        "POST", url + "/v1/chat/completions", json=body, headers=headers
    ) as response:
        if response.status_code >= 400:
            await response.aread()  # the refusal's reason, for whoever catches it
            response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and (chunk["choices"][0].get("delta") or {}).get("content"):
                last = time.perf_counter()
                first = first or last
                pieces += 1
    return Sample(ttft_s=first - started, tokens=pieces, decode_s=last - first)


def start_up(
    data_dir: Path,
    port: int,
    config: Path,
    runtime: str | None = None,
    settings: dict[str, str] | None = None,
) -> tuple[subprocess.Popen[str], list[str]]:
    """`souverain up` in its own session; `settings` are SOUVERAIN_* variables it runs with."""
    env = {**os.environ, "SOUVERAIN_CONFIG": str(config), "PYTHONUNBUFFERED": "1"}
    env.update(settings or {})
    if runtime:
        env["SOUVERAIN_LLAMACPP_RUNTIME"] = runtime
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "souverain.cli.main",
            "up",
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return process, []


def saved_key(config: Path) -> str | None:
    return json.loads(config.read_text()).get("api_key") if config.exists() else None


async def first_token_after_start(
    url: str, output: list[str], process: subprocess.Popen[str], started: float, config: Path
) -> tuple[str, float]:
    """The operator key (`souverain up` saves it to `config` and prints it only to a
    terminal) and the seconds from `started` to the first streamed token."""
    loop = asyncio.get_running_loop()
    assert process.stdout is not None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = await loop.run_in_executor(None, process.stdout.readline)
        output.append(line)
        if "souverain is up" in line or not line:
            break
    key = saved_key(config)
    if not key or not KEY_RE.fullmatch(key):
        raise SystemExit("no operator key saved by souverain up:\n" + "".join(output[-40:]))
    async with httpx.AsyncClient(timeout=120) as client:
        while time.monotonic() < deadline:
            try:
                sample = await stream_once(client, url, key, 1)
                if sample.tokens:
                    return key, time.perf_counter() - started
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit("souverain up never produced a token")


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--builds", type=Path, nargs="+", help="compare llama.cpp builds")
    parser.add_argument("--engines", action="store_true", help="compare serving engines")
    parser.add_argument(
        "--fairness", action="store_true", help="only tenant Y's TTFT beside X's 16 streams"
    )
    args = parser.parse_args()
    if args.fairness:
        from serving import fairness_alone

        await fairness_alone(args.rounds, args.max_tokens)
        return
    if args.builds:
        await compare_builds(args.builds, args.rounds, args.max_tokens)
        return
    if args.engines:
        from serving import compare_engines

        await compare_engines(args.rounds, args.max_tokens, args.concurrency)
        return

    with tempfile.TemporaryDirectory() as tmp:
        data_dir, port = Path(tmp) / "data", free_port()
        url = f"http://127.0.0.1:{port}"
        started = time.perf_counter()
        process, output = start_up(data_dir, port, Path(tmp) / "cli.json")
        try:
            key, to_first_token = await first_token_after_start(
                url, output, process, started, Path(tmp) / "cli.json"
            )
            print(f"souverain up (fresh data dir) → first streamed token: {to_first_token:.1f} s")
            with sqlite3.connect(data_dir / "souverain.db") as db:
                replica_id, engine_url = db.execute(
                    "SELECT id, url FROM replicas WHERE state='ready'"
                ).fetchone()
            engine_key = replica_secret(
                (data_dir / "secret.key").read_text().strip().encode(), replica_id
            )
            results = {}
            async with httpx.AsyncClient(timeout=300) as client:
                await stream_once(client, engine_url, engine_key, 8)  # warm both paths
                await stream_once(client, url, key, 8)
                for concurrency in args.concurrency:
                    results[concurrency] = await compare(
                        client,
                        [(engine_url, engine_key), (url, key)],
                        args.rounds,
                        args.max_tokens,
                        concurrency,
                    )
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)

    for concurrency, ((direct, direct_rate), (gateway, gateway_rate)) in results.items():
        report(
            concurrency, args.rounds, args.max_tokens, direct, gateway, direct_rate, gateway_rate
        )


async def compare(
    client: httpx.AsyncClient,
    targets: list[tuple[str, str]],
    rounds: int,
    max_tokens: int,
    concurrency: int,
) -> list[tuple[list[Sample], float]]:
    """Alternate the targets round by round; each round runs `concurrency` streams at once."""
    samples: list[list[Sample]] = [[] for _ in targets]
    tokens = [0 for _ in targets]
    seconds = [0.0 for _ in targets]
    for round_ in range(rounds):
        order = list(range(len(targets)))
        for index in order if round_ % 2 == 0 else order[::-1]:
            url, secret = targets[index]
            started = time.perf_counter()
            batch = await asyncio.gather(
                *(stream_once(client, url, secret, max_tokens) for _ in range(concurrency))
            )
            seconds[index] += time.perf_counter() - started
            tokens[index] += sum(s.tokens for s in batch)
            samples[index] += batch
    return [(samples[i], tokens[i] / seconds[i]) for i in range(len(targets))]


def report(
    concurrency: int, rounds: int, max_tokens: int, direct: list[Sample], gateway: list[Sample],
    direct_rate: float, gateway_rate: float,
) -> None:  # fmt: skip
    def med(samples: list[Sample], attr: str) -> float:
        return float(statistics.median(getattr(s, attr) for s in samples))

    print(f"concurrency {concurrency}, {rounds} rounds, max_tokens={max_tokens}, medians:")
    print(f"  {'':26}{'direct':>10}{'souverain':>12}{'ratio':>8}")
    d_tps, g_tps = med(direct, "tokens_per_s"), med(gateway, "tokens_per_s")
    d_ttft, g_ttft = med(direct, "ttft_s") * 1000, med(gateway, "ttft_s") * 1000
    print(f"  {'tokens/s per stream':26}{d_tps:10.1f}{g_tps:12.1f}{g_tps / d_tps:8.3f}")
    print(
        f"  {'tokens/s, all streams':26}{direct_rate:10.1f}{gateway_rate:12.1f}{gateway_rate / direct_rate:8.3f}"
    )
    print(f"  {'time to first token ms':26}{d_ttft:10.1f}{g_ttft:12.1f}{g_ttft / d_ttft:8.3f}")


async def compare_builds(builds: list[Path], rounds: int, max_tokens: int) -> None:
    from souverain.node.artifacts import builtin_path

    secret = "bench-secret"
    with tempfile.TemporaryDirectory() as tmp:
        engines: list[tuple[str, str, subprocess.Popen[bytes]]] = []
        for index, build in enumerate(builds):
            [wheel] = build.glob("llama_cpp_python-*.whl")
            site = Path(tmp) / f"build-{index}"
            with zipfile.ZipFile(wheel) as archive:
                archive.extractall(site)
            flags = (build / "CMAKE_ARGS").read_text().strip()
            port = free_port()
            process = spawn(
                [sys.executable, "-m", "souverain.node.engines.llamacpp_main", "--model",
                 str(builtin_path(MODEL)), "--alias", MODEL, "--host", "127.0.0.1",
                 "--port", str(port), "--threads", str(os.cpu_count() or 2)],
                env={"PYTHONPATH": str(site), "SOUVERAIN_ENGINE_SECRET": secret},
            )  # fmt: skip
            engines.append((flags, f"http://127.0.0.1:{port}", process))
        try:
            runnable = []
            async with httpx.AsyncClient(timeout=300) as client:
                for flags, url, process in engines:
                    if await _answers(client, url, secret, process):
                        runnable.append((flags, url))
                    else:
                        print(f"build {flags}: cannot run here (exit code {process.returncode})")
                samples: dict[str, list[Sample]] = {flags: [] for flags, _ in runnable}
                for round_ in range(rounds):
                    order = runnable if round_ % 2 == 0 else runnable[::-1]
                    for flags, url in order:
                        samples[flags].append(await stream_once(client, url, secret, max_tokens))
        finally:
            for _, _, process in engines:
                process.terminate()
                process.wait(30)
    if not runnable:
        return
    base = statistics.median(s.tokens_per_s for s in samples[runnable[0][0]])
    print(f"llama.cpp builds, {rounds} rounds, max_tokens={max_tokens}, single stream:")
    for flags, _ in runnable:
        rate = statistics.median(s.tokens_per_s for s in samples[flags])
        print(f"  {rate:7.1f} tokens/s  ratio {rate / base:5.3f}  {flags}")


async def _answers(
    client: httpx.AsyncClient, url: str, secret: str, process: subprocess.Popen[bytes]
) -> bool:
    """Whether the engine produces a token (a build it cannot run dies trying)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            sample = await stream_once(client, url, secret, 2)
            if sample.tokens:
                return True
        except httpx.HTTPError:
            await asyncio.sleep(0.2)
    process.wait(10)
    return False


if __name__ == "__main__":
    asyncio.run(main())
