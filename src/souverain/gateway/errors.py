"""The one place where errors become HTTP responses, in OpenAI's shape:

    {"error": {"message": "...", "type": "...", "code": "...", "param": null}}

Used for /v1 and /api alike, so every client parses one shape.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException

from souverain.core.errors import ErrorCode, RateLimitedError, SouverainError
from souverain.core.schemas.common import ErrorResponse

log = logging.getLogger(__name__)

STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.UNPROCESSABLE: 422,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.MODEL_NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.GONE: 410,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.QUOTA_EXCEEDED: 429,
    ErrorCode.POLICY_REFUSED: 451,
    ErrorCode.UPSTREAM_ERROR: 502,
    ErrorCode.UPSTREAM_TIMEOUT: 504,
    ErrorCode.UNAVAILABLE: 503,
}

TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    410: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    451: "policy_error",
    502: "upstream_error",
    503: "service_unavailable",
    504: "upstream_error",
}


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


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": TYPES.get(status, "server_error"),
            "code": code,
            "param": param,
        }
    }


def error_response(error: SouverainError) -> JSONResponse:
    status = STATUS[error.code]
    headers = {}
    if isinstance(error, RateLimitedError):
        headers.update(error.headers)
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_s)))

    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(
        error_body(status, error.message, error.code, error.param), status, headers=headers
    )


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    if not errors:
        return "invalid request", None
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    param = ".".join(location) or None
    message = str(first.get("msg", "invalid value"))
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{param}: {message}{extra}" if param else message + extra), param


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
