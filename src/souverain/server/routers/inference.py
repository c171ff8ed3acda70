"""/v1 routes. Each parses and bounds its body, then hands over to the pipeline."""

from __future__ import annotations

from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ValidationError

from souverain.catalog.routes import ModelInfo
from souverain.core.access import check_scope
from souverain.core.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.gateway import pipeline, reasoning
from souverain.gateway.errors import validation_message
from souverain.gateway.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from souverain.gateway.state import AppState
from souverain.server.deps import PrincipalDep, StateDep, get_principal

router = APIRouter(prefix="/v1", tags=["inference"])

Body = TypeVar("Body", bound=BaseModel)
InferenceBody = ChatCompletionRequest | CompletionRequest | EmbeddingRequest

_JSON_BODY = {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}


async def parse_body(request: Request, state: AppState, model: type[Body]) -> Body:
    """Read and validate a body with bounds; errors are 400/413 in OpenAI's shape."""
    media_type = (
        request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    )
    if media_type != "application/json":
        raise UnsupportedMediaTypeError(
            f"Send the body as JSON (Content-Type: application/json), not {media_type}."
        )
    declared = request.headers.get("content-length")

    limit = state.settings.max_request_bytes
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"Request body exceeds {limit} bytes.")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            raise PayloadTooLargeError(f"Request body exceeds {limit} bytes.")
    try:
        return model.model_validate_json(bytes(raw))
    except ValidationError as error:
        message, param = validation_message(list(error.errors(include_url=False)))
        raise InvalidRequestError(message, param=param) from None


async def caller(request: Request) -> tuple[AppState, Principal]:
    """The hot routes authenticate without FastAPI's dependency machinery, which costs
    about a third of the gateway's own time per request; the check is the same."""
    state: AppState = request.app.state.souverain
    return state, await get_principal(request, state)


def check_embeddings_work(body: EmbeddingRequest, state: AppState) -> None:
    """One embeddings request may not hold the engine for long: its inputs are bounded in
    number and in total size (a 2,048-input request once held a CPU engine for 99 s)."""
    inputs = body.input if isinstance(body.input, list) else [body.input]
    limit, size = state.settings.embeddings_max_inputs, sum(len(t.encode()) for t in inputs)
    if len(inputs) > limit:
        raise InvalidRequestError(
            f"At most {limit} inputs per embeddings request; split the batch.", param="input"
        )
    if size > state.settings.embeddings_max_bytes:
        raise InvalidRequestError(
            f"The inputs total {size} bytes; at most {state.settings.embeddings_max_bytes} per "
            "embeddings request. Split the batch.",
            param="input",
        )


def _model_object(model: ModelInfo) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": model.created,
        "owned_by": model.owner_org_id or "souverain",
    }


@router.get("/models", summary="List models")
async def list_models(principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """Models you can call right now: visible to your organisation and served by a ready
    replica in a datacenter your sovereignty policy allows."""
    check_scope(principal, Scope.INFERENCE)
    table = state.routes
    models = [
        _model_object(model)
        for model in table.visible_models(principal)
        if table.compliant_routes(principal, model)[0]
    ]

    return {"object": "list", "data": models}


@router.get("/models/{model:path}", summary="Retrieve a model")
async def get_model(model: str, principal: PrincipalDep, state: StateDep) -> dict[str, Any]:
    """One model, if you can call it."""
    check_scope(principal, Scope.INFERENCE)
    info = state.routes.visible_model(principal, model)
    if info is None:
        raise ModelNotFoundError(
            f"The model '{model}' does not exist or you do not have access to it."
        )
    return _model_object(info)


async def infer(request: Request, endpoint: str, schema: type[InferenceBody]) -> Response:
    """The one path of every inference route: authenticate, bound the body, resolve the
    model the caller may use, then the pipeline."""
    state, principal = await caller(request)
    check_scope(principal, Scope.INFERENCE)
    body = await parse_body(request, state, schema)
    model = await pipeline.resolve_model(state, principal, body.model, endpoint)
    if isinstance(body, EmbeddingRequest):
        check_embeddings_work(body, state)
        upstream, stream, include_usage = body.upstream_body(), False, False
    else:
        upstream = body.upstream_body(max_tokens_cap=model.context_length)
        stream, include_usage = bool(body.stream), body.include_usage
    shown = None
    if isinstance(body, ChatCompletionRequest):
        shown, prompted = reasoning.mode_for(
            prompt_mode=body.prompt_mode, effort=body.reasoning_effort,
            capabilities=model.capabilities, user_agent=request.headers.get("user-agent", ""),
            default=model.reasoning_default,
        )  # fmt: skip
        if prompted:
            upstream["messages"] = reasoning.with_system_prompt(upstream["messages"])
    call = pipeline.Call(
        state=state,
        principal=principal,
        endpoint=endpoint,
        model=model,
        body=upstream,
        stream=stream,
        include_usage=include_usage,
        reasoning=shown,
    )
    return await pipeline.run(call, request)


@router.post(
    "/chat/completions",
    summary="Create a chat completion",
    openapi_extra={"requestBody": _JSON_BODY},
)
async def chat_completions(request: Request) -> Response:
    """OpenAI- and Mistral-compatible chat. `stream: true` streams server-sent events; with
    `stream_options: {"include_usage": true}` the last chunk carries token usage."""
    return await infer(request, "chat", ChatCompletionRequest)


@router.post(
    "/completions", summary="Create a text completion", openapi_extra={"requestBody": _JSON_BODY}
)
async def completions(request: Request) -> Response:
    """Legacy text completion (OpenAI `completions`)."""
    return await infer(request, "completions", CompletionRequest)


@router.post("/embeddings", summary="Create embeddings", openapi_extra={"requestBody": _JSON_BODY})
async def embeddings(request: Request) -> Response:
    """Embeddings, for models registered with the `embeddings` capability."""
    return await infer(request, "embeddings", EmbeddingRequest)
