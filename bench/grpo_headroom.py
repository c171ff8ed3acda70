"""What GRPO can gain on the reasoning recipe's task, measured on the cold-start model
before any tuning (issue 26, point 1).

    python bench/grpo_headroom.py [--prompts 40] [--k 8] [--temperature 0.8] [--level 0]
        [--adapter DIR | --keep-adapter DIR]

On `--prompts` problems of the training distribution (the shipped generator's train split,
past the cold start's examples, all five languages), the cold-start model (a supervised
LoRA on worked examples, built here unless `--adapter` is given) answers each `--k` times
at the training temperature and once greedily, with llama.cpp as the GRPO job samples
(no hidden sampler: temperature then the full distribution). Prints, overall, per language
and per difficulty (arithmetic with × or with +/−, word problems):

- sampled pass@1 at the temperature, pass@k, majority-of-k and greedy accuracy;
- the share of completions cut at max_tokens, and the 99th percentile of their lengths;
- the per-prompt pass-rate histogram (which prompts a GRPO group can learn from);
- the gap between llama.cpp's log-probability of each sampled token and the trainer's
  (PyTorch, float32, same adapter, same temperature): mean, 99th percentile, and the share
  of ratios outside [0.8, 1.25].

GRPO's quick gains at this size come from sharpening (sampled pass@1 moving towards
greedy or majority-of-k), so those gaps bound what a short run can reach. `--level`
takes the generator's difficulty (0–3, or a mix such as 0,1; 3 is the recipe's default
distribution); `--keep-adapter DIR` trains the cold start into DIR once and reuses it on
later runs, so several levels are measured on the same model. Writes
bench/results/grpo_headroom.json (grpo_headroom_level<L>.json for other levels).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from grpo import HYPER, cold_start_by_hand, jsonl  # noqa: E402

from souverain.core.reasoning import SYSTEM_PROMPT  # noqa: E402
from souverain.training import mathgen, rewards  # noqa: E402
from souverain.training.configs import GRPOConfig  # noqa: E402
from souverain.training.grading import Item, grade, read_items  # noqa: E402


def difficulty(item: Item) -> str:
    if item.fields.get("kind") == "word":
        return "word"
    return "arith ×" if "×" in item.prompt else "arith +/−"


def majority_correct(texts: list[str], reference: str) -> bool:
    answers = [
        b for t in texts if (p := rewards.split_thinking(t)) and (b := rewards.last_boxed(p[1]))
    ]
    if not answers:
        return False
    top, _ = Counter(a.strip() for a in answers).most_common(1)[0]
    return rewards.verify(top, reference)


def sample_all(adapter: Path, items: list[Item], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Each prompt: k sampled and one greedy completion, graded, with the rollout log-probs."""
    import torch
    from grpo import MODEL
    from peft import PeftModel

    from souverain.node.artifacts import builtin_path
    from souverain.training.rollouts import Rollouts
    from souverain.training.sft import _export_gguf, load_model, load_tokenizer

    torch.set_num_threads(2)
    gguf = builtin_path(MODEL)
    base = {"path": str(gguf.parent), "gguf_file": gguf.name}
    tokenizer = load_tokenizer(base)
    model = PeftModel.from_pretrained(load_model(base), str(adapter)).eval()
    exported = _export_gguf(model.config, adapter, adapter.parent / "headroom.gguf")
    assert exported is not None
    per_call = max(1, 64 // args.k)
    engine = Rollouts(gguf, sequences=per_call * args.k, context=per_call * args.k * 512, threads=2)
    engine.set_adapter(exported)
    hp = GRPOConfig(max_tokens=args.max_tokens, length_cache=HYPER["length_cache"],
                    temperature=args.temperature, seq_len=512)  # fmt: skip
    grader = {"type": "magistral"}
    rows: list[dict[str, Any]] = []
    started = time.monotonic()
    for start in range(0, len(items), per_call):
        chunk = items[start : start + per_call]
        prompts = [list(tokenizer.apply_chat_template(i.messages, add_generation_prompt=True,
                                                      tokenize=True)["input_ids"]) for i in chunk]  # fmt: skip
        sampled = engine.generate(prompts, n=args.k, max_tokens=args.max_tokens,
                                  temperature=args.temperature, round_seed=start)  # fmt: skip
        greedy = engine.generate(prompts, n=1, max_tokens=args.max_tokens, temperature=0.0)
        for index, item in enumerate(chunk):
            mine = [s for s in sampled if s.prompt == index]
            texts = [tokenizer.decode(s.tokens, skip_special_tokens=True) for s in mine]
            graded = [
                grade(grader, None, item, t, len(s.tokens), hp)
                for t, s in zip(texts, mine, strict=True)
            ]
            best = tokenizer.decode(greedy[index].tokens, skip_special_tokens=True)
            rows.append({
                "language": item.fields["language"], "difficulty": difficulty(item),
                "prompt_ids": prompts[index], "samples": mine, "correct": [g.correct for g in graded],
                "greedy": grade(grader, None, item, best, len(greedy[index].tokens), hp).correct,
                "majority": majority_correct(texts, str(item.fields["answer"])),
                "truncated": [not s.stopped for s in mine], "lengths": [len(s.tokens) for s in mine],
            })  # fmt: skip
        print(f"  {len(rows)}/{len(items)} prompts, {time.monotonic() - started:.0f} s", flush=True)
    engine.close()
    gaps = logprob_gaps(model, tokenizer, rows, args.temperature)
    return [dict(r, samples=None) for r in rows] + [{"gaps": gaps}]


def logprob_gaps(
    model: Any, tokenizer: Any, rows: list[dict[str, Any]], temperature: float
) -> dict[str, Any]:
    """|log π_trainer - log π_llama.cpp| over every sampled token (same adapter, temperature)."""
    import torch

    from souverain.training.grpo_objective import groups_logprobs

    pad = tokenizer.pad_token_id or 0
    gaps: list[float] = []
    for row in rows:
        completions = [list(s.tokens) for s in row["samples"]]
        with torch.no_grad():
            logp, _mask = groups_logprobs(model, [(row["prompt_ids"], completions)], pad,
                                         temperature=temperature)  # fmt: skip
        for r, s in enumerate(row["samples"]):
            ours = logp[r, : len(s.tokens)].tolist()
            gaps.extend(abs(a - b) for a, b in zip(ours, s.logprobs, strict=True))
    gaps.sort()
    ratio_outside = sum(1 for g in gaps if g > 0.2231) / len(
        gaps
    )  # |log 0.8| = 0.223, log 1.25 = 0.223
    return {"tokens": len(gaps), "mean": statistics.fmean(gaps), "p50": gaps[len(gaps) // 2],
            "p99": gaps[int(0.99 * (len(gaps) - 1))], "max": gaps[-1], "ratio_outside": ratio_outside}  # fmt: skip


def figures(rows: list[dict[str, Any]], k: int) -> dict[str, Any]:
    n = len(rows)
    lengths = sorted(x for r in rows for x in r["lengths"])
    return {
        "prompts": n,
        "sampled_pass_at_1": statistics.fmean(statistics.fmean(r["correct"]) for r in rows),
        f"pass_at_{k}": sum(any(r["correct"]) for r in rows) / n,
        f"maj_at_{k}": sum(r["majority"] for r in rows) / n,
        "greedy": sum(r["greedy"] for r in rows) / n,
        "truncated": statistics.fmean(t for r in rows for t in r["truncated"]),
        "length_p99": lengths[int(0.99 * (len(lengths) - 1))],
    }


def histogram(rows: list[dict[str, Any]]) -> dict[str, int]:
    bins: Counter[str] = Counter()
    for r in rows:
        rate = statistics.fmean(r["correct"])
        bins["0" if rate == 0 else "1" if rate == 1 else "≤0.5" if rate <= 0.5 else ">0.5"] += 1
    return {b: bins[b] for b in ("0", "≤0.5", ">0.5", "1")}


def table(title: str, groups: dict[str, list[dict[str, Any]]], k: int) -> list[str]:
    lines = [f"| {title} | n | sampled pass@1 | pass@{k} | maj@{k} | greedy | truncated | p99 tokens |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, rows in groups.items():
        f = figures(rows, k)
        lines.append(f"| {name} | {f['prompts']} | {f['sampled_pass_at_1']:.2f} | {f[f'pass_at_{k}']:.2f} | "
                     f"{f[f'maj_at_{k}']:.2f} | {f['greedy']:.2f} | {f['truncated']:.1%} | {f['length_p99']} |")  # fmt: skip
    return lines


def cold_start(tmp: Path, args: argparse.Namespace) -> Path:
    """The adapter given, the one kept from an earlier run, or a new one (kept if asked)."""
    if args.adapter:
        return Path(args.adapter)
    kept = Path(args.keep_adapter) / "adapter" if args.keep_adapter else None
    if kept and (kept / "adapter_config.json").exists():
        return kept
    adapter = cold_start_by_hand(tmp, args.cold_samples, args.cold_steps)
    if kept is None:
        return adapter
    shutil.copytree(adapter, kept)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=40)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--temperature", type=float, default=HYPER["temperature"])
    parser.add_argument("--max-tokens", type=int, default=HYPER["max_tokens"])
    parser.add_argument("--cold-samples", type=int, default=120)
    parser.add_argument("--cold-steps", type=int, default=30)
    parser.add_argument("--adapter", help="a cold-start PEFT adapter (else one is trained here)")
    parser.add_argument(
        "--keep-adapter", help="a folder: the cold start is trained into it once, then reused"
    )
    parser.add_argument("--level", default="3", help="the generator's level(s), e.g. 0 or 0,1")
    args = parser.parse_args()
    levels = mathgen.parse_levels(args.level)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        adapter = cold_start(Path(tmp), args)
        print(f"cold start: {time.monotonic() - started:.0f} s", flush=True)
        # the default level skips past the cold start's examples; the others never met them
        skip = 1000 if levels == (mathgen.DEFAULT_LEVEL,) else 0
        rl = jsonl("train", args.prompts, worked=False, skip=skip, levels=levels)
        (Path(tmp) / "rl.jsonl").write_bytes(rl)
        items = read_items(Path(tmp) / "rl.jsonl", system=SYSTEM_PROMPT)
        *rows, gaps = sample_all(adapter, items, args)
    by_language: dict[str, list[dict[str, Any]]] = defaultdict(list)
    by_difficulty: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_language[r["language"]].append(r)
        by_difficulty[r["difficulty"]].append(r)
    lines = table("language", {"all": rows, **dict(sorted(by_language.items()))}, args.k)
    lines += ["", *table("difficulty", dict(sorted(by_difficulty.items())), args.k)]
    g = gaps["gaps"]
    lines += ["", f"per-prompt sampled pass rate: {histogram(rows)}",
              f"log-prob gap llama.cpp vs trainer over {g['tokens']} tokens: mean {g['mean']:.4f}, "
              f"p50 {g['p50']:.4f}, p99 {g['p99']:.4f}, max {g['max']:.3f}; ratios outside "
              f"[0.8, 1.25]: {g['ratio_outside']:.2%}"]  # fmt: skip
    print("\n".join(lines))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    name = "grpo_headroom" + ("" if args.level == "3" else f"_level{args.level.replace(',', '-')}")
    (out / f"{name}.json").write_text(json.dumps({
        "args": vars(args), "overall": figures(rows, args.k), "histogram": histogram(rows),
        "languages": {k: figures(v, args.k) for k, v in by_language.items()},
        "difficulties": {k: figures(v, args.k) for k, v in by_difficulty.items()},
        "logprob_gap": g}, indent=1, ensure_ascii=False))  # fmt: skip


if __name__ == "__main__":
    main()
