"""Relaying a streamed answer: server-sent events from the engine to the client, with the
usage the engine reported (or, if the stream broke first, what was delivered). What one
engine says differently from another (its prompt-size events, a forced tool call) is its
dialect's (gateway/dialects.py).

The relay concludes its exchange when it ends, however it ends: `[DONE]` (ok), the engine
breaking off (upstream_error, and an error event to the client), the client going away or
the generator being closed (client_cancelled). A stream the engine stopped because its
sampler stalled the engine (`sampling limit:`) counts against the key like a crash.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

from souverain.core.errors import STATUS, ErrorCode, error_body
from souverain.gateway import forced_tools, reasoning, upstream
from souverain.gateway.exchange import Exchange
from souverain.metering.usage import Settlement
from souverain.node.engines.base import SAMPLING_LIMIT


@dataclass
class Progress:
    chunks: int = 0
    ttft_ms: float | None = None
    reported: dict[str, Any] | None = None  # the engine's usage chunk
    prompt_tokens: int | None = None  # said by the engine before the first token
    done: bool = False
    broken: str = ""
    stalled: bool = False  # the engine stopped it for its sampler's cost (SAMPLING_LIMIT)


async def relay(exchange: Exchange, response: upstream.Response) -> AsyncIterator[bytes]:
    events = Events(exchange)
    progress = events.progress
    try:
        async for line in response.lines():
            if not line.startswith("data:"):
                continue
            payload = line[5:].strip()
            if payload == "[DONE]":
                progress.done = True
                break
            progress.stalled = progress.stalled or _stalled(payload)
            for out in events.forward(payload):
                yield out
        if progress.stalled:
            await exchange.note_engine_failure("stopped a stream whose sampler stalled it")
        if progress.done:
            yield b"data: [DONE]\n\n"
        else:
            progress.broken = "stream ended early"
            yield stream_error("The model engine broke off the stream.")
    except upstream.TimedOut as error:
        progress.broken = str(error)
        yield stream_error("The model engine stopped answering; the stream was ended.")
    except upstream.Broken as error:
        progress.broken = str(error) or type(error).__name__
        await exchange.note_engine_failure("broke off its stream")
        yield stream_error("The model engine broke off the stream.")
    except ValueError:
        progress.broken = "the engine sent an event that is not JSON"
        yield stream_error("The model engine sent a malformed event.")
    finally:
        response.close()
        if events.thinking is not None:
            exchange.said(*events.thinking.said())
        exchange.conclude(_settlement(exchange, progress))


class Events:
    """One stream's engine events, each made what the client gets (possibly nothing)."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.progress = Progress()
        shown = exchange.call.reasoning
        tags = exchange.call.model.reasoning_tags
        self.thinking = reasoning.StreamRewriter(shown, tags) if shown else None
        self.calls = exchange.dialect.stream_calls(exchange)
        self.named = forced_tools.NamedOnce()

    def forward(self, payload: str) -> list[bytes]:
        exchange, progress = self.exchange, self.progress
        told = exchange.dialect.prompt_tokens(payload)
        if told is not None:  # the engine says the prompt's size: not for the client
            progress.prompt_tokens = told
            return []
        if progress.ttft_ms is None:
            progress.ttft_ms = exchange.elapsed_ms()
        usage: dict[str, Any] | None = None
        if '"usage"' in payload:
            chunk = json.loads(payload)
            usage = chunk.pop("usage", None) or None
            if usage is not None:
                progress.reported = usage
                usage = {**chunk, "choices": [], "usage": usage}
                if not chunk.get("choices"):  # OpenAI's shape: usage in a chunk of its own
                    return [self._usage(usage)] if exchange.call.include_usage else []
                # llama-server's text completions put it on the last chunk: split it off
                payload = json.dumps(chunk)
        progress.chunks += 1
        payload = self._rewritten(payload)
        out = [f"data: {payload}\n\n".encode()] if payload else []
        if usage is not None and exchange.call.include_usage:
            out.append(self._usage(usage))
        return out

    def _rewritten(self, payload: str) -> str:
        """A forced tool call, tool calls named once, thinking apart; "" for nothing."""
        if self.calls is not None:
            called = self.calls.chunk(json.loads(payload))
            payload = "" if called is None else json.dumps(called)
        elif '"tool_calls"' in payload:
            payload = json.dumps(self.named.chunk(json.loads(payload)))
        if self.thinking is not None and payload:
            rewritten = self.thinking.chunk(json.loads(payload))
            payload = "" if rewritten is None else json.dumps(rewritten)
        return payload

    def _usage(self, chunk: dict[str, Any]) -> bytes:
        return from_usage(self.exchange, chunk, self.thinking)


def _settlement(exchange: Exchange, progress: Progress) -> Settlement:
    if progress.done:
        settlement = exchange.base("ok")
    elif progress.broken:
        settlement = exchange.base("upstream_error", progress.broken[:500])
    else:
        settlement = exchange.base("client_cancelled", "client disconnected")
    settlement = replace(settlement, latency_ms=exchange.elapsed_ms(), ttft_ms=progress.ttft_ms)
    if progress.reported is not None:
        return replace(
            settlement,
            prompt_tokens=int(progress.reported.get("prompt_tokens", 0)),
            completion_tokens=int(progress.reported.get("completion_tokens", 0)),
        )
    # The engine's final count never came (the stream broke): the prompt it said it read,
    # and the tokens that were delivered.
    return replace(
        settlement,
        prompt_tokens=progress.prompt_tokens or 0,
        completion_tokens=progress.chunks,
        tokens_counted_by="gateway",
    )


def from_usage(
    exchange: Exchange, chunk: dict[str, Any], thinking: reasoning.StreamRewriter | None
) -> bytes:
    """The usage chunk for a client that asked for one, with reasoning tokens counted."""
    if thinking is not None:
        chunk["usage"] = thinking.usage(chunk["usage"])
    return usage_chunk(exchange, chunk)


def usage_chunk(exchange: Exchange, chunk: dict[str, Any]) -> bytes:
    """The engine's usage chunk, with souverain's energy and CO2e estimates added."""
    tokens = chunk["usage"]
    estimate = exchange.metered(
        replace(
            exchange.base(),
            prompt_tokens=int(tokens.get("prompt_tokens", 0)),
            completion_tokens=int(tokens.get("completion_tokens", 0)),
        )
    )
    route = exchange.route
    chunk["souverain"] = {
        "energy_joules": round(estimate.energy_estimate_j or 0.0, 6),
        "co2e_grams": round(exchange.co2e_grams(estimate), 9),
        "datacenter": route.datacenter_id if route else None,
    }
    return f"data: {json.dumps(chunk)}\n\n".encode()


def stream_error(message: str) -> bytes:
    body = error_body(STATUS[ErrorCode.UPSTREAM_ERROR], message, ErrorCode.UPSTREAM_ERROR)
    return f"data: {json.dumps(body)}\n\n".encode()


def _stalled(payload: str) -> bool:
    """An event saying the engine stopped the request's sampler: never a chunk of the
    answer (`choices`), whose words may say anything."""
    if SAMPLING_LIMIT not in payload:
        return False
    try:
        event = json.loads(payload)
    except ValueError:
        return True  # not a chunk of the answer
    return not (isinstance(event, dict) and "choices" in event)
