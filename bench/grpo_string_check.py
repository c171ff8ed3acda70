"""Learning an unambiguous reward stays fast: GRPO with a `string_check` grader that the
base model earns about a fifth of the time, by hand (no server), 20 steps.

    python bench/grpo_string_check.py [--steps 20] [--threads 2] [--temperature 0.8] [--seed 0]
                                      [--calibrate]

The task: asked to name a fruit, the answer must contain "apple" (`ilike`); SmolLM2-135M
without an adapter names one sometimes. Prints the share of completions earning the reward
per step (goal: at least 0.9 within 20 steps) and the on-policy metrics of each step
(informative groups, refills, the rollout/trainer log-probability gap). `--calibrate`
only samples 32 completions of the prompt at the job's temperature and prints the share.
Writes bench/results/grpo_string_check.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from e2e_tokens import MODEL  # noqa: E402

from souverain.node.artifacts import builtin_path  # noqa: E402
from souverain.training.configs import GRPOConfig, bounds_of  # noqa: E402

PROMPTS = ["Name a fruit.", "Tell me the name of one fruit.", "Which fruit do you like?",
           "Give me an example of a fruit.", "What is a fruit you could eat for breakfast?",
           "Say the name of a yellow or red fruit.", "Name one fruit, please.",
           "Can you name a fruit?"]  # fmt: skip
GRADER = {"type": "string_check", "name": "apple", "input": "{{sample.output_text}}",
          "reference": "apple", "operation": "ilike"}  # fmt: skip
HYPER = {"batch_size": 2, "group_size": 8, "max_tokens": 32, "length_cache": 8,
         "temperature": 0.8, "minibatches": 2, "eval_samples": 8}  # fmt: skip


def lines() -> bytes:
    return "".join(json.dumps({"messages": [{"role": "user", "content": p}]}) + "\n"
                   for p in PROMPTS).encode()  # fmt: skip


def calibrate() -> None:
    from souverain.training import rewards
    from souverain.training.rollouts import Rollouts
    from souverain.training.sft import load_tokenizer

    gguf = builtin_path(MODEL)
    tokenizer = load_tokenizer({"path": str(gguf.parent), "gguf_file": gguf.name})
    engine = Rollouts(gguf, sequences=32, context=32 * 128, threads=2)
    scorer = rewards.build(GRADER)
    shares = []
    for prompt in PROMPTS:
        ids = list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                 add_generation_prompt=True, tokenize=True)["input_ids"])  # fmt: skip
        samples = engine.generate([ids], n=32, max_tokens=HYPER["max_tokens"],
                                  temperature=HYPER["temperature"])  # fmt: skip
        texts = [tokenizer.decode(s.tokens, skip_special_tokens=True) for s in samples]
        shares.append(statistics.fmean(scorer(rewards.answer_of(t), {}) for t in texts))
        print(f"{shares[-1]:.2f}  {prompt}  e.g. {texts[0]!r}")
    print(f"mean share rewarded: {statistics.fmean(shares):.2f}")
    engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--temperature", type=float, default=HYPER["temperature"],
                        help="of the rollouts (the job's `temperature`)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="of sampling and the fresh LoRA")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="CPU threads of the job (1 on a machine shared beyond its cores)",
    )
    args = parser.parse_args()
    low, high = bounds_of(GRPOConfig, "temperature")
    if not low <= args.temperature <= high:
        parser.error(f"--temperature must be in [{low:g}, {high:g}]")
    HYPER["temperature"] = args.temperature
    if args.calibrate:
        calibrate()
        return
    gguf = builtin_path(MODEL)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "train.jsonl").write_bytes(lines())
        spec = {"base": {"path": str(gguf.parent), "gguf_file": gguf.name},
                "train": str(Path(tmp) / "train.jsonl"), "valid": None,
                "output_dir": str(Path(tmp) / "out"), "resume_from": None, "threads": args.threads,
                "grader": GRADER, "init_adapter": None,
                "hyperparameters": {"max_steps": args.steps, "seq_len": 256,
                                    "learning_rate": args.learning_rate, "seed": args.seed,
                                    "save_steps": args.steps, **HYPER}}  # fmt: skip
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "souverain.training.grpo", str(Path(tmp) / "spec.json")],
                       check=True, timeout=3600)  # fmt: skip
        wall = time.monotonic() - started
        events = [
            json.loads(x) for x in (Path(tmp) / "out" / "progress.jsonl").read_text().splitlines()
        ]
    steps = [e for e in events if e["type"] == "step"]
    for s in steps:
        print(f"step {s['step']:2d}: rewarded {s['correct_rate']:.2f}, informative groups "
              f"{s['informative_groups']}, refills {s['refill_rounds']}, log-prob gap mean "
              f"{s.get('logprob_gap_mean')}, capped {s.get('tis_capped_fraction')}, {s['step_s']:.1f} s")  # fmt: skip
    reached = next((s["step"] for s in steps if s["correct_rate"] >= 0.9), None)
    print(
        f"first step at ≥ 0.9: {reached}; start {steps[0]['correct_rate']:.2f}; wall {wall:.0f} s"
    )
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    figures = {"steps": steps, "reached": reached, "wall_s": wall,
               "hyperparameters": {**HYPER, "learning_rate": args.learning_rate,
                                   "seed": args.seed, "threads": args.threads}}  # fmt: skip
    (out / "grpo_string_check.json").write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
