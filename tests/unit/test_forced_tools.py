"""A forced tool call made from a JSON-schema answer (llama-server), whole and streamed."""

from __future__ import annotations

import json
from typing import Any

from souverain.gateway import forced_tools

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}  # fmt: skip
TIME = {"type": "function", "function": {"name": "get_time"}}


def test_no_forcing_for_auto_none_or_no_tools() -> None:
    assert forced_tools.forced({"tools": [WEATHER], "tool_choice": "auto"}) is None
    assert forced_tools.forced({"tools": [WEATHER]}) is None
    assert forced_tools.forced({"tool_choice": "required"}) is None


def test_a_named_function_is_generated_under_its_parameters() -> None:
    body = {"messages": [], "tools": [WEATHER, TIME],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}  # fmt: skip
    call = forced_tools.forced(body)
    assert call is not None and call.name == "get_weather"
    sent = forced_tools.request(body, call)
    assert "tools" not in sent and "tool_choice" not in sent
    assert sent["response_format"]["json_schema"]["schema"] == WEATHER["function"]["parameters"]


def test_the_whole_answer_becomes_a_tool_call() -> None:
    call = forced_tools.forced({"tools": [WEATHER], "tool_choice": "required"})
    assert call is not None
    raw = json.dumps({"choices": [{"index": 0, "finish_reason": "stop",
                      "message": {"role": "assistant", "content": '{"city": "Paris"}'}}]})  # fmt: skip
    choice = json.loads(forced_tools.answer(raw.encode(), call))["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    [tool] = choice["message"]["tool_calls"]
    assert tool["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


def _delta(content: str | None, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]}


def test_streamed_arguments_arrive_as_tool_call_deltas() -> None:
    call = forced_tools.forced({"tools": [WEATHER], "tool_choice": "required"})
    assert call is not None
    stream = forced_tools.StreamCalls(call)
    out = [stream.chunk(_delta(piece)) for piece in ('{"ci', 'ty": ', '"Paris"}')]
    end = stream.chunk(_delta(None, "stop"))
    pieces = [c["choices"][0]["delta"]["tool_calls"][0] for c in out if c]
    assert pieces[0]["id"] == call.call_id and pieces[0]["function"]["name"] == "get_weather"
    assert "name" not in pieces[1]["function"]
    assert "".join(p["function"]["arguments"] for p in pieces) == '{"city": "Paris"}'
    assert end is not None and end["choices"][0]["finish_reason"] == "tool_calls"


def test_any_of_several_tools_names_the_one_generated() -> None:
    call = forced_tools.forced({"tools": [WEATHER, TIME], "tool_choice": "any"})
    assert call is not None and call.name == forced_tools.ANY
    stream = forced_tools.StreamCalls(call)
    assert stream.chunk(_delta('{"name": "get_time", ')) is None  # held until the end
    assert stream.chunk(_delta('"arguments": {}}')) is None
    end = stream.chunk(_delta(None, "stop"))
    assert end is not None
    [tool] = end["choices"][0]["delta"]["tool_calls"]
    assert tool["function"] == {"name": "get_time", "arguments": "{}"}


def test_a_streamed_call_is_named_once() -> None:
    named = forced_tools.NamedOnce()
    piece = {"index": 0, "id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{"}}  # fmt: skip
    first = named.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [dict(piece)]}}]})
    again = named.chunk({"choices": [{"index": 0, "delta": {"tool_calls": [
        {**piece, "function": {"name": "get_weather", "arguments": "}"}}]}}]})  # fmt: skip
    assert first["choices"][0]["delta"]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert again["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0,
        "function": {"arguments": "}"},
    }
