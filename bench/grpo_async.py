"""What asynchronous generation buys: the string_check GRPO job of
bench/grpo_string_check.py run synchronously and with `max_staleness` k, alternating in
the same run (sync, async, sync, async, ...), so both see the same machine load.

    python bench/grpo_async.py [--steps 6] [--rounds 2] [--staleness 1] [--threads 2]
        [--batch-size 2] [--group-size 8] [--max-tokens 32]

Prints per run: steps/minute and generated tokens/s over the steps (loading excluded),
and for async the staleness and the seconds the trainer waited for rollouts and the
generator for the trainer; then the async/sync ratios of the medians, and the load
average before and after (the machine may be shared: read the ratio beside it). Writes
bench/results/grpo_async.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from e2e_tokens import MODEL  # noqa: E402
from grpo_string_check import GRADER, HYPER, lines  # noqa: E402

from souverain.node.artifacts import builtin_path  # noqa: E402


def one_run(steps: int, staleness: int, threads: int, shape: dict[str, int]) -> dict[str, Any]:
    gguf = builtin_path(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "train.jsonl").write_bytes(lines())
        spec = {"base": {"path": str(gguf.parent), "gguf_file": gguf.name},
                "train": str(Path(tmp) / "train.jsonl"), "valid": None,
                "output_dir": str(Path(tmp) / "out"), "resume_from": None, "threads": threads,
                "grader": GRADER, "init_adapter": None,
                "hyperparameters": {"max_steps": steps, "seq_len": 256, "save_steps": steps,
                                    "max_staleness": staleness, **HYPER, **shape}}  # fmt: skip
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        subprocess.run([sys.executable, "-m", "souverain.training.grpo", str(Path(tmp) / "spec.json")],
                       check=True, timeout=3600)  # fmt: skip
        events = [
            json.loads(x) for x in (Path(tmp) / "out" / "progress.jsonl").read_text().splitlines()
        ]
    rows = [e for e in events if e["type"] == "step"]
    seconds = sum(r["step_s"] for r in rows)
    return {
        "staleness": staleness,
        "steps_per_min": round(len(rows) / seconds * 60, 2),
        "tokens_per_s": round(sum(r["generated_tokens"] for r in rows) / seconds, 1),
        "rewarded_last": rows[-1]["correct_rate"],
        "staleness_max": max((r.get("staleness_max", 0) for r in rows), default=0),
        "staleness_mean": round(statistics.fmean(r.get("staleness_mean", 0) for r in rows), 3),
        "trainer_wait_s": round(sum(r.get("trainer_wait_s", 0) for r in rows), 2),
        "generator_wait_s": round(sum(r.get("generator_wait_s", 0) for r in rows), 2),
        "rollout_s": round(sum(r["rollout_s"] for r in rows), 2),
        "train_s": round(sum(r["train_s"] for r in rows), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--staleness", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=HYPER["batch_size"])
    parser.add_argument("--group-size", type=int, default=HYPER["group_size"])
    parser.add_argument("--max-tokens", type=int, default=HYPER["max_tokens"])
    args = parser.parse_args()
    shape = {"batch_size": args.batch_size, "group_size": args.group_size,
             "max_tokens": args.max_tokens, "minibatches": min(args.batch_size, 2),
             "length_cache": min(8, args.max_tokens // 2)}  # fmt: skip
    load_before = os.getloadavg()
    runs = []
    for _ in range(args.rounds):
        for staleness in (0, args.staleness):
            run = one_run(args.steps, staleness, args.threads, shape)
            runs.append(run)
            print(json.dumps(run), flush=True)
    load_after = os.getloadavg()
    sync = [r for r in runs if r["staleness"] == 0]
    async_ = [r for r in runs if r["staleness"] > 0]
    ratio = {key: round(statistics.median(r[key] for r in async_)
                        / statistics.median(r[key] for r in sync), 3)
             for key in ("steps_per_min", "tokens_per_s")}  # fmt: skip
    print(f"async/sync (medians): steps/min ×{ratio['steps_per_min']}, "
          f"tokens/s ×{ratio['tokens_per_s']}; load average before {load_before[0]:.1f}, "
          f"after {load_after[0]:.1f} on {os.cpu_count()} cores")  # fmt: skip
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "grpo_async.json").write_text(json.dumps({
        "runs": runs, "ratio": ratio, "load_before": load_before, "load_after": load_after,
        "steps": args.steps, "threads": args.threads, "shape": shape}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
