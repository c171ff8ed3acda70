"""What language tagging adds to a reasoning request's path, and what it costs off it.

    python bench/languages.py [--requests 20000]

On the path (gateway/exchange.py, when a reasoning request settles): the user's task is
taken from the request, the texts are wrapped and appended to the tagger's queue. Off the
path (the tagger's worker thread): three identifications (prompt, thinking, answer).
Baseline in the same run: splitting the same answer into thinking and answer
(gateway/reasoning.py), which every reasoning request did before tagging existed.
Prints p50/p99 of each, in microseconds. Goal: on-path cost ≤ 1 ms p50.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from souverain.gateway import reasoning
from souverain.gateway.languages import LanguageTagger, Texts, prompt_text, tags_of
from souverain.training import mathgen

ANSWERS = [p.chat(worked=True)["messages"][-1]["content"] for p in mathgen.problems("heldout", 200)]
PROMPTS = [
    [{"role": "system", "content": "…"}, {"role": "user", "content": p.question}]
    for p in mathgen.problems("heldout", 200)
]


class _Nowhere:
    def tag_languages(self, tags: list[dict[str, Any]]) -> None:  # never called here
        pass


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[int(q) - 1]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    tagger = LanguageTagger(_Nowhere(), None)  # type: ignore[arg-type]  # worker not started
    tags_of(Texts("warm", True, "Bonjour à tous, comment allez-vous ?", None, ""))  # load it
    on_path, baseline, off_path = [], [], []
    for i in range(args.requests):
        messages, answer = PROMPTS[i % 200], ANSWERS[i % 200]
        started = time.perf_counter_ns()
        thinking, text = reasoning.split(answer)
        baseline.append((time.perf_counter_ns() - started) / 1000)
        started = time.perf_counter_ns()
        tagger.submit(Texts(f"u{i}", True, prompt_text(messages), thinking, text))
        on_path.append((time.perf_counter_ns() - started) / 1000)
        if tagger._queue.full():
            while not tagger._queue.empty():
                tagger._queue.get_nowait()
        if i < 2000:
            texts = Texts("x", True, prompt_text(messages), thinking, text)
            started = time.perf_counter_ns()
            tags_of(texts)
            off_path.append((time.perf_counter_ns() - started) / 1000)
    print(f"{args.requests} reasoning answers (EN/FR/DE/ES/IT), microseconds:")
    for name, values in (("baseline: split thinking/answer", baseline),
                         ("added on the request path", on_path),
                         ("off the path: 3 identifications", off_path)):  # fmt: skip
        print(f"  {name:34s} p50 {percentile(values, 50):8.1f}  p99 {percentile(values, 99):8.1f}")
    print(f"  added ÷ baseline (p50): {percentile(on_path, 50) / percentile(baseline, 50):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
