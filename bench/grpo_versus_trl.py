"""souverain's GRPO against TRL's GRPOTrainer on the same minutes: what each learns.

    python bench/grpo_versus_trl.py [--minutes 30] [--heldout 100] [--seed 0]

Both by hand (no server), one after the other on the same machine, from one cold-start
adapter (the supervised recipe on worked examples of every level, as bench/grpo.py's run
on `souverain up`), on the same reinforcement prompts (the generator's easiest levels,
none of them taught by the cold start), with the same step shape (2 prompts × 8
completions, two optimiser steps of 8; bench/grpo.py `trl_config`), reward (magistral),
learning rate, clipping and token-level loss. Each trains for --minutes of wall-clock
from its first step (the step in progress at the limit ends it); souverain's recipe
samples again when a step has too few informative groups (its refills), TRL trains on the
groups it drew. Then the cold start and both trained adapters are evaluated by
souverain's held-out evaluation (an evaluation job of `python -m souverain.training.grpo`:
the same held-out problems, greedy and sampled at the training temperature with the same
sampling seeds), and each change from the cold start is paired per prompt with its
bootstrap 95 % interval. Prints them, and each side's step times, writes every figure to
bench/results/grpo_versus_trl.json as soon as it is known, and draws both sides' reward
by minute as docs/grpo_versus_trl.png.

Machine time: the cold start (about 20 minutes on 2 cores), three evaluations (about 8
minutes each at 100 problems), and twice --minutes. Run it on an otherwise idle machine:
the minutes are wall-clock, so anything beside it takes steps from one side or the other.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from grpo import (
    HYPER,
    MODEL,
    RL_LEVELS,
    chosen,
    cold_start_by_hand,
    jsonl,
    recipe_spec,
)

from souverain.training import evaluation, mathgen

ROOT = Path(__file__).resolve().parent.parent
COLD_LEVELS = (0, 1, 2, 3)
FIGURES: dict[str, Any] = {}


def save(**figures: Any) -> None:
    FIGURES.update(figures)
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / "grpo_versus_trl.json").write_text(json.dumps(FIGURES, indent=1))


def lines(progress: Path) -> list[dict[str, Any]]:
    if not progress.exists():
        return []
    return [json.loads(x) for x in progress.read_text().splitlines() if x.strip()]


def prepared(
    tmp: Path,
    args: argparse.Namespace,
    heldout: list[mathgen.Problem],
    cold_adapter: str | None = None,
) -> Path:
    """The cold-start adapter (`cold_adapter`, or the supervised recipe by hand on
    --cold-samples worked examples of every level for --cold-epochs), with tmp/rl.jsonl
    (--rl-samples prompts of the reinforcement levels the cold start was not taught) and
    tmp/heldout.jsonl (`heldout`) written beside it."""
    cold_problems = chosen("train", args.cold_samples, levels=COLD_LEVELS)
    if cold_adapter:
        cold = Path(cold_adapter)
    else:
        steps = -(-args.cold_samples * args.cold_epochs // 8)
        cold = cold_start_by_hand(tmp, args.cold_samples, steps, levels=COLD_LEVELS)
    taught = frozenset(p.question for p in cold_problems)
    levels = mathgen.parse_levels(RL_LEVELS)
    (tmp / "rl.jsonl").write_bytes(jsonl(
        chosen("train", args.rl_samples, levels=levels, exclude=taught), worked=False))  # fmt: skip
    (tmp / "heldout.jsonl").write_bytes(jsonl(heldout, worked=False))
    return cold


def evaluate(tmp: Path, name: str, adapter: Path, prompts: int, **hyper: Any) -> dict[str, Any]:
    """An evaluation job of the recipe (no step; `hyper` overrides its hyperparameters) on
    the held-out file: its report and its per-prompt scores (what a pairing needs)."""
    path = recipe_spec(tmp, name, adapter, valid=tmp / "heldout.jsonl", max_steps=0,
                       eval_samples=prompts, **hyper)  # fmt: skip
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "souverain.training.grpo", str(path)],
                   check=True, capture_output=True, timeout=4 * 3600)  # fmt: skip
    [report] = [e["metrics"] for e in lines(tmp / name / "progress.jsonl") if e["type"] == "eval"]
    scores = json.loads((tmp / name / "eval-before.json").read_text())
    return {"report": report, "scores": scores, "seconds": round(time.monotonic() - started, 1)}


def ours(
    tmp: Path, adapter: Path, minutes: float, seed: int, name: str = "ours", **hyper: Any
) -> dict[str, Any]:
    """souverain's recipe (`hyper` overrides its hyperparameters) for `minutes` from its
    first step, then paused (SIGTERM: the step in progress ends, the adapter is saved as
    checkpoint-N), output in tmp/`name`."""
    spec = recipe_spec(tmp, name, adapter, max_steps=1_000_000, save_steps=1_000_000,
                       seed=seed, **hyper)  # fmt: skip
    progress = tmp / name / "progress.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "souverain.training.grpo", str(spec)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    started = None
    while process.poll() is None:
        if started is None and any(e["type"] == "loaded" for e in lines(progress)):
            started = time.monotonic()
        if started is not None and time.monotonic() - started >= minutes * 60:
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(1.0)
    _, err = process.communicate(timeout=3600)
    events = lines(progress)
    paused = [e for e in events if e["type"] == "paused"]
    if process.returncode or not paused:
        raise SystemExit(f"souverain's recipe ended {process.returncode}: {err.decode()[-2000:]}")
    steps = [e for e in events if e["type"] == "step"]
    return {
        "adapter": str(tmp / name / f"checkpoint-{paused[0]['step']}"),
        "steps": len(steps),
        "trained_s": round(time.monotonic() - (started or 0.0), 1),
        "step_s": [e["step_s"] for e in steps],
        "rollout_s": [e["rollout_s"] for e in steps],
        "train_s": [e["train_s"] for e in steps],
        "refill_rounds": [e["refill_rounds"] for e in steps],
        "reward_mean": [e["reward_mean"] for e in steps],
    }


def trl(tmp: Path, adapter: Path, minutes: float, seed: int) -> dict[str, Any]:
    """TRL's GRPOTrainer for `minutes` (bench/grpo.py `trl_baseline`), its adapter saved."""
    spec = {"adapter": str(adapter), "data": str(tmp / "rl.jsonl"), "minutes": minutes,
            "output": str(tmp / "trl-adapter"), "seed": seed}  # fmt: skip
    (tmp / "trl.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "grpo.py"), "--trl-baseline", str(tmp / "trl.json")],
        check=True,
        capture_output=True,
        text=True,
        timeout=4 * 3600,
    )
    out = json.loads(done.stdout.splitlines()[-1])
    return {"adapter": spec["output"], "steps": len(out["step_s"]), **out}


