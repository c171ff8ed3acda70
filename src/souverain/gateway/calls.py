"""What an inference request asks, once parsed: the `Call` the pipeline executes.

`prepare` is the one way a Call is made, for a live request (server/routers/inference.py)
and a batch line (jobs/batches/runner.py) alike: the model resolved among those the caller
may use, the body bounded (the embeddings work limit included), capped to the model's
context, and put in reasoning mode where asked. A batch line carries its `Line`: its usage
record id (the same on every attempt), its batch, and the exchange once admitted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from souverain.catalog.routes import ModelInfo
from souverain.core.access import check_scope
from souverain.core.errors import InvalidRequestError, ModelNotFoundError, quoted
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.gateway import reasoning
from souverain.gateway.schemas import ChatCompletionRequest, EmbeddingRequest, InferenceBody
from souverain.gateway.state import AppState
from souverain.settings import Settings

if TYPE_CHECKING:
    from souverain.gateway.exchange import Exchange

WHAT = {"chat": "chat completions", "completions": "text completions", "embeddings": "embeddings"}


@dataclass
class Line:
    """A batch line's identity: its record id is the same on every attempt, so a line is
    metered once; `exchange` is set once the line is admitted, and its settlement is then
    written by the runner in the transaction that keeps the line's result."""

    batch_id: str
    record_id: str
    exchange: Exchange | None = field(default=None, repr=False)


@dataclass
class Call:
    """What the route parsed: who asks, for what, and the bounded body."""

    state: AppState
    principal: Principal
    endpoint: str  # chat | completions | embeddings
    model: ModelInfo
    body: dict[str, Any]
    stream: bool
    include_usage: bool
    reasoning: str | None = None  # openai | mistral: how thinking is shown (gateway/reasoning)
    line: Line | None = None  # a batch line: waits behind live requests for a slot

    @property
    def queued_as_batch(self) -> bool:
        """Whether it waits behind interactive requests for a slot and holds at most the
        batch share of a replica's slots: a batch line, or any request of a batch key."""
        return self.line is not None or self.principal.priority == "batch"


async def prepare(
    state: AppState,
    principal: Principal,
    endpoint: str,
    body: InferenceBody,
    *,
    mistral_client: bool = False,
    line: Line | None = None,
) -> Call:
    """The call a parsed body stands for, or a refusal (404 model, 400 bounds)."""
    model = await resolve_model(state, principal, body.model, endpoint)
    check_body(body, state.settings)
    if isinstance(body, EmbeddingRequest):
        upstream, stream, include_usage = body.upstream_body(), False, False
    else:
        upstream = body.upstream_body(max_tokens_cap=model.context_length)
        stream, include_usage = bool(body.stream), body.include_usage
    shown = None
    if isinstance(body, ChatCompletionRequest):
        shown, prompted = reasoning.mode_for(
            prompt_mode=body.prompt_mode, effort=body.reasoning_effort,
            capabilities=model.capabilities, mistral_client=mistral_client,
            default=model.reasoning_default,
        )  # fmt: skip
        if prompted:
            upstream["messages"] = reasoning.with_system_prompt(
                upstream["messages"], model.reasoning_tags
            )
    return Call(state, principal, endpoint, model, upstream, stream, include_usage, shown, line)


async def resolve_model(
    state: AppState, principal: Principal, name: str, endpoint: str
) -> ModelInfo:
    """The model `name` as the caller may use it, able to serve `endpoint`."""
    check_scope(principal, Scope.INFERENCE)
    if principal.org_id is not None and principal.org_id not in state.routes.default_projects:
        # An organisation the table has not seen yet (made, and its policy set, since the
        # last refresh): its policy is read before anything is routed for it.
        await state.routes.refresh_if_older_than(state.sessions, 0.25)
    model = state.routes.visible_model(principal, name)
    if model is None:
        await state.routes.refresh_if_older_than(state.sessions, 0.25)
        model = state.routes.visible_model(principal, name)
    if model is None:
        raise ModelNotFoundError(
            f"The model {quoted(name)} does not exist or you do not have access to it.",
            param="model",
        )
    if endpoint not in model.capabilities:
        raise InvalidRequestError(
            f"The model {quoted(name)} does not support {WHAT[endpoint]}.", param="model"
        )
    return model


def check_body(body: InferenceBody, settings: Settings) -> None:
    """Bounds beyond the schema's. One embeddings request may not hold the engine for
    long: its inputs are bounded in number and in total size (a 2,048-input request once
    held a CPU engine for 99 s)."""
    if not isinstance(body, EmbeddingRequest):
        return
    inputs = body.input if isinstance(body.input, list) else [body.input]
    limit, size = settings.embeddings_max_inputs, sum(len(t.encode()) for t in inputs)
    if len(inputs) > limit:
        raise InvalidRequestError(
            f"At most {limit} inputs per embeddings request; split the batch.", param="input"
        )
    if size > settings.embeddings_max_bytes:
        raise InvalidRequestError(
            f"The inputs total {size} bytes; at most {settings.embeddings_max_bytes} per "
            "embeddings request. Split the batch.",
            param="input",
        )


def encode(call: Call) -> bytes:
    """The body as JSON, naming the model as the engine serves it."""
    call.body["model"] = call.model.name
    try:
        return json.dumps(call.body, allow_nan=False).encode()
    except ValueError:
        raise InvalidRequestError(
            "Numbers must be finite: NaN and Infinity are not JSON."
        ) from None
