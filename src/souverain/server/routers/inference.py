"""/v1 routes. Each parses and bounds its body, then hands over to the pipeline."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TypeVar

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.types import Receive, Send
from starlette.types import Scope as ASGIScope

from souverain.catalog.routes import ModelInfo
from souverain.core.access import check_scope
from souverain.core.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
    quoted,
    validation_message,
)
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.schemas.models import ModelList, ModelObject
from souverain.gateway import calls, pipeline
from souverain.gateway.exchange import Answer, Exchange
from souverain.gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    InferenceBody,
)
from souverain.gateway.state import AppState
from souverain.server.deps import PrincipalDep, StateDep, get_principal

router = APIRouter(prefix="/v1", tags=["inference"])

Body = TypeVar("Body", bound=BaseModel)

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


def _model_object(model: ModelInfo) -> ModelObject:
    return ModelObject(
        id=model.name, created=model.created, owned_by=model.owner_org_id or "souverain"
    )


@router.get("/models", summary="List models")
async def list_models(principal: PrincipalDep, state: StateDep) -> ModelList:
    """Models you can call right now: visible to your organisation and served by a ready
    replica in a datacenter your sovereignty policy allows, or by a deployment scaled to
    zero that starts one for your request."""
    check_scope(principal, Scope.INFERENCE)
    table = state.routes
    models = [
        _model_object(model)
        for model in table.visible_models(principal)
        if table.compliant_routes(principal, model)[0] or table.wakeable_for(principal, model)
    ]

    return ModelList(data=models)


@router.get("/models/{model:path}", summary="Retrieve a model")
async def get_model(model: str, principal: PrincipalDep, state: StateDep) -> ModelObject:
    """One model, if you can call it."""
    check_scope(principal, Scope.INFERENCE)
    info = state.routes.visible_model(principal, model)
    if info is None:
        raise ModelNotFoundError(
            f"The model {quoted(model)} does not exist or you do not have access to it."
        )
    return _model_object(info)


async def infer(request: Request, endpoint: str, schema: type[InferenceBody]) -> Response:
    """The one path of every inference route: authenticate, bound the body, then the
    gateway prepares the call and executes it."""
    state, principal = await caller(request)
    check_scope(principal, Scope.INFERENCE)
    body = await parse_body(request, state, schema)
    mistral_client = "mistral-client" in request.headers.get("user-agent", "").lower()
    call = await calls.prepare(state, principal, endpoint, body, mistral_client=mistral_client)
    return response_of(await pipeline.execute(call, Disconnect(request)))


class Disconnect:
    """Tells the pipeline when the client goes away."""

    def __init__(self, request: Request) -> None:
        self._request = request

    async def gone(self) -> None:
        while (await self._request.receive())["type"] != "http.disconnect":
            pass


def response_of(answer: Answer) -> Response:
    if answer.events is not None:
        return SettledStream(answer.exchange, answer.events, dict(answer.headers))
    if answer.status == 499:  # the client went away: nobody reads this
        return Response(status_code=499)
    return Response(answer.content, media_type="application/json", headers=dict(answer.headers))


class SettledStream(StreamingResponse):
    """A streamed answer that settles its exchange when it ends, however it ends: the
    body generator is closed first, so it concludes before the settlement is written."""

    def __init__(
        self, exchange: Exchange, body: AsyncIterator[bytes], headers: dict[str, str]
    ) -> None:
        super().__init__(body, media_type="text/event-stream", headers=headers)
        self._exchange = exchange
        self._body = body

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        async with self._exchange:
            try:
                await super().__call__(scope, receive, send)
            finally:
                with anyio.CancelScope(shield=True):
                    await _close(self._body)


async def _close(body: AsyncIterator[bytes]) -> None:
    closing = getattr(body, "aclose", None)
    if closing is not None:
        with contextlib.suppress(Exception):
            await closing()


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
