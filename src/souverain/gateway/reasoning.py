"""Reasoning output: the thinking a model drafts, taken out of its answer.

Models trained the Magistral way write `<think>…</think>` (or Mistral's `[THINK]…[/THINK]`)
before a self-contained answer. The gateway separates the two so that clients can show
them apart: OpenAI's shape puts the thinking in `message.reasoning_content` (the field
llama.cpp, SGLang and DeepSeek use), Mistral's in a `thinking` content chunk before the
text chunk (what the `mistralai` SDK's `ThinkChunk` reads).

    split(text)        a whole answer -> (thinking or None, answer)
    Splitter           the same for a stream: feed deltas as they come, in any pieces
                       (a tag may be cut anywhere), get (kind, text) parts back at once

A model the registry marks `reasoning` says its tag format (`reasoning_tags`): only that
pair is read in its answers; the models souverain's own jobs produced read either.

An unclosed `<think>` is all thinking (the model ran out of tokens while drafting); an
answer without a tag has no thinking. Only a tag at the start opens the thinking (after
whitespace): a `<think>` quoted inside an answer stays in the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from souverain.core.errors import InvalidRequestError
from souverain.core.reasoning import system_prompt

TAGS = (("<think>", "</think>"), ("[THINK]", "[/THINK]"))
REASONING, CONTENT = "reasoning", "content"
KEPT_CHARS = 2000  # of a stream's thinking and answer, for their languages


def pairs_of(tags: str | None) -> tuple[tuple[str, str], ...]:
    """The tag pairs read in a model's answers: its own, or either when it has none."""
    return tuple(pair for pair in TAGS if tags in (None, pair[0]))


def split(text: str, tags: str | None = None) -> tuple[str | None, str]:
    splitter = Splitter(pairs_of(tags))
    parts = [*splitter.feed(text), *splitter.finish()]
    thinking = "".join(t for kind, t in parts if kind == REASONING)
    answer = "".join(t for kind, t in parts if kind == CONTENT)
    return (thinking if splitter.saw_thinking else None), answer


