"""How each engine speaks OpenAI's API: one adapter per dialect, chosen per replica.

Every engine serves `/v1/chat/completions`, `/v1/completions` and `/v1/embeddings`, but
not quite alike. What differs lives here and nowhere else in the pipeline:

    Dialect         vLLM, the embeddings server, the stand-in: OpenAI's API as it is,
                    and the prompt's size before the first token where souverain's own
                    entry point says it (node/engines/llamacpp_main.py)
    LlamaCppPython  llama-cpp-python's server: a JSON schema only as `json_object` with
                    `schema`
    LlamaServer     llama.cpp's llama-server: the slot the gateway chose (gateway/slots.py)
                    and the request's cache scope, which the engine enforces (a slot's
                    prefix is reused within one scope only), on a shared replica the
                    adapter of the model asked for (`lora`: the gateway alone chooses
                    it, from the authenticated model id), one connection per request,
                    usage and prompt progress asked for in streams, a forced tool call
                    as a JSON schema (gateway/forced_tools.py)

The replica says which program serves it (`runtime`); `dialect_of` picks the adapter.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from souverain.catalog.routes import ReplicaRoute
from souverain.gateway import forced_tools

if TYPE_CHECKING:
    from souverain.gateway.exchange import Exchange


class Dialect:
    """An engine that speaks OpenAI's API as it is (vLLM, embeddings, the stand-in)."""

    name = "openai"

    def headers(self) -> dict[str, str]:
        """Headers this engine needs beyond the secret and the content type."""
        return {}

    def body(self, exchange: Exchange, content: bytes) -> bytes:
        """The request body as this engine takes it (`content`: the bounded body)."""
        return content

    def prompt_tokens(self, payload: str) -> int | None:
        """The prompt's size, if this stream event is the engine saying it before the
        first token (never forwarded to the client); None for any other event. souverain's
        own engine entry points say it in an event of their own (node/engines/
        llamacpp_main.py for llama-cpp-python, and the stand-in that imitates it)."""
        if '"souverain_prompt_tokens"' not in payload:
            return None
        return int(json.loads(payload)["souverain_prompt_tokens"])

    def answer(self, exchange: Exchange, raw: bytes) -> bytes:
        """A whole answer as the client expects it."""
        return raw

    def stream_calls(self, exchange: Exchange) -> forced_tools.StreamCalls | None:
        """What turns a streamed answer into the tool call the gateway forced, if any."""
        return None


class LlamaCppPython(Dialect):
    name = "llama-cpp-python"

    def body(self, exchange: Exchange, content: bytes) -> bytes:
        response_format = exchange.call.body.get("response_format")
        if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
            return content
        # llama-cpp-python's server takes a schema only as `json_object` with `schema`.
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        body = {**exchange.call.body, "response_format": {"type": "json_object", "schema": schema}}
        return json.dumps(body, allow_nan=False).encode()


class LlamaServer(Dialect):
    name = "llama-server"

    def headers(self) -> dict[str, str]:
        # llama-server (cpp-httplib) ends a kept-alive connection after a few requests
        # without always saying so; a request sent on it as it closes would be a 502.
        return {"Connection": "close"}

    def body(self, exchange: Exchange, content: bytes) -> bytes:
        """The slot the gateway chose and the cache scope the engine keeps reuse within
        (`--cache-scopes`), in streams the usage chunk at the end and the prompt's size
        before the first token (so a stream cut short is still charged for its prompt),
        and a forced tool call as a JSON schema; `prefill_first` for a request whose
        organisation the others outnumber on the replica. On a shared replica (`route.lora_id`) the
        request applies its model's adapter and no other; a request for the base model
        names none, so none applies (`--lora-init-without-apply`). A client cannot name
        one itself: the request schemas refuse a `lora` field."""
        call, slot, route = exchange.call, exchange.slot, exchange.route
        body: dict[str, Any] = call.body
        if route is not None and route.lora_id is not None:
            body = {**body, "lora": [{"id": route.lora_id, "scale": 1.0}]}
        if call.endpoint == "chat":
            exchange.forced_tool = forced_tools.forced(body)
            if exchange.forced_tool is not None:
                body = forced_tools.request(body, exchange.forced_tool)
        if call.endpoint != "embeddings" and slot is not None:
            scope = exchange.cache_scope
            body = {**body, "id_slot": slot.index, "cache_prompt": True, "cache_scope": scope}
            if exchange.prefill_first:  # outnumbered on the replica (gateway/shares.py)
                body["prefill_first"] = True
            if call.stream:
                body |= {"stream_options": {"include_usage": True}, "return_progress": True}
        return json.dumps(body, allow_nan=False).encode()

    def prompt_tokens(self, payload: str) -> int | None:
        if '"prompt_progress"' not in payload:  # what it sends while it reads the prompt
            return super().prompt_tokens(payload)
        told = json.loads(payload).get("prompt_progress") or {}
        return int(told.get("total", 0))

    def answer(self, exchange: Exchange, raw: bytes) -> bytes:
        if exchange.forced_tool is None:
            return raw
        return forced_tools.answer(raw, exchange.forced_tool)

    def stream_calls(self, exchange: Exchange) -> forced_tools.StreamCalls | None:
        if exchange.forced_tool is None:
            return None
        return forced_tools.StreamCalls(exchange.forced_tool)


OPENAI, LLAMA_CPP_PYTHON, LLAMA_SERVER = Dialect(), LlamaCppPython(), LlamaServer()


def dialect_of(route: ReplicaRoute) -> Dialect:
    """The dialect of the program that serves the replica (its reported `runtime`; a
    llamacpp replica that does not say is llama-cpp-python, the older runtime)."""
    if route.slotted:
        return LLAMA_SERVER
    if route.engine == "llamacpp" and route.runtime in (None, LLAMA_CPP_PYTHON.name):
        return LLAMA_CPP_PYTHON
    return OPENAI
