"""A forced tool call on llama-server: the arguments generated under the tool's JSON
schema, answered as an OpenAI tool call.

llama-server takes `tool_choice` only as a string, and for a chat template without tool
support (SmolLM2's, many small models') it ignores `tools` altogether, so "call
get_weather" would come back as prose. llama-cpp-python forces such a call with a grammar
made from the function's parameters. The gateway does the same for llama-server: the
request goes out without `tools`, with `response_format` set to the JSON schema of the
call, and the answer's JSON content comes back as `message.tool_calls` (in streams, as
tool-call deltas), `finish_reason: "tool_calls"`.

    forced(body)       the forced function's name and schema, or None: `tool_choice`
                       naming a function, or `required`/`any` (one tool: that one;
                       several: any of them, the answer then names which)
    request(body, f)   the body llama-server gets
    answer(raw, f)     a whole completion, rewritten
    StreamCalls        chunk by chunk
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

ANY = "*"  # several tools, any of them: the generated object says which


@dataclass(frozen=True)
class Forced:
    name: str  # the function, or ANY
    schema: dict[str, Any]
    call_id: str


def forced(body: dict[str, Any]) -> Forced | None:
    tools = [t.get("function") or {} for t in body.get("tools") or []]
    choice = body.get("tool_choice")
    if not tools or choice in (None, "none", "auto"):
        return None
    call_id = f"call_{secrets.token_hex(12)}"
    if isinstance(choice, dict):
        name = str((choice.get("function") or {}).get("name", ""))
        chosen = next((t for t in tools if t.get("name") == name), None)
        return None if chosen is None else Forced(name, _parameters(chosen), call_id)
    if len(tools) == 1:
        return Forced(str(tools[0].get("name", "")), _parameters(tools[0]), call_id)
    options = [{"type": "object", "properties": {"name": {"const": t.get("name")},
                "arguments": _parameters(t)}, "required": ["name", "arguments"]}
               for t in tools]  # fmt: skip
    return Forced(ANY, {"anyOf": options}, call_id)


def _parameters(function: dict[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    return parameters if isinstance(parameters, dict) and parameters else {"type": "object"}


def request(body: dict[str, Any], call: Forced) -> dict[str, Any]:
    out = {
        k: v for k, v in body.items() if k not in ("tools", "tool_choice", "parallel_tool_calls")
    }
    out["response_format"] = {"type": "json_schema",
                              "json_schema": {"name": "tool_call", "schema": call.schema}}  # fmt: skip
    return out


def _tool_call(call: Forced, content: str) -> dict[str, Any]:
    name, arguments = call.name, content
    if call.name == ANY:
        try:
            generated = json.loads(content)
            name, arguments = str(generated["name"]), json.dumps(generated["arguments"])
        except (ValueError, KeyError, TypeError):
            name = ""  # cut short by max_tokens: what came, unparsed
    return {"id": call.call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}  # fmt: skip


def answer(raw: bytes, call: Forced) -> bytes:
    whole = json.loads(raw)
    for choice in whole.get("choices") or []:
        message = choice.get("message") or {}
        content = message.get("content")
        if isinstance(content, str):
            message["tool_calls"] = [_tool_call(call, content)]
            message["content"] = None
            if choice.get("finish_reason") == "stop":
                choice["finish_reason"] = "tool_calls"
    return json.dumps(whole).encode()


class StreamCalls:
    """Content deltas become the call's argument deltas. With one function known in
    advance they stream as they come; with `any of them` the name is only known at the
    end, so the call is sent whole when the choice finishes."""

    def __init__(self, call: Forced) -> None:
        self.call = call
        self._started: set[int] = set()
        self._held: dict[int, list[str]] = {}

    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        choices = chunk.get("choices") or []
        for choice in choices:
            index = int(choice.get("index", 0))
            delta = choice.get("delta") or {}
            content = delta.pop("content", None)
            if isinstance(content, str) and content:
                if self.call.name == ANY:
                    self._held.setdefault(index, []).append(content)
                else:
                    delta["tool_calls"] = [self._piece(index, content)]
            if choice.get("finish_reason") is not None:
                if self.call.name == ANY:
                    whole = _tool_call(self.call, "".join(self._held.pop(index, [])))
                    delta["tool_calls"] = [{"index": 0, **whole}]
                if choice["finish_reason"] == "stop":
                    choice["finish_reason"] = "tool_calls"
            choice["delta"] = delta
        if choices and all(not (c.get("delta") or c.get("finish_reason")) for c in choices):
            return None
        return chunk

    def _piece(self, index: int, arguments: str) -> dict[str, Any]:
        if index in self._started:
            return {"index": 0, "function": {"arguments": arguments}}
        self._started.add(index)
        return {"index": 0, "id": self.call.call_id, "type": "function",
                "function": {"name": self.call.name, "arguments": arguments}}  # fmt: skip


class NamedOnce:
    """A streamed tool call's id, type and name in its first delta only, as OpenAI sends
    them (llama-cpp-python repeats them in every delta, which clients that concatenate
    the pieces, like the openai SDK's stream helpers, turn into `get_weatherget_weather…`)."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, int]] = set()

    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        for choice in chunk.get("choices") or []:
            for call in (choice.get("delta") or {}).get("tool_calls") or []:
                key = (int(choice.get("index", 0)), int(call.get("index", 0)))
                if key not in self._seen:
                    self._seen.add(key)
                    continue
                for field in ("id", "type"):
                    call.pop(field, None)
                if isinstance(call.get("function"), dict):
                    call["function"].pop("name", None)
        return chunk