@dataclass
class Splitter:
    """States: `start` (nothing but whitespace seen), `thinking`, `answer`."""

    pairs: tuple[tuple[str, str], ...] = TAGS
    state: str = "start"
    held: str = ""  # text that may be the beginning of a tag
    closing: str = ""
    saw_thinking: bool = False
    _leading: list[str] = field(default_factory=list)

    def feed(self, delta: str) -> list[tuple[str, str]]:
        text, self.held = self.held + delta, ""
        parts: list[tuple[str, str]] = []
        while text:
            if self.state == "start":
                stripped = text.lstrip()
                if not stripped:
                    self._leading.append(text)
                    return parts
                opened = next((p for p in self.pairs if stripped.startswith(p[0])), None)
                if opened is not None:
                    self.state, self.closing, self.saw_thinking = "thinking_start", opened[1], True
                    self._leading.clear()
                    text = stripped[len(opened[0]) :]
                    continue
                if any(pair[0].startswith(stripped) for pair in self.pairs):
                    self.held = text  # "<th…": wait for more
                    return parts
                self.state = "answer"
                text = "".join(self._leading) + text
                self._leading.clear()
                continue
            if self.state == "thinking_start":  # the newlines right after the tag, in any piece
                text = text.lstrip("\n")
                if not text:
                    return parts
                self.state = "thinking"
                continue
            if self.state == "thinking":
                end = text.find(self.closing)
                if end >= 0:
                    if end:
                        parts.append((REASONING, text[:end]))
                    self.state = "answer_start"
                    text = text[end + len(self.closing) :]
                    continue
                keep = _partial_suffix(text, self.closing)
                if len(text) > keep:
                    parts.append((REASONING, text[: len(text) - keep]))
                self.held = text[len(text) - keep :] if keep else ""
                return parts
            if self.state == "answer_start":  # the blank lines between thinking and answer
                stripped = text.lstrip()
                if not stripped:
                    return parts
                self.state, text = "answer", stripped
                continue
            parts.append((CONTENT, text))
            return parts
        return parts

    def finish(self) -> list[tuple[str, str]]:
        """What is left when the stream ends: an unfinished tag is text after all."""
        held, self.held = self.held, ""
        if self.state in ("thinking", "thinking_start"):
            return [(REASONING, held)] if held else []
        leftover = "".join(self._leading) + held
        self._leading.clear()
        return [(CONTENT, leftover)] if leftover.strip() else []


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that begins `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def reasoning_tokens(completion_tokens: int, thinking_chars: int, answer_chars: int) -> int:
    """The engine counts completion tokens as a whole: the thinking's share, by length."""
    if thinking_chars <= 0 or completion_tokens <= 0:
        return 0
    total = thinking_chars + answer_chars
    return min(completion_tokens, round(completion_tokens * thinking_chars / total))


def with_reasoning_tokens(
    usage: dict[str, Any], thinking_chars: int, answer_chars: int
) -> dict[str, Any]:
    """`usage` with `completion_tokens_details.reasoning_tokens` set."""
    details = dict(usage.get("completion_tokens_details") or {})
    completion = int(usage.get("completion_tokens") or 0)
    details["reasoning_tokens"] = reasoning_tokens(completion, thinking_chars, answer_chars)
    return {**usage, "completion_tokens_details": details}


def mistral_content(thinking: str | None, answer: str) -> str | list[dict[str, object]]:
    """Mistral's message content: a thinking chunk, then the text chunk."""
    if thinking is None:
        return answer
    return [
        {"type": "thinking", "thinking": [{"type": "text", "text": thinking}]},
        {"type": "text", "text": answer},
    ]


def mode_for(
    *,
    prompt_mode: str | None,
    effort: str | None,
    capabilities: list[str] | tuple[str, ...],
    mistral_client: bool,
    default: bool = False,
) -> tuple[str | None, bool]:
    """(how thinking is shown: openai | mistral | None, whether to add the system prompt).

    Asking for reasoning (`prompt_mode: reasoning`, or a `reasoning_effort` other than
    `none`) needs a model the registry marks `reasoning`; such a model's answers are always
    split, in the shape of the client that asked (`mistral_client`: Mistral's SDK says who
    it is, and a batch created in Mistral's shape is Mistral's). A model
    one of whose deployments answers in reasoning mode by default (`default`) gets the
    system prompt unless the client says `reasoning_effort: "none"`."""
    asked = prompt_mode == "reasoning" or effort not in (None, "none")
    capable = "reasoning" in capabilities
    if asked and not capable:
        raise InvalidRequestError(
            "This model does not reason: prompt_mode and reasoning_effort need a model the "
            "registry marks as reasoning-capable.",
            param="prompt_mode" if prompt_mode else "reasoning_effort",
        )
    if not capable:
        return None, False
    mistral = prompt_mode is not None or mistral_client
    prompted = asked or (default and effort != "none")
    return ("mistral" if mistral and effort is None else "openai"), prompted


def with_system_prompt(
    messages: list[dict[str, Any]], tags: str | None = None
) -> list[dict[str, Any]]:
    """The reasoning system prompt (with the model's tags) first, unless the caller gave a
    system prompt of its own."""
    if messages and messages[0].get("role") == "system":
        return messages
    return [{"role": "system", "content": system_prompt(tags)}, *messages]


def rewrite_answer(
    raw: bytes, shape: str, tags: str | None = None
) -> tuple[bytes, tuple[str | None, str]]:
    """A whole chat completion with each choice's thinking taken out of its content; and
    the first choice's (thinking, answer)."""
    answer = json.loads(raw)
    thought = said = 0
    first: tuple[str | None, str] | None = None
    for choice in answer.get("choices") or []:
        message = choice.get("message") or {}
        content = message.get("content")
        if not isinstance(content, str):
            continue
        thinking, text = split(content, tags)
        first = first or (thinking, text)
        if shape == "mistral":
            message["content"] = mistral_content(thinking, text)
        else:
            message["content"] = text
            message["reasoning_content"] = thinking
        thought, said = thought + len(thinking or ""), said + len(text)
    if isinstance(answer.get("usage"), dict):
        answer["usage"] = with_reasoning_tokens(answer["usage"], thought, said)
    return json.dumps(answer).encode(), first or (None, "")


class StreamRewriter:
    """Chunk by chunk: each choice's content deltas through its own Splitter."""

    def __init__(self, shape: str, tags: str | None = None) -> None:
        self.shape = shape
        self._pairs = pairs_of(tags)
        self._splitters: dict[int, Splitter] = {}
        self.thinking_chars = 0
        self.answer_chars = 0
        self._kept: dict[str, list[str]] = {REASONING: [], CONTENT: []}  # choice 0, bounded
        self._kept_chars = {REASONING: 0, CONTENT: 0}

    def said(self) -> tuple[str | None, str]:
        """The beginning of the first choice's thinking (None if it had none) and answer."""
        saw = self._splitters.get(0)
        thinking = "".join(self._kept[REASONING])
        return (thinking if saw is not None and saw.saw_thinking else None), "".join(
            self._kept[CONTENT]
        )

    def _keep(self, index: int, parts: list[tuple[str, str]]) -> None:
        if index != 0:
            return
        for kind, text in parts:
            room = KEPT_CHARS - self._kept_chars[kind]
            if room > 0:
                self._kept[kind].append(text[:room])
                self._kept_chars[kind] += min(room, len(text))

    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The chunk as the client sees it, or None when nothing is left to send yet."""
        choices = chunk.get("choices") or []
        kept = []
        for choice in choices:
            delta = choice.get("delta") or {}
            content = delta.get("content")
            splitter = self._splitters.setdefault(
                int(choice.get("index", 0)), Splitter(self._pairs)
            )
            parts = splitter.feed(content) if isinstance(content, str) else []
            finishing = choice.get("finish_reason") is not None
            if finishing:
                parts += splitter.finish()
            self._keep(int(choice.get("index", 0)), parts)
            if isinstance(content, str) or parts:
                rewritten = self._delta(delta, parts)
                if rewritten is None and not finishing:
                    continue  # held back: the start of a tag, or whitespace after thinking
                choice["delta"] = rewritten or {k: v for k, v in delta.items() if k != "content"}
            kept.append(choice)
        if choices and not kept:
            return None
        chunk["choices"] = kept
        return chunk

    def _delta(self, delta: dict[str, Any], parts: list[tuple[str, str]]) -> dict[str, Any] | None:
        thinking = "".join(t for kind, t in parts if kind == REASONING)
        text = "".join(t for kind, t in parts if kind == CONTENT)
        self.thinking_chars += len(thinking)
        self.answer_chars += len(text)
        if not thinking and not text:
            rest = {k: v for k, v in delta.items() if k != "content"}
            return rest or None
        out = {k: v for k, v in delta.items() if k != "content"}
        if self.shape == "mistral":
            pieces: list[dict[str, Any]] = []
            if thinking:
                pieces.append(
                    {"type": "thinking", "thinking": [{"type": "text", "text": thinking}]}
                )
            if text:
                pieces.append({"type": "text", "text": text})
            out["content"] = pieces if thinking else text
        else:
            if thinking:
                out["reasoning_content"] = thinking
            if text:
                out["content"] = text
        return out

    def usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        return with_reasoning_tokens(usage, self.thinking_chars, self.answer_chars)
