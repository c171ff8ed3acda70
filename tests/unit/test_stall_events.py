"""A key is struck for stalling an engine only by the engine's own error event, never by
what the model wrote (its answer may quote the words the engine uses)."""

from __future__ import annotations

import json

from souverain.gateway.relay import _stalled

STOPPED = "sampling limit: its sampler held the engine more than 1000 ms"


def test_the_engines_error_event_is_a_stall() -> None:
    assert _stalled(json.dumps({"error": {"message": STOPPED, "type": "server_error"}}))
    assert _stalled(json.dumps({"error": STOPPED}))


def test_an_answer_quoting_the_words_is_not() -> None:
    chunk = {"object": "chat.completion.chunk",
             "choices": [{"index": 0, "delta": {"content": f"the log said: {STOPPED}"}}]}  # fmt: skip
    assert not _stalled(json.dumps(chunk))
    assert not _stalled(json.dumps({"choices": [{"delta": {"content": "hello"}}]}))