def report(figures: dict[str, Any]) -> None:
    print(f"cold start: {figures['cold_start_s'] / 60:.1f} min; {figures['minutes']} minutes each")
    for side in ("ours", "trl"):
        run = figures.get(side)
        if not run:
            continue
        name = "souverain" if side == "ours" else "TRL GRPOTrainer"
        print(f"{name}: {run['steps']} steps of 2 prompts × 8 in {run['trained_s'] / 60:.1f} min, "
              f"median step {statistics.median(run['step_s']):.1f} s")  # fmt: skip
        if side == "ours":
            print(f"  rollouts {statistics.median(run['rollout_s']):.1f} s, training "
                  f"{statistics.median(run['train_s']):.1f} s (medians); refills in "
                  f"{sum(1 for r in run['refill_rounds'] if r)} of {run['steps']} steps")  # fmt: skip
    if figures.get("ours") and figures.get("trl"):
        a, b = figures["ours"]["step_s"], figures["trl"]["step_s"]
        print(f"step time, TRL ÷ souverain: {statistics.median(b) / statistics.median(a):.2f}× "
              f"(medians), {statistics.fmean(b) / statistics.fmean(a):.2f}× (means)")  # fmt: skip
    cold = figures.get("cold")
    if cold:
        overall = cold["report"]["overall"]
        print(f"cold start, held-out: greedy reward {overall['mean_reward']}, sampled "
              f"{(overall.get('sampled') or {}).get('mean_reward')}")  # fmt: skip
    for side in ("ours", "trl"):
        for name, c in (figures.get(f"{side}_change") or {}).items():
            print(f"  {side:4s} {name:20s} {c['before']} → {c['after']}, {c['delta']:+} "
                  f"[{c['low']:+}, {c['high']:+}]")  # fmt: skip


