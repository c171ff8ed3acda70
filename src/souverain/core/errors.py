"""The error tree, and its one mapping to HTTP. Services raise these; `server/errors.py`
answers them (and batch lines write them into their error files) in one shape:

    {"error": {"message": "...", "type": "...", "code": "...", "param": null}}

    SouverainError(code, message, param)
    ├── InvalidRequestError        400  a client mistake: bad value, out of bounds
    │   ├── PayloadTooLargeError    413
    │   │   └── StorageQuotaError   413  the organisation's stored bytes would pass its quota
    │   ├── UnsupportedMediaTypeError 415  a body that is not JSON
    │   └── UnprocessableError     422  well-formed, but a value the platform cannot take

    ├── AuthenticationError        401  missing, malformed, wrong, revoked or expired key
    ├── PermissionDeniedError      403  authenticated, but the key may not do this
    │   └── ZeroRetentionError     403  content would be stored under zero data retention
    ├── NotFoundError              404  absent, or belongs to someone else (never 403 across tenants)
    ├── ConflictError              409  a name already taken, a state that forbids the change
    ├── GoneError                  410  a file whose key material was erased
    ├── RateLimitedError           429  carries retry_after seconds
    │   └── QuotaExceededError     429  a monthly budget is spent

    ├── PolicyRefusedError         451  no compliant place to process this request
    ├── UpstreamError              502  the engine answered badly or broke off
    │   └── UpstreamTimeoutError   504  the engine did not answer in time
    └── ServiceUnavailableError    503  nothing ready to serve yet, or the database is away

Messages are written for the API user and never carry secrets. A value the caller sent
is quoted through `quoted` (at most 64 characters of it), and no message or `param` is ever
longer than a few hundred characters, whatever the input: errors are kept in batch objects
and error files, and a tenant must not size them.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request_error"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNPROCESSABLE = "unprocessable_entity"

    UNAUTHENTICATED = "invalid_api_key"
    PERMISSION_DENIED = "permission_denied"
    ZERO_RETENTION = "zero_data_retention"
    NOT_FOUND = "not_found"
    MODEL_NOT_FOUND = "model_not_found"
    CONFLICT = "conflict"
    GONE = "gone"
    RATE_LIMITED = "rate_limit_exceeded"
    QUOTA_EXCEEDED = "insufficient_quota"

    POLICY_REFUSED = "unavailable_for_legal_reasons"
    UPSTREAM_ERROR = "upstream_error"
    UPSTREAM_TIMEOUT = "upstream_timeout"
    UNAVAILABLE = "service_unavailable"


class SouverainError(Exception):
    """Base of every error a service may raise; `code` decides the HTTP status."""

    code: ErrorCode = ErrorCode.INVALID_REQUEST

    def __init__(self, message: str, *, param: str | None = None) -> None:
        message = _bounded(message, MAX_MESSAGE)
        super().__init__(message)
        self.message = message
        self.param = None if param is None else _bounded(param, MAX_PARAM)


MAX_MESSAGE = 512
MAX_PARAM = 128
QUOTED = 64


def quoted(value: object, limit: int = QUOTED) -> str:
    """A value the caller sent, quoted in a message: its first `limit` characters."""
    text = str(value)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"… ({len(text)} characters)"


def _bounded(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class InvalidRequestError(SouverainError):
    code = ErrorCode.INVALID_REQUEST


class PayloadTooLargeError(InvalidRequestError):
    code = ErrorCode.PAYLOAD_TOO_LARGE


class StorageQuotaError(PayloadTooLargeError):
    pass


class UnsupportedMediaTypeError(InvalidRequestError):
    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class UnprocessableError(InvalidRequestError):
    code = ErrorCode.UNPROCESSABLE


class AuthenticationError(SouverainError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDeniedError(SouverainError):
    code = ErrorCode.PERMISSION_DENIED


class ZeroRetentionError(PermissionDeniedError):
    """The caller's organisation or project keeps no content: this would store some."""

    code = ErrorCode.ZERO_RETENTION


class NotFoundError(SouverainError):
    code = ErrorCode.NOT_FOUND


class ModelNotFoundError(NotFoundError):
    code = ErrorCode.MODEL_NOT_FOUND


class ConflictError(SouverainError):
    code = ErrorCode.CONFLICT


class GoneError(SouverainError):
    code = ErrorCode.GONE


class RateLimitedError(SouverainError):
    code = ErrorCode.RATE_LIMITED

    def __init__(
        self, message: str, *, retry_after_s: float, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.headers = headers or {}


class QuotaExceededError(RateLimitedError):
    """A monthly budget has no room left for this request."""

    code = ErrorCode.QUOTA_EXCEEDED


class PolicyRefusedError(SouverainError):
    code = ErrorCode.POLICY_REFUSED


class UpstreamError(SouverainError):
    code = ErrorCode.UPSTREAM_ERROR


class UpstreamTimeoutError(UpstreamError):
    code = ErrorCode.UPSTREAM_TIMEOUT


class ServiceUnavailableError(SouverainError):
    code = ErrorCode.UNAVAILABLE


# -- the one mapping to HTTP ------------------------------------------------------------

STATUS: dict[ErrorCode, int] = {
    ErrorCode.INVALID_REQUEST: 400,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.UNPROCESSABLE: 422,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.ZERO_RETENTION: 403,
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


def error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": TYPES.get(status, "server_error"),
            "code": code,
            "param": param,
        }
    }


def answer_of(error: SouverainError) -> tuple[int, dict[str, Any]]:
    """The HTTP status and body that answer `error`."""
    status = STATUS[error.code]
    return status, error_body(status, error.message, error.code, error.param)


def validation_message(errors: Sequence[Any]) -> tuple[str, str | None]:
    """The first of pydantic's validation errors as one sentence, and the parameter."""
    if not errors:
        return "invalid request", None
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part not in ("body",)]
    param = _bounded(".".join(location), MAX_PARAM) or None  # keys the caller named
    message = str(first.get("msg", "invalid value"))
    extra = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    sentence = f"{param}: {message}{extra}" if param else message + extra
    return _bounded(sentence, MAX_MESSAGE), param
