"""souverain's GRPO recipe at several learning rates, from one cold start, the same steps each.

    python bench/grpo_sweep.py [--rates 2.5e-5,5e-5,1e-4] [--steps 30] [--seed 0]
        [--heldout 100] [--heldout-templates 50]
    python bench/grpo_sweep.py --report-only

By hand (no server), as bench/grpo_seeds.py runs its seeds: one cold start (the supervised
recipe on worked examples of every level), then the recipe (`recipe_spec`: 2 prompts × 8
completions, two minibatches, magistral reward, the on-policy loop with its refills) for
--steps steps at each learning rate, with the same seed, so every rate draws the same
prompts in the same order. A sweep by steps, not by minutes: each rate gets the same
number of updates whatever else the machine does. The cold start and each rate's adapter
are evaluated on the same held-out problems of the reinforcement levels (--heldout of the
training templates, --heldout-templates of templates no training line uses; greedy and 4
samples each at the training temperature with the same sampling seeds). Each rate's
change from the cold start is paired per prompt with its bootstrap 95 % interval, and so
is each rate's difference from the recipe's own rate (the first of --rates that equals
it, else none). Writes every figure to bench/results/grpo_sweep.json as soon as it is
known and draws each rate's training reward by step, and its held-out change, as
docs/grpo_sweep.png.

Machine time on 2 cores: the cold start (about 15 minutes), one evaluation per model
(about 6 minutes at 150 problems), and --steps steps per rate (about 25 s a step).
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
from typing import Any

from grpo import HYPER, MODEL, RL_LEVELS, RL_LR_MULTIPLIER, recipe_spec
from grpo_seeds import changes, cold_start, held_out_panel, shared_arguments, stream_panel
from grpo_versus_trl import evaluate, lines

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "grpo_sweep.json"
RECIPE_RATE = 5e-5 * RL_LR_MULTIPLIER
FIGURES: dict[str, Any] = {"rates": {}}


def save(**figures: Any) -> None:
    FIGURES.update(figures)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(FIGURES, indent=1))


def trained(tmp: Path, adapter: Path, rate: float, steps: int, seed: int) -> dict[str, Any]:
    """The recipe at `rate` for `steps` steps from `adapter`; its adapter and step figures."""
    name = f"rate-{rate:g}"
    spec = recipe_spec(tmp, name, adapter, max_steps=steps, save_steps=steps, seed=seed,
                       learning_rate=rate)  # fmt: skip
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "souverain.training.grpo", str(spec)],
                          capture_output=True, timeout=4 * 3600)  # fmt: skip
    if done.returncode:
        raise SystemExit(f"the recipe at {rate:g} ended {done.returncode}: "
                         f"{done.stderr.decode()[-2000:]}")  # fmt: skip
    events = [e for e in lines(tmp / name / "progress.jsonl") if e["type"] == "step"]
    return {
        "adapter": str(tmp / name / "adapter"),
        "steps": len(events),
        "trained_s": round(time.monotonic() - started, 1),
        "step_s": [e["step_s"] for e in events],
        "refill_rounds": [e["refill_rounds"] for e in events],
        "reward_mean": [e["reward_mean"] for e in events],
    }


def report(figures: dict[str, Any]) -> None:
    print(f"cold start: {figures['cold_start_s'] / 60:.1f} min; {figures['steps']} steps a "
          f"rate, seed {figures['seed']}; held-out {figures['parts']}")  # fmt: skip
    for rate, run in sorted(figures["rates"].items(), key=lambda item: float(item[0])):
        print(f"rate {rate}: {run['steps']} steps in {run['trained_s'] / 60:.1f} min, median "
              f"step {statistics.median(run['step_s']):.1f} s; refills in "
              f"{sum(1 for r in run['refill_rounds'] if r)} steps")  # fmt: skip
        for label, key in (("from the cold start", "change"), ("against the recipe's rate",
                                                                "versus_recipe")):  # fmt: skip
            for part, named in (run.get(key) or {}).items():
                for name in ("sampled_mean_reward", "greedy_mean_reward", "sampled_pass_at_1"):
                    if name in named and (part == "all" or name != "sampled_pass_at_1"):
                        c = named[name]
                        print(f"  {label:25s} {part:8s} {name:20s} {c['before']} → "
                              f"{c['after']}, {c['delta']:+} [{c['low']:+}, {c['high']:+}]")  # fmt: skip
        after = (run.get("after") or {}).get("report") or {}
        languages = after.get("languages") or {}
        if languages:
            print(f"  greedy format {(after.get('overall') or {}).get('format_rate')}; "
                  "language consistency: "
                  + ", ".join(f"{lang} {row.get('language_consistency')}"
                              for lang, row in sorted(languages.items())))  # fmt: skip


def plot(figures: dict[str, Any], path: Path) -> None:
    """Left: each rate's sampled reward of the training stream by step (10-step mean).
    Right: each rate's held-out change of sampled and greedy mean reward, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8),
                                         gridspec_kw={"width_ratios": [3, 2]})  # fmt: skip
    rates = sorted(figures["rates"].items(), key=lambda item: float(item[0]))
    stream_panel(left, [(f"lr {rate}", list(range(1, len(run["reward_mean"]) + 1)),
                         run["reward_mean"]) for rate, run in rates], "step")  # fmt: skip
    held_out_panel(right, [(f"lr {r}", run) for r, run in rates])
    figure.suptitle(f"souverain's GRPO recipe on {MODEL}, 2 CPU cores: "
                    f"{figures['steps']} steps at each rate from one cold start")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--rates", default="2.5e-5,5e-5,1e-4",
                        help="learning rates of the LoRA, comma-separated")  # fmt: skip
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    shared_arguments(parser, RESULTS)
    args = parser.parse_args()
    if args.report_only:
        FIGURES.update(json.loads(RESULTS.read_text()))
        report(FIGURES)
        plot(FIGURES, ROOT / "docs" / "grpo_sweep.png")
        return
    try:
        rates = [float(r) for r in args.rates.split(",") if r.strip()]
    except ValueError:
        parser.error(f"--rates must be numbers separated by commas, not {args.rates!r}")
    if (not rates or not all(0 < r < 1e-2 for r in rates) or args.steps < 1 or args.heldout < 1
            or args.heldout_templates < 0 or args.cold_samples < 8 or args.rl_samples < 2):  # fmt: skip
        parser.error("--rates must each be in (0, 0.01), --steps and --heldout at least 1, "
                     "--heldout-templates at least 0, --cold-samples at least 8 and "
                     "--rl-samples at least 2")  # fmt: skip
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        started = time.monotonic()
        cold, parts, prompts = cold_start(tmp, args)
        save(steps=args.steps, seed=args.seed, recipe_rate=RECIPE_RATE,
             cold_start_s=round(time.monotonic() - started, 1), hyperparameters=HYPER,
             levels=RL_LEVELS, parts={k: len(v) for k, v in parts.items()})  # fmt: skip
        before = evaluate(tmp, "eval-cold", cold, prompts)
        save(cold=before)
        scores: dict[float, dict[str, list[float]]] = {}
        for rate in sorted(rates, key=lambda r: r != RECIPE_RATE):  # the recipe's rate first
            run = trained(tmp, cold, rate, args.steps, args.seed)
            FIGURES["rates"][f"{rate:g}"] = run
            save()
            after = evaluate(tmp, f"eval-rate-{rate:g}", Path(run["adapter"]), prompts)
            scores[rate] = after["scores"]
            run["after"] = after
            run["change"] = changes(before["scores"], after["scores"], parts, args.seed)
            if RECIPE_RATE in scores and rate != RECIPE_RATE:
                run["versus_recipe"] = changes(scores[RECIPE_RATE], after["scores"], parts,
                                               args.seed)  # fmt: skip
            save()
            report(FIGURES)
    plot(FIGURES, ROOT / "docs" / "grpo_sweep.png")


if __name__ == "__main__":
    main()
