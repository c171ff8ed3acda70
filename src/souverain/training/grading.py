"""A reinforcement job's data and grades: the prompts (chat lines with their reference
fields) and what a completion earns under the job's grader (training/rewards.py)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from souverain.training import rewards
from souverain.training.configs import GRPOConfig

# -- data -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    messages: list[dict[str, Any]]
    fields: dict[str, Any]  # the line's other fields (answer, language, ...)

    @property
    def prompt(self) -> str:
        for message in reversed(self.messages):
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                return str(message["content"])
        return ""


def read_items(path: Path, *, system: str | None) -> list[Item]:
    """Chat lines; a trailing assistant reply (worked examples) is left out, and the
    reasoning system prompt is put first where the chat has none."""
    items = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            row = json.loads(line)
            messages = [m for m in row["messages"]]
            while messages and messages[-1].get("role") == "assistant":
                messages.pop()
            if system and (not messages or messages[0].get("role") != "system"):
                messages.insert(0, {"role": "system", "content": system})
            items.append(Item(messages, {k: v for k, v in row.items() if k != "messages"}))
    return items


def invalid_item(item: Item, grader: dict[str, Any]) -> str | None:
    if not item.messages or item.messages[-1].get("role") != "user":
        return "the chat must end with a user message"
    if grader["type"] == "magistral" and not isinstance(item.fields.get("answer"), str | int):
        return "an 'answer' field is needed for the magistral grader"
    return None


# -- scoring ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Graded:
    reward: float
    formatted: bool
    correct: bool
    consistent: bool | None
    language: str | None


def grade(
    grader: dict[str, Any],
    scorer: rewards.Grader | None,
    item: Item,
    completion: str,
    tokens: int,
    hp: GRPOConfig,
) -> Graded:
    if grader["type"] == "magistral":
        scored = rewards.magistral(
            completion,
            prompt=item.prompt,
            reference=str(item.fields["answer"]),
            tokens=tokens,
            l_max=int(grader.get("l_max") or hp.max_tokens),
            l_cache=int(grader.get("l_cache") or hp.length_cache),
        )
        return Graded(
            scored.reward, scored.formatted, scored.correct, scored.consistent,
            scored.prompt_language,
        )  # fmt: skip
    assert scorer is not None
    answer = rewards.answer_of(completion)
    score = scorer(answer, item.fields)
    parts = rewards.split_thinking(completion)
    return Graded(score, parts is not None, score >= 1.0, None, None)


def summary(graded: Sequence[Graded]) -> dict[str, float | None]:
    if not graded:
        return {}
    known = [g.consistent for g in graded if g.consistent is not None]
    formatted = [g for g in graded if g.formatted]
    return {
        "reward_mean": round(statistics.fmean(g.reward for g in graded), 4),
        "format_rate": round(len(formatted) / len(graded), 4),
        "correct_rate": round(sum(g.correct for g in graded) / len(graded), 4),
        # of the formatted answers: prompt, thinking and answer in one language
        "consistency": round(sum(bool(g.consistent) for g in formatted) / len(formatted), 4)
        if formatted
        else None,
        "languages_told": len(known),
    }
