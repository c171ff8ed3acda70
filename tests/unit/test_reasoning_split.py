"""Thinking taken out of answers, whole and streamed: tags cut anywhere, unclosed thinking,
no thinking, Mistral's [THINK] tags, and a tag quoted inside an answer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from souverain.core.reasoning import SYSTEM_PROMPT, system_prompt
from souverain.gateway.reasoning import (
    CONTENT,
    REASONING,
    Splitter,
    mistral_content,
    reasoning_tokens,
    split,
)


@pytest.mark.parametrize(
    ("text", "thinking", "answer"),
    [
        ("<think>\n2+2 is 4\n</think>\n\nThe answer is 4.", "2+2 is 4\n", "The answer is 4."),
        ("[THINK]deux et deux[/THINK]Quatre.", "deux et deux", "Quatre."),
        ("  \n<think>x</think>y", "x", "y"),
        ("No thinking here.", None, "No thinking here."),
        ("<think>ran out of tokens while drafting", "ran out of tokens while drafting", ""),
        ("Say <think> to think.", None, "Say <think> to think."),
        ("<think></think>Just the answer.", "", "Just the answer."),
        ("<thinker>not a tag", None, "<thinker>not a tag"),
        ("<th", None, "<th"),
        ("", None, ""),
    ],
)
def test_whole_answers(text: str, thinking: str | None, answer: str) -> None:
    assert split(text) == (thinking, answer)


def streamed(pieces: list[str]) -> tuple[str, str, list[tuple[str, str]]]:
    splitter = Splitter()
    parts = [part for piece in pieces for part in splitter.feed(piece)] + splitter.finish()
    thinking = "".join(t for kind, t in parts if kind == REASONING)
    answer = "".join(t for kind, t in parts if kind == CONTENT)
    return thinking, answer, parts


def test_a_tag_split_across_chunks() -> None:
    thinking, answer, parts = streamed(["<th", "ink>I am thin", "king</thi", "nk>\n\nDone", "."])
    assert (thinking, answer) == ("I am thinking", "Done.")
    assert parts[0] == (REASONING, "I am thin")  # thinking goes out as it is generated


def test_nothing_held_longer_than_a_possible_tag() -> None:
    splitter = Splitter()
    splitter.feed("<think>")
    assert splitter.feed("abc<") == [(REASONING, "abc")]
    assert splitter.feed("b>") == [(REASONING, "<b>")]


@given(st.text(max_size=60), st.text(max_size=60), st.lists(st.integers(1, 7), max_size=40))
def test_any_cutting_of_a_stream_gives_the_whole_split(
    thinking: str, answer: str, cuts: list[int]
) -> None:
    if "</think>" in thinking or answer[:1].isspace() or "<think>" in thinking:
        return
    text = f"<think>{thinking}</think>{answer}"
    pieces, position = [], 0
    for size in cuts:
        pieces.append(text[position : position + size])
        position += size
    pieces.append(text[position:])
    got_thinking, got_answer, _ = streamed(pieces)
    assert (got_thinking, got_answer) == split(text)


def test_reasoning_tokens_and_mistral_chunks() -> None:
    assert reasoning_tokens(100, 30, 10) == 75  # thinking's share of the characters
    assert reasoning_tokens(100, 0, 6) == 0
    assert mistral_content(None, "plain") == "plain"
    assert mistral_content("why", "because") == [
        {"type": "thinking", "thinking": [{"type": "text", "text": "why"}]},
        {"type": "text", "text": "because"},
    ]


class TestTagFormats:
    """A model registered with its tag format reads only that pair; the models souverain's
    own jobs produced (no format) read either."""

    def test_a_magistral_model_reads_its_own_tags_only(self) -> None:
        assert split("[THINK]draft[/THINK]Answer.", "[THINK]") == ("draft", "Answer.")
        assert split("<think>x</think>y", "[THINK]") == (None, "<think>x</think>y")

    def test_a_think_model_leaves_magistral_tags_in_its_answer(self) -> None:
        assert split("[THINK]x[/THINK]y", "<think>") == (None, "[THINK]x[/THINK]y")
        assert split("<think>x</think>y", "<think>") == ("x", "y")

    def test_no_format_reads_either(self) -> None:
        assert split("[THINK]x[/THINK]y") == ("x", "y") == split("<think>x</think>y")

    def test_the_system_prompt_teaches_the_models_tags(self) -> None:
        magistral = system_prompt("[THINK]")
        assert "[THINK]\nYour thoughts and drafts.\n[/THINK]" in magistral
        assert "<think>" not in magistral
        assert system_prompt("<think>") == system_prompt(None) == SYSTEM_PROMPT
