"""One adapter per engine dialect (gateway/dialects.py): chosen by what serves the replica,
each saying its engine's differences and nothing else. The engines themselves are tested
in tests/node/test_llamacpp_runtimes.py and tests/security/test_prefix_cache.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from pydantic import ValidationError

from souverain.catalog.routes import ReplicaRoute
from souverain.gateway.dialects import LLAMA_CPP_PYTHON, LLAMA_SERVER, OPENAI, dialect_of
from souverain.gateway.exchange import Exchange
from souverain.gateway.forced_tools import Forced
from souverain.gateway.schemas import ChatCompletionRequest, CompletionRequest
from souverain.gateway.slots import Slot


def route(engine: str, runtime: str | None) -> ReplicaRoute:
    return ReplicaRoute(
        replica_id="r", deployment_id="d", deployment_org_id=None, model_id="m",
        model_name="m", url="http://x", node_id=None, datacenter_id="dc", country="FR",
        operator_country="FR", certifications=frozenset(), engine=engine, runtime=runtime,
    )  # fmt: skip


@dataclass
class Call:
    body: dict[str, Any]
    endpoint: str = "chat"
    stream: bool = False


@dataclass
class Seen:
    """What a dialect reads of an exchange."""

    call: Call
    slot: Slot | None = None
    cache_scope: str = "s"
    prefill_first: bool = False
    forced_tool: Forced | None = field(default=None)
    route: ReplicaRoute | None = None


def exchange(body: dict[str, Any], **kwargs: Any) -> Exchange:
    endpoint, stream = kwargs.pop("endpoint", "chat"), kwargs.pop("stream", False)
    return cast(Exchange, Seen(Call(body, endpoint, stream), **kwargs))


SCHEMA = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
WEATHER = {"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}


class TestChoice:
    @pytest.mark.parametrize(
        ("engine", "runtime", "expected"),
        [
            ("llamacpp", "llama-server", LLAMA_SERVER),
            ("llamacpp", "llama-cpp-python", LLAMA_CPP_PYTHON),
            ("llamacpp", None, LLAMA_CPP_PYTHON),  # a replica that does not say: the older
            ("vllm", None, OPENAI),
            ("embeddings", None, OPENAI),
            ("stand-in", None, OPENAI),
        ],
    )
    def test_by_what_serves_the_replica(self, engine: str, runtime: str | None,
                                        expected: object) -> None:  # fmt: skip
        assert dialect_of(route(engine, runtime)) is expected


class TestBodies:
    def test_openai_engines_get_the_body_as_it_is(self) -> None:
        content = b'{"model": "m"}'
        assert OPENAI.body(exchange({"response_format": SCHEMA}), content) is content
        assert OPENAI.headers() == {}

    def test_llama_cpp_python_takes_a_schema_as_json_object(self) -> None:
        sent = json.loads(LLAMA_CPP_PYTHON.body(exchange({"response_format": SCHEMA}), b""))
        assert sent["response_format"] == {"type": "json_object", "schema": {"type": "object"}}

    def test_llama_server_gets_its_slot_scope_one_connection_and_stream_progress(self) -> None:
        seen = exchange({"messages": []}, stream=True, slot=Slot(3, warm=False))
        sent = json.loads(LLAMA_SERVER.body(seen, b""))
        # The engine keeps reuse within the scope, so it may always try (warm or not).
        assert (sent["id_slot"], sent["cache_prompt"], sent["cache_scope"]) == (3, True, "s")
        assert sent["stream_options"] == {"include_usage": True} and sent["return_progress"]
        assert LLAMA_SERVER.headers() == {"Connection": "close"}

    def test_an_outnumbered_organisations_request_asks_for_its_prompt_first(self) -> None:
        first = exchange({"messages": []}, slot=Slot(1, warm=False), prefill_first=True)
        assert json.loads(LLAMA_SERVER.body(first, b""))["prefill_first"] is True
        plain = exchange({"messages": []}, slot=Slot(1, warm=False))
        assert "prefill_first" not in json.loads(LLAMA_SERVER.body(plain, b""))
        # only souverain's llama-server knows the field
        assert LLAMA_CPP_PYTHON.body(first, b"{}") == b"{}"

    def test_a_shared_replica_gets_the_adapter_of_the_routes_model_only(self) -> None:
        from dataclasses import replace

        adapter = replace(route("llamacpp", "llama-server"), lora_id=2)
        seen = exchange({"messages": []}, slot=Slot(0, warm=True), route=adapter)
        assert json.loads(LLAMA_SERVER.body(seen, b""))["lora"] == [{"id": 2, "scale": 1.0}]
        base = exchange({"messages": []}, slot=Slot(0, warm=True),
                        route=route("llamacpp", "llama-server"))  # fmt: skip
        assert "lora" not in json.loads(LLAMA_SERVER.body(base, b""))  # none applies

    def test_llama_server_gets_a_forced_tool_call_as_a_schema_and_answers_a_call(self) -> None:
        body = {"messages": [], "tools": [WEATHER], "tool_choice": "required"}
        seen = exchange(body, slot=Slot(0, warm=True))
        sent = json.loads(LLAMA_SERVER.body(seen, b""))
        assert "tools" not in sent and sent["response_format"]["type"] == "json_schema"
        answer = {"choices": [{"message": {"content": '{"city": "Paris"}'},
                               "finish_reason": "stop"}]}  # fmt: skip
        rewritten = json.loads(LLAMA_SERVER.answer(seen, json.dumps(answer).encode()))
        [call] = rewritten["choices"][0]["message"]["tool_calls"]
        assert call["function"] == {"name": "weather", "arguments": '{"city": "Paris"}'}
        assert rewritten["choices"][0]["finish_reason"] == "tool_calls"


class TestStreams:
    def test_each_says_the_prompts_size_its_own_way_and_nothing_else_is_taken(self) -> None:
        own = json.dumps({"choices": [], "souverain_prompt_tokens": 12})
        progress = json.dumps({"prompt_progress": {"total": 40, "processed": 8}})
        token = json.dumps({"choices": [{"delta": {"content": "hi"}}]})
        assert LLAMA_CPP_PYTHON.prompt_tokens(own) == 12
        assert OPENAI.prompt_tokens(own) == 12  # souverain's own entry points (the stand-in)
        assert LLAMA_SERVER.prompt_tokens(progress) == 40
        assert OPENAI.prompt_tokens(progress) is None  # only llama-server's is taken as such
        assert all(d.prompt_tokens(token) is None for d in (OPENAI, LLAMA_CPP_PYTHON, LLAMA_SERVER))


@pytest.mark.parametrize(
    "field", ["prefill_first", "cache_scope", "id_slot", "lora", "cache_prompt"]
)
def test_a_client_cannot_write_what_the_gateway_tells_the_engine(field: str) -> None:
    """The fields the gateway sets for llama-server (whose prompt goes first, whose cache a
    request may reuse, which slot and adapter it takes) are refused in a client's body, so
    no tenant can jump the queue or reach another's cached prompt by naming them."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], field: True}
    with pytest.raises(ValidationError, match=field):
        ChatCompletionRequest.model_validate(body)
    with pytest.raises(ValidationError, match=field):
        CompletionRequest.model_validate({"model": "m", "prompt": "hi", field: True})
