"""The app's exception handlers: every error becomes an HTTP response in OpenAI's shape,

    {"error": {"message": "...", "type": "...", "code": "...", "param": null}}

through the one mapping in `core/errors.py`, for /v1 and /api alike, so every client
parses one shape. Validation errors are 400 on /v1 (as OpenAI answers) and 422 on /api.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from souverain.core.errors import (
    ErrorCode,
    RateLimitedError,
    SouverainError,
    answer_of,
    error_body,
    validation_message,
)
from souverain.core.schemas.common import ErrorResponse

log = logging.getLogger(__name__)

DOCUMENTED: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "Invalid request",
        401: "Missing, malformed, wrong, revoked or expired API key",
        403: "The key may not do this",
        404: "Not found, or not yours",
        409: "Conflict",
        410: "Gone: the file's key material was erased",
        413: "Body too large",
        415: "Body is not JSON",
        422: "Validation error",
        429: "Rate limit or budget reached (see Retry-After)",
        451: "No datacenter allowed by your sovereignty policy serves this",
        502: "The model engine failed",
        503: "Nothing ready to serve this yet, or a dependency is unavailable",
        504: "The model engine did not answer in time",
    }.items()
}


def error_response(error: SouverainError) -> JSONResponse:
    status, body = answer_of(error)
    headers = {}
    if isinstance(error, RateLimitedError):
        headers.update(error.headers)
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status, headers=headers)


MUTATIONS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def _note_denied(request: Request, error: SouverainError) -> None:
    """A refused change (escalation, widening a policy…) is audited, counted per window."""
    principal = getattr(request.state, "principal", None)
    trail = getattr(getattr(request.app.state, "souverain", None), "audit_trail", None)
    if principal is None or trail is None:
        return
    route = request.scope.get("route")
    path = getattr(route, "path", request.url.path)
    trail.note(
        "change.denied",
        org_id=principal.org_id,
        subject=f"key:{principal.key_id}",
        reason=f"{request.method} {path}: {error.message}",
    )


def install(app: FastAPI) -> None:

    @app.exception_handler(SouverainError)
    async def _domain(request: Request, error: SouverainError) -> JSONResponse:
        if error.code == ErrorCode.PERMISSION_DENIED and request.method in MUTATIONS:
            _note_denied(request, error)
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        status = 400 if request.url.path.startswith("/v1") else 422
        message, param = validation_message(list(error.errors()))
        return JSONResponse(error_body(status, message, "invalid_request_error", param), status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(
            error_body(error.status_code, str(error.detail), code),
            error.status_code,
            headers=error.headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        if isinstance(error, PoolTimeoutError):  # every pooled connection in use for its wait
            log.warning("the database's connections were all in use: %s", error)
            message = "The database is busy right now; retry shortly."
            body = error_body(503, message, ErrorCode.UNAVAILABLE)
            return JSONResponse(body, 503, headers={"Retry-After": "1"})
        if is_database_away(error):
            log.warning("the database is unreachable: %s", type(error).__name__)
            message = "The database is unreachable right now; retry shortly."
            body = error_body(503, message, ErrorCode.UNAVAILABLE)
            return JSONResponse(body, 503, headers={"Retry-After": "1"})
        log.error("unhandled error: %s", type(error).__name__, exc_info=error)
        return JSONResponse(error_body(500, "internal error", "internal_error"), 500)


def is_database_away(error: BaseException) -> bool:
    """A lost or refused database connection (a restart, a failover), not a bug."""
    if isinstance(error, OperationalError | InterfaceError):
        return True
    if isinstance(error, DBAPIError):
        state = str(getattr(error.orig, "sqlstate", None) or "")
        # SQLSTATE 08: connection exception; 57: shutdown, starting up, cannot connect now
        return error.connection_invalidated or state[:2] in {"08", "57"}
    return isinstance(error, ConnectionError)
