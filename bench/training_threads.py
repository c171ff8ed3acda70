"""A training step's time on 1 and on 2 threads, alone and beside a busy process, as a
training worker runs it: the built-in SmolLM2 dequantised to float32, forward and backward
on a batch of 4 × 64 tokens, at the workers' niceness (10) below the busy process (0).

    python bench/training_threads.py [--steps 5]

Torch waits at each operation for its slowest thread. On a machine whose cores are all
given to the worker's threads, one busy process of higher priority (an engine serving, the
API) starves one of them and every step waits on it. Prints each case's seconds a step and
its ratio to the same thread count alone, all measured in this run: why a worker computes
on as many threads as the CPUs its job reserved (`jobs/fine_tuning/queued.py`).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from e2e_tokens import MODEL

from souverain.node.artifacts import builtin_path
from souverain.node.training_job import TRAINING_NICENESS


def step_seconds(threads: int, steps: int) -> float:
    """Seconds a step, measured in a child process at the workers' niceness."""
    gguf = builtin_path(MODEL)
    code = (
        "import os, sys, time, torch\n"
        "from souverain.training.sft import load_model\n"
        f"os.nice({TRAINING_NICENESS})\n"
        f"torch.set_num_threads({threads})\n"
        f"model = load_model({{'path': {str(gguf.parent)!r}, 'gguf_file': {gguf.name!r}}})\n"
        "x = torch.randint(0, 1000, (4, 64))\n"
        "model(input_ids=x, labels=x).loss.backward()  # warm\n"
        "started = time.monotonic()\n"
        f"for _ in range({steps}):\n"
        "    model(input_ids=x, labels=x).loss.backward()\n"
        f"print((time.monotonic() - started) / {steps})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=1800, check=True
    )
    return float(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; {MODEL}, batch 4 x 64 tokens, niceness {TRAINING_NICENESS}")
    alone = {threads: step_seconds(threads, args.steps) for threads in (1, 2)}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # niceness 0
    try:
        beside = {threads: step_seconds(threads, args.steps) for threads in (1, 2)}
    finally:
        busy.kill()
        busy.wait()
    for threads in (1, 2):
        print(
            f"{threads} thread(s): {alone[threads]:.2f} s a step alone, "
            f"{beside[threads]:.2f} s beside a busy process "
            f"({beside[threads] / alone[threads]:.1f}x)"
        )
    print(f"beside a busy process, 2 threads ÷ 1 thread: {beside[2] / beside[1]:.1f}x the time")


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"({time.monotonic() - started:.0f} s in all)")
