"""Fine-tuning through souverain against the same recipe run by hand, on the same machine.

    python bench/fine_tuning.py [--samples 64] [--steps 40] [--seq-len 128] [--rounds 1]

1. A job on `souverain up` (upload, create, wait; the built-in SmolLM2, LoRA): training
   tokens/s in steady state (from the step events), time from "job created" to its first
   step, energy per 1,000 training tokens.
2. The same recipe, config and data run by hand: `python -m souverain.training.sft
   SPEC.json` (TRL's SFTTrainer with PEFT; no server, no Ray, no encryption), once beside
   the still running (idle) `souverain up`, once after it has stopped.
Prints souverain tokens/s ÷ by-hand tokens/s (goal ≥ 0.95: the platform costs nothing
once training runs). Every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai
from batch import tenant_key
from e2e_tokens import MODEL, first_token_after_start, start_up

from souverain.node.artifacts import builtin_path
from souverain.testing.live import free_port

THREADS = 2  # the by-hand run's, and the CPUs the job reserves


def samples(n: int) -> bytes:
    return b"".join(
        json.dumps({"messages": [
            {"role": "user", "content": f"Tell me something about the number {i}."},
            {"role": "assistant", "content": f"The number {i} is {'even' if i % 2 == 0 else 'odd'}; "
                                             f"twice it is {2 * i} and its square is {i * i}."}]}).encode()
        + b"\n"
        for i in range(n)
    )  # fmt: skip


def steady_rate(steps: list[dict[str, Any]]) -> float:
    """The recipe's own figure at the last step: tokens since the first step ÷ time since
    (the first step, with its warm-up, is left out), the same for both runs."""
    if len(steps) < 3:
        raise SystemExit("too few steps to measure; use --steps 10 or more")
    return float(steps[-1]["tokens_per_s"])


async def through_souverain(args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    data_dir, port = tmp / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    # the job computes on the CPUs it reserves: as many as the by-hand run's threads
    process, output = start_up(data_dir, port, tmp / "cli.json",
                               settings={"SOUVERAIN_FINETUNE_CPUS": str(THREADS)})  # fmt: skip
    try:
        operator, _ = await first_token_after_start(
            url, output, process, time.perf_counter(), tmp / "cli.json"
        )
        key = await tenant_key(url, operator)
        sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)
        uploaded = await sdk.files.create(
            file=("bench.jsonl", io.BytesIO(samples(args.samples))), purpose="fine-tune"
        )
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                     timeout=60) as http:  # fmt: skip
            created_at = time.time()
            created = await http.post("/v1/fine_tuning/jobs", json={
                "model": MODEL, "training_files": [{"file_id": uploaded.id}],
                "hyperparameters": {"training_steps": args.steps, "learning_rate": 2e-4,
                                    "seq_len": args.seq_len, "warmup_fraction": 0,
                                    "weight_decay": 0}})  # fmt: skip
            created.raise_for_status()
            job_id = created.json()["id"]
            deadline = time.monotonic() + 1800
            while (job := (await http.get(f"/v1/fine_tuning/jobs/{job_id}")).json())[
                "status"
            ] not in ("SUCCESS", "FAILED", "CANCELLED"):
                if time.monotonic() > deadline:
                    raise SystemExit("the job did not finish in 30 minutes")
                await asyncio.sleep(1.0)
            if job["status"] != "SUCCESS":
                raise SystemExit(f"the job ended {job['status']}: {job['souverain']}")
            events = (await http.get(f"/v1/fine_tuning/jobs/{job_id}/events",
                                     params={"limit": 1000})).json()["data"]  # fmt: skip
        await asyncio.sleep(5.0)  # the fine-tuned model's replica has started: all idle now
        beside = await asyncio.to_thread(by_hand, args, tmp, "beside")
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(90)
    steps = sorted(
        ({"tokens_per_s": e["data"]["tokens_per_s"], "at": e["created_at"],
          "step": e["data"]["step"]}
         for e in events if e["type"] == "metrics" and e["data"] and "tokens" in e["data"]),
        key=lambda s: s["step"],
    )  # fmt: skip
    rate = steady_rate(steps)
    first_step = min(s["at"] for s in steps) - created_at
    extra = job["souverain"]
    return {
        "tokens_per_s": rate,
        "created_to_first_step_s": first_step,
        "joules_per_1000_tokens": extra["energy_j"] / max(extra["tokens"], 1) * 1000,
        "tokens": extra["tokens"],
        "energy_j": extra["energy_j"],
        "by_hand_beside_up": beside,
    }


def by_hand(args: argparse.Namespace, tmp: Path, name: str = "hand") -> float:
    model = builtin_path(MODEL)
    data = tmp / f"{name}.jsonl"
    data.write_bytes(samples(args.samples))
    out = tmp / f"{name}-out"
    spec = {
        "base": {"path": str(model.parent), "gguf_file": model.name},
        "train": str(data), "valid": None, "output_dir": str(out), "resume_from": None,
        "hyperparameters": {"max_steps": args.steps, "batch_size": min(8, args.samples),
                            "learning_rate": 2e-4, "seq_len": args.seq_len,
                            "save_steps": max(1, -(-args.steps // 4))},
        "threads": THREADS,
    }  # fmt: skip
    (tmp / f"{name}.json").write_text(json.dumps(spec))
    subprocess.run([sys.executable, "-m", "souverain.training.sft", str(tmp / f"{name}.json")],
                   check=True, capture_output=True, timeout=1800)  # fmt: skip
    lines = [json.loads(line) for line in (out / "progress.jsonl").read_text().splitlines()]
    steps = [e for e in lines if e["type"] == "step"]
    return steady_rate(steps)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    platform, hand = [], []
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            platform.append(await through_souverain(args, Path(tmp)))
            hand.append(by_hand(args, Path(tmp)))
    rate = statistics.median(p["tokens_per_s"] for p in platform)
    base = statistics.median(hand)
    print(f"{args.samples} samples, {args.steps} steps, batch {min(8, args.samples)}, "
          f"seq_len {args.seq_len}, LoRA on {MODEL} (CPU), {args.rounds} round(s)")  # fmt: skip
    print(f"  by hand (python -m souverain.training.sft):  {base:7.1f} training tokens/s")
    print(f"  souverain job on `souverain up`:            {rate:7.1f} training tokens/s "
          f"(ratio {rate / base:.3f})")  # fmt: skip
    beside = statistics.median(p["by_hand_beside_up"] for p in platform)
    print(f"  by hand beside an idle `souverain up`:       {beside:7.1f} training tokens/s "
          f"(ratio of the job to it {rate / beside:.3f})")  # fmt: skip
    print(f"  job created -> first step: "
          f"{statistics.median(p['created_to_first_step_s'] for p in platform):.1f} s")  # fmt: skip
    print(f"  energy: {statistics.median(p['joules_per_1000_tokens'] for p in platform):.1f} J "
          f"per 1,000 training tokens ({platform[-1]['energy_j']:.0f} J for "
          f"{platform[-1]['tokens']} tokens; CPU-time estimate unless RAPL/NVML are readable)")  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
