"""souverain's GRPO recipe in several seeds from one cold start, each for the same minutes.

    python bench/grpo_seeds.py [--seeds 2] [--first-seed 0] [--minutes 30] [--heldout 100]
        [--heldout-templates 50] [--temperature 0.8 --tag NAME]
    python bench/grpo_seeds.py --report-only [--tag NAME]

By hand (no server), as bench/grpo_versus_trl.py runs souverain's side: one cold start
(the supervised recipe on worked examples of every level), then for each seed the
recipe (`recipe_spec`: 2 prompts × 8 completions, two minibatches, magistral reward, the
on-policy loop with its refills) for --minutes of wall-clock from its first step, paused
at the limit (the step in progress ends it). The cold start and each seed's adapter are
evaluated on the same held-out problems of the reinforcement levels: --heldout of the
training templates and --heldout-templates of templates no training line uses, greedy and
4 samples each at the training temperature with the same sampling seeds; each seed's
change from the cold start is paired per prompt with its bootstrap 95 % interval, over
all prompts and per template set. Writes every figure to bench/results/grpo_seeds.json as
soon as it is known and draws each seed's reward by minute, and its held-out change, as
docs/grpo_seeds.png. --temperature trains and evaluates at another temperature than the
recipe's; --tag NAME writes bench/results/grpo_seeds-NAME.json and docs/grpo_seeds-NAME.png
instead, so that such a run keeps the recipe's figures.

Machine time on 2 cores: the cold start (about 15 minutes), one evaluation per model
(about 6 minutes at 150 problems), and --minutes per seed. Run it on an otherwise idle
machine: the minutes are wall-clock.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from grpo import HYPER, MODEL, RL_LEVELS, chosen
from grpo_versus_trl import evaluate, ours, prepared

from souverain.training import evaluation, mathgen
from souverain.training.configs import GRPOConfig, bounds_of

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "grpo_seeds.json"
FIGURES: dict[str, Any] = {"seeds": {}}


def tagged(path: Path, tag: str) -> Path:
    """`path` with `-tag` before its suffix (itself without a tag)."""
    return path.with_name(f"{path.stem}-{tag}{path.suffix}") if tag else path


def save(**figures: Any) -> None:
    FIGURES.update(figures)
    results = tagged(RESULTS, FIGURES.get("tag", ""))
    results.parent.mkdir(exist_ok=True)
    results.write_text(json.dumps(FIGURES, indent=1))


def changes(before: dict[str, list[float]], after: dict[str, list[float]], parts: dict[str, range],
            seed: int) -> dict[str, Any]:  # fmt: skip
    """The paired change over all prompts and over each part of the held-out file."""
    out = {"all": evaluation.changes(before, after, seed=seed)}
    for name, kept in parts.items():
        out[name] = evaluation.changes({k: [v[i] for i in kept] for k, v in before.items()},
                                       {k: [v[i] for i in kept] for k, v in after.items()},
                                       seed=seed)  # fmt: skip
    return out


def report(figures: dict[str, Any]) -> None:
    print(f"cold start: {figures['cold_start_s'] / 60:.1f} min; {figures['minutes']} minutes a "
          f"seed at T {figures['hyperparameters']['temperature']}; held-out {figures['parts']}")  # fmt: skip
    for seed, run in sorted(figures["seeds"].items()):
        print(f"seed {seed}: {run['steps']} steps in {run['trained_s'] / 60:.1f} min, median step "
              f"{statistics.median(run['step_s']):.1f} s (rollouts "
              f"{statistics.median(run['rollout_s']):.1f} s, training "
              f"{statistics.median(run['train_s']):.1f} s); refills in "
              f"{sum(1 for r in run['refill_rounds'] if r)} steps")  # fmt: skip
        for part, named in (run.get("change") or {}).items():
            shown = ("sampled_mean_reward", "greedy_mean_reward")
            if part == "all":
                shown += ("sampled_pass_at_1", "greedy_pass_at_1")
            for name in shown:
                if name in named:
                    c = named[name]
                    print(f"  {part:8s} {name:20s} {c['before']} → {c['after']}, {c['delta']:+} "
                          f"[{c['low']:+}, {c['high']:+}]")  # fmt: skip
        after = (run.get("after") or {}).get("report")
        if after:
            languages = after.get("languages") or {}
            print("  greedy language consistency: " + ", ".join(
                f"{lang} {row.get('language_consistency')}" for lang, row in sorted(languages.items())))  # fmt: skip


def stream_panel(
    axis: Any, curves: list[tuple[str, list[float], list[float]]], xlabel: str
) -> None:
    """Each named curve's training-stream reward (a 10-step mean) against its x values."""
    for label, xs, rewards in curves:
        mean = [statistics.fmean(rewards[max(0, i - 9) : i + 1]) for i in range(len(rewards))]
        axis.plot(xs, mean, linewidth=2, label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel("training stream's reward (10-step mean)")
    axis.grid(alpha=0.3)
    axis.legend()


def held_out_panel(
    axis: Any, runs: list[tuple[str, dict[str, Any]]], temperature: float = HYPER["temperature"]
) -> None:
    """Each named run's held-out change of sampled (at `temperature`) and greedy mean
    reward, with intervals."""
    for offset, (name, label) in enumerate((("sampled_mean_reward", f"sampled, T {temperature:g}"),
                                            ("greedy_mean_reward", "greedy"))):  # fmt: skip
        xs, ys, lows, highs = [], [], [], []
        for i, (_, run) in enumerate(runs):
            c = (run.get("change") or {}).get("all", {}).get(name)
            if c:
                xs.append(i + 0.15 * (offset * 2 - 1))
                ys.append(c["delta"])
                lows.append(c["delta"] - c["low"])
                highs.append(c["high"] - c["delta"])
        axis.errorbar(xs, ys, yerr=[lows, highs], fmt="o", capsize=4, label=label)
    axis.axhline(0, color="grey", linewidth=1)
    axis.set_xticks(range(len(runs)), [label for label, _ in runs])
    axis.set_ylabel("held-out mean reward change [95 %]")
    axis.grid(alpha=0.3, axis="y")
    axis.legend()


def plot(figures: dict[str, Any], path: Path) -> None:
    """Left: each seed's sampled reward of the training stream by minute (10-step mean).
    Right: each seed's held-out change of sampled and greedy mean reward, with intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8),
                                         gridspec_kw={"width_ratios": [3, 2]})  # fmt: skip
    seeds = sorted(figures["seeds"].items())
    minutes = [[sum(run["step_s"][: i + 1]) / 60 for i in range(len(run["step_s"]))]
               for _, run in seeds]  # fmt: skip
    stream_panel(left, [(f"seed {seed} ({run['steps']} steps)", xs, run["reward_mean"])
                        for (seed, run), xs in zip(seeds, minutes, strict=True)],
                 "minutes of training")  # fmt: skip
    temperature = figures["hyperparameters"]["temperature"]
    held_out_panel(right, [(f"seed {s}", run) for s, run in seeds], temperature)
    figure.suptitle(f"souverain's GRPO recipe on {MODEL}, 2 CPU cores, T {temperature:g}, "
                    f"{figures['minutes']:g} minutes a seed from one cold start")  # fmt: skip
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def shared_arguments(parser: argparse.ArgumentParser, results: Path) -> None:
    """The held-out set's, the cold start's and the reinforcement prompts' sizes, and
    --report-only (print and plot `results` again), as the seeds and the sweep take them."""
    parser.add_argument("--heldout", type=int, default=100)
    parser.add_argument("--heldout-templates", type=int, default=50)
    parser.add_argument("--cold-samples", type=int, default=300)
    parser.add_argument("--cold-epochs", type=int, default=2)
    parser.add_argument("--rl-samples", type=int, default=300)
    parser.add_argument("--report-only", action="store_true",
                        help=f"print and plot bench/results/{results.name} again")  # fmt: skip


def cold_start(tmp: Path, args: argparse.Namespace) -> tuple[Path, dict[str, range], int]:
    """The cold start, and the held-out problems it is evaluated on (the training templates'
    `--heldout`, then `--heldout-templates` of templates no training line uses): the
    adapter, the held-out parts by name, the number of held-out prompts."""
    levels = mathgen.parse_levels(RL_LEVELS)
    ranges = {"trained": range(args.heldout),
              "unseen": range(args.heldout, args.heldout + args.heldout_templates)}  # fmt: skip
    parts = {k: v for k, v in ranges.items() if len(v)}
    cold = prepared(tmp, args, chosen("heldout", args.heldout, levels=levels)
                    + chosen("heldout-templates", args.heldout_templates, levels=levels))  # fmt: skip
    return cold, parts, args.heldout + args.heldout_templates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=HYPER["temperature"],
                        help="of the rollouts and of the sampled evaluation")  # fmt: skip
    parser.add_argument("--tag", default="", help="the results' and the plot's name suffix")
    shared_arguments(parser, RESULTS)
    args = parser.parse_args()
    if not re.fullmatch(r"[a-z0-9.]*", args.tag):
        parser.error("--tag must be lower-case letters, digits and dots")
    figure_path = tagged(ROOT / "docs" / "grpo_seeds.png", args.tag)
    if args.report_only:
        FIGURES.update(json.loads(tagged(RESULTS, args.tag).read_text()))
        report(FIGURES)
        plot(FIGURES, figure_path)
        return
    low, high = bounds_of(GRPOConfig, "temperature")
    if (args.minutes <= 0 or args.seeds < 1 or args.heldout < 1 or args.heldout_templates < 0
            or args.cold_samples < 8 or args.rl_samples < 2
            or not low <= args.temperature <= high):  # fmt: skip
        parser.error("--minutes must be above 0, --seeds and --heldout at least 1, "
                     "--heldout-templates at least 0, --cold-samples at least 8, "
                     f"--rl-samples at least 2 and --temperature in [{low:g}, {high:g}]")  # fmt: skip
    sampling = {"temperature": args.temperature}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        started = time.monotonic()
        cold, parts, prompts = cold_start(tmp, args)
        save(tag=args.tag, minutes=args.minutes, cold_start_s=round(time.monotonic() - started, 1),
             hyperparameters={**HYPER, **sampling}, levels=RL_LEVELS,
             parts={k: len(v) for k, v in parts.items()})  # fmt: skip
        before = evaluate(tmp, "eval-cold", cold, prompts, **sampling)
        save(cold=before)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run = ours(tmp, cold, args.minutes, seed, name=f"seed-{seed}", **sampling)
            FIGURES["seeds"][str(seed)] = run
            save()
            after = evaluate(tmp, f"eval-seed-{seed}", Path(run["adapter"]), prompts, **sampling)
            run["after"] = after
            run["change"] = changes(before["scores"], after["scores"], parts, seed)
            save()
            report(FIGURES)
    plot(FIGURES, figure_path)


if __name__ == "__main__":
    main()
