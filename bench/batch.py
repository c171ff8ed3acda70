"""Batches against the best plain client, on `souverain up` (llama.cpp serving SmolLM2).

    python bench/batch.py [--requests 80] [--max-tokens 16] [--upload-mib 128] [--rounds 1]

1. The same N chat requests sent by concurrent openai SDK calls, at the concurrency (1, 2,
   4) that gives the most tokens/s, and then as one batch (create → completed): batch
   tokens/s ÷ best-client tokens/s; with `--rounds R`, R rounds of both in turn, and the
   median of the rounds' ratios (each round against its own best client, since the
   machine's speed drifts between rounds).
2. Live latency (p50 of sequential requests) while a batch runs ÷ without one.
3. Upload throughput of a file through /v1/files (parsed, hashed, encrypted, stored)
   ÷ a plain copy of the same file on the same disk.
Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import signal
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import openai
from e2e_tokens import MODEL, first_token_after_start, start_up

from souverain.testing.live import free_port


def chat(i: int, max_tokens: int) -> dict[str, object]:
    return {"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
            "messages": [{"role": "user", "content": f"Write about the number {i}."}]}  # fmt: skip


async def clients(sdk: openai.AsyncOpenAI, n: int, concurrency: int, max_tokens: int) -> float:
    """Tokens/s of `n` requests sent `concurrency` at a time."""
    gate = asyncio.Semaphore(concurrency)
    tokens = 0

    async def one(i: int) -> None:
        nonlocal tokens
        async with gate:
            answer = await sdk.chat.completions.create(**chat(i, max_tokens))  # type: ignore[call-overload]
            tokens += answer.usage.completion_tokens

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return tokens / (time.perf_counter() - started)


def batch_file(n: int, max_tokens: int) -> bytes:
    return b"".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": chat(i, max_tokens)}).encode() + b"\n"
        for i in range(n)
    )  # fmt: skip


async def run_batch(sdk: openai.AsyncOpenAI, n: int, max_tokens: int) -> tuple[float, str]:
    uploaded = await sdk.files.create(file=("b.jsonl", io.BytesIO(batch_file(n, max_tokens))),
                                      purpose="batch")  # fmt: skip
    started = time.perf_counter()
    batch = await sdk.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                                     completion_window="24h")  # fmt: skip
    deadline = time.monotonic() + 1800
    while batch.status not in ("completed", "failed", "cancelled", "expired"):
        if time.monotonic() > deadline:
            raise SystemExit("the batch did not finish in 30 minutes")
        await asyncio.sleep(0.25)
        batch = await sdk.batches.retrieve(batch.id)
    took = time.perf_counter() - started
    content = await sdk.files.content(batch.output_file_id)
    tokens = sum(
        json.loads(line)["response"]["body"]["usage"]["completion_tokens"]
        for line in content.read().splitlines()
    )
    return tokens / took, batch.id


async def live_p50(sdk: openai.AsyncOpenAI, rounds: int, max_tokens: int) -> float:
    latencies = []
    for i in range(rounds):
        started = time.perf_counter()
        await sdk.chat.completions.create(**chat(1000 + i, max_tokens))  # type: ignore[call-overload]
        latencies.append(time.perf_counter() - started)
    return statistics.median(latencies)


async def uploads(sdk: openai.AsyncOpenAI, directory: Path, mib: int) -> tuple[float, float]:
    source = directory / "upload.bin"
    with source.open("wb") as handle:
        for _ in range(mib):
            handle.write(os.urandom(2**20))
    started = time.perf_counter()
    shutil.copyfile(source, directory / "copy.bin")
    os.sync()
    copy_s = time.perf_counter() - started
    started = time.perf_counter()
    with source.open("rb") as handle:
        await sdk.files.create(file=("upload.bin", handle), purpose="user_data")
    upload_s = time.perf_counter() - started
    return mib / upload_s, mib / copy_s


async def tenant_key(url: str, operator: str) -> str:
    """Files and batches belong to an organisation: a tenant's owner key."""
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {operator}"}
    ) as c:
        (
            await c.post("/api/orgs", json={"name": "bench", "owner": "bench-owner"})
        ).raise_for_status()
        minted = await c.post(
            "/api/keys", json={"org": "bench", "user": "bench-owner", "role": "owner"}
        )
        minted.raise_for_status()
        return str(minted.json()["key"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--requests", type=int, default=80)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--live-rounds", type=int, default=12)
    parser.add_argument("--upload-mib", type=int, default=128)
    parser.add_argument(
        "--rounds", type=int, default=1, help="plain clients, then a batch, R times"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        data_dir, port = Path(tmp) / "data", free_port()
        url = f"http://127.0.0.1:{port}"
        process, output = start_up(data_dir, port, Path(tmp) / "cli.json")
        try:
            operator, _ = await first_token_after_start(
                url, output, process, time.perf_counter(), Path(tmp) / "cli.json"
            )
            key = await tenant_key(url, operator)
            sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
            measured = []  # per round: the plain clients' rates, the batch's
            for _ in range(args.rounds):
                rates = {c: await clients(sdk, args.requests, c, args.max_tokens)
                         for c in (1, 2, 4)}  # fmt: skip
                measured.append((rates, (await run_batch(sdk, args.requests, args.max_tokens))[0]))
            quiet = await live_p50(sdk, args.live_rounds, args.max_tokens)
            running = asyncio.create_task(run_batch(sdk, args.requests, args.max_tokens))
            await asyncio.sleep(2.0)  # the batch is running
            busy = await live_p50(sdk, args.live_rounds, args.max_tokens)
            await running
            up_rate, copy_rate = await uploads(sdk, Path(tmp), args.upload_mib)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(60)
    print(
        f"{args.requests} requests, max_tokens={args.max_tokens}, souverain up (llama.cpp, SmolLM2)"
    )
    ratios = []
    for n, (rates, batch_rate) in enumerate(measured):
        best = max(rates, key=rates.__getitem__)
        ratios.append(batch_rate / rates[best])
        if len(measured) > 1:
            print(f"  round {n}:")
        for concurrency, rate in rates.items():
            print(f"  plain client, concurrency {concurrency}: {rate:7.1f} tokens/s")
        print(f"  one batch:                         {batch_rate:7.1f} tokens/s "
              f"(ratio to the best client, concurrency {best}: {ratios[-1]:.3f})")  # fmt: skip
    if len(ratios) > 1:
        print(f"one batch ÷ the best plain client: median of {len(ratios)} rounds "
              f"{statistics.median(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)})")  # fmt: skip
    print(f"live p50 latency: {quiet * 1000:.0f} ms alone, {busy * 1000:.0f} ms while a batch runs "
          f"(ratio {busy / quiet:.2f})")  # fmt: skip
    print(
        f"upload {args.upload_mib} MiB: {up_rate:.0f} MiB/s through /v1/files (parsed, hashed, "
        f"encrypted, stored) vs {copy_rate:.0f} MiB/s plain copy (ratio {up_rate / copy_rate:.2f})"
    )


if __name__ == "__main__":
    asyncio.run(main())