def plot(figures: dict[str, Any], path: Path) -> None:
    """Each side's sampled mean reward by minute of training (a step's, and over 10 steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 3.6))
    for side, name in (("ours", "souverain"), ("trl", "TRL GRPOTrainer")):
        run = figures[side]
        minutes = [sum(run["step_s"][: i + 1]) / 60 for i in range(len(run["step_s"]))]
        rewards = run["reward_mean"]
        raw = axis.plot(minutes, rewards, alpha=0.25)
        mean = [statistics.fmean(rewards[max(0, i - 9) : i + 1]) for i in range(len(rewards))]
        axis.plot(minutes, mean, linewidth=2, color=raw[0].get_color(),
                  label=f"{name} ({run['steps']} steps)")  # fmt: skip
    axis.set_xlabel("minutes of training")
    axis.set_ylabel("mean reward of the step's completions")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.suptitle(f"GRPO on {MODEL}, 2 CPU cores, same cold start, same minutes")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--cold-samples", type=int, default=300)
    parser.add_argument("--cold-epochs", type=int, default=2)
    parser.add_argument("--rl-samples", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cold-adapter", help="a cold-start PEFT adapter (skips the cold start)")
    parser.add_argument("--report-only", action="store_true",
                        help="print and plot bench/results/grpo_versus_trl.json again")  # fmt: skip
    args = parser.parse_args()
    if args.report_only:
        FIGURES.update(json.loads((ROOT / "bench/results/grpo_versus_trl.json").read_text()))
        report(FIGURES)
        plot(FIGURES, ROOT / "docs" / "grpo_versus_trl.png")
        return
    if args.minutes <= 0 or args.heldout < 1 or args.cold_samples < 8 or args.rl_samples < 2:
        parser.error("--minutes must be above 0, --heldout at least 1, --cold-samples at "
                     "least 8 and --rl-samples at least 2")  # fmt: skip
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        started = time.monotonic()
        heldout = chosen("heldout", args.heldout, levels=mathgen.parse_levels(RL_LEVELS))
        cold = prepared(tmp, args, heldout, args.cold_adapter)
        save(minutes=args.minutes, cold_start_s=round(time.monotonic() - started, 1),
             hyperparameters=HYPER, levels=RL_LEVELS)  # fmt: skip
        before = evaluate(tmp, "eval-cold", cold, args.heldout)
        save(cold=before)
        mine = ours(tmp, cold, args.minutes, args.seed)
        save(ours=mine)
        theirs = trl(tmp, cold, args.minutes, args.seed)
        save(trl=theirs)
        for side, run in (("ours", mine), ("trl", theirs)):
            after = evaluate(tmp, f"eval-{side}", Path(run["adapter"]), args.heldout)
            save(
                **{
                    f"{side}_after": after,
                    f"{side}_change": evaluation.changes(
                        before["scores"], after["scores"], seed=args.seed
                    ),
                }
            )
    report(FIGURES)
    plot(FIGURES, ROOT / "docs" / "grpo_versus_trl.png")


if __name__ == "__main__":
    main()
