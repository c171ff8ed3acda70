"""Many fine-tuned models on one engine: resident memory and aggregate throughput.

    python bench/shared_adapters.py --adapters 20 --streams 8 --rounds 3 --tokens 48

Starts llama-server (the node's build) on the built-in SmolLM2 GGUF three ways, one after
the other, and reads each process's resident memory once it has answered:
  (a) the base alone (the baseline);
  (b) one replica with one adapter (what each fine-tuned model costs today, dedicated:
      N of these);
  (c) one shared replica holding N adapters (`--lora-init-without-apply`, one `--lora`
      each), as souverain starts it.
Then, on (c), rounds alternate `streams` concurrent completions on the base model alone
with the same load spread over the N adapters (each request names its adapter, as the
gateway writes it), and compare aggregate tokens/s. The adapters are random, rank 8 on
the four attention projections, the shape of souverain's supervised fine-tuning on
SmolLM2-135M (9.4 MB each as GGUF).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from _processes import spawn, wait_http

from souverain.node.artifacts import builtin_path
from souverain.node.engines import llama_server
from souverain.testing.live import free_port
from souverain.training import lora_gguf

PROMPT = "Write a short story about a lighthouse keeper."
SHAPES = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576)}


def adapter(directory: Path, seed: int, rank: int = 8) -> Path:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    tensors = {}
    for layer in range(30):
        for name, (out, inp) in SHAPES.items():
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{name}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.02, (rank, inp)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.02, (out, rank)).astype(np.float32)
    peft = directory / f"peft-{seed}"
    peft.mkdir()
    save_file(tensors, str(peft / "adapter_model.safetensors"))
    (peft / "adapter_config.json").write_text(json.dumps({"r": rank, "lora_alpha": 16}))
    out = directory / f"adapter-{seed}.gguf"
    lora_gguf.convert(peft, out, architecture="llama", n_layers=30, n_heads=9, n_kv_heads=3)
    return out


def argv(port: int, slots: int, adapters: list[Path], *, apply: bool) -> list[str]:
    binary = llama_server.binary()
    if binary is None:
        raise SystemExit("no llama-server: make setup builds it")
    command = [str(binary), "--model", str(builtin_path("smollm2-135m-instruct")),
               "--host", "127.0.0.1", "--port", str(port), "--threads", "2",
               "--parallel", str(slots), "--ctx-size", str(1024 * slots), "--no-kv-unified",
               "--cache-ram", "0", "--no-webui", "--no-warmup"]  # fmt: skip
    if adapters and not apply:
        command.append("--lora-init-without-apply")
    for path in adapters:
        command += ["--lora", str(path)]
    return command


async def complete(client: httpx.AsyncClient, url: str, tokens: int, lora: int | None) -> int:
    body: dict[str, object] = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0,
                               "ignore_eos": True}  # fmt: skip
    if lora is not None:
        body["lora"] = [{"id": lora, "scale": 1.0}]
    answer = (await client.post(f"{url}/v1/completions", json=body)).json()
    return int(answer["usage"]["completion_tokens"])


async def started(command: list[str], port: int) -> tuple[object, float]:
    """The process, and its resident memory in MiB once it has answered one request."""
    process = spawn(command)
    url = f"http://127.0.0.1:{port}"
    await wait_http(f"{url}/health")
    async with httpx.AsyncClient(timeout=300) as client:
        for _ in range(600):
            if (await client.get(f"{url}/health")).status_code == 200:
                break
            await asyncio.sleep(0.2)
        await complete(client, url, 4, None)
    return process, psutil.Process(process.pid).memory_info().rss / 2**20


async def throughput(url: str, streams: int, tokens: int, loras: list[int | None]) -> float:
    async with httpx.AsyncClient(timeout=600) as client:
        began = time.perf_counter()
        done = await asyncio.gather(
            *(complete(client, url, tokens, loras[i % len(loras)]) for i in range(streams))
        )
        return sum(done) / (time.perf_counter() - began)


async def main(count: int, streams: int, rounds: int, tokens: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        paths = [adapter(Path(tmp), seed) for seed in range(count)]
        memory = {}
        for name, files, apply in (("base", [], False), ("dedicated", paths[:1], True)):
            port = free_port()
            process, memory[name] = await started(argv(port, streams, files, apply=apply), port)
            process.terminate()  # type: ignore[attr-defined]
            process.wait()  # type: ignore[attr-defined]
        port = free_port()
        process, memory["shared"] = await started(argv(port, streams, paths, apply=False), port)
        try:
            url, base, spread = f"http://127.0.0.1:{port}", [], []
            for _ in range(rounds):
                base.append(await throughput(url, streams, tokens, [None]))
                spread.append(await throughput(url, streams, tokens, list(range(count))))
        finally:
            process.terminate()  # type: ignore[attr-defined]
    print(f"resident MiB: base {memory['base']:.0f}, one dedicated replica "
          f"{memory['dedicated']:.0f} (x{count}: {count * memory['dedicated']:.0f}), "
          f"shared with {count} adapters {memory['shared']:.0f}")  # fmt: skip
    print(
        f"  shared / base = {memory['shared'] / memory['base']:.2f}; "
        f"dedicated x{count} / base = {count * memory['dedicated'] / memory['base']:.1f}"
    )
    b, s = statistics.median(base), statistics.median(spread)
    print(
        f"aggregate tokens/s, {streams} streams (median of {rounds}): base alone {b:.1f}, "
        f"spread over {count} adapters {s:.1f}, ratio {s / b:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", type=int, default=20)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    options = parser.parse_args()
    asyncio.run(main(options.adapters, options.streams, options.rounds, options.tokens))
