"""The error tree. Services raise these; `api/` and `gateway/` map them to HTTP once.

    SouverainError(code, message, param)
    ├── InvalidRequestError        400  a client mistake: bad value, out of bounds
    │   ├── PayloadTooLargeError    413
    │   │   └── StorageQuotaError   413  the organisation's stored bytes would pass its quota
    │   ├── UnsupportedMediaTypeError 415  a body that is not JSON
    │   └── UnprocessableError     422  well-formed, but a value the platform cannot take

    ├── AuthenticationError        401  missing, malformed, wrong, revoked or expired key
    ├── PermissionDeniedError      403  authenticated, but the key may not do this
    ├── NotFoundError              404  absent, or belongs to someone else (never 403 across tenants)
    ├── ConflictError              409  a name already taken, a state that forbids the change
    ├── GoneError                  410  a file whose key material was erased
    ├── RateLimitedError           429  carries retry_after seconds
    │   └── QuotaExceededError     429  a monthly budget is spent

    ├── PolicyRefusedError         451  no compliant place to process this request
    ├── UpstreamError              502  the engine answered badly or broke off
    │   └── UpstreamTimeoutError   504  the engine did not answer in time
    └── ServiceUnavailableError    503  nothing ready to serve yet, or the database is away

Messages are written for the API user and never carry secrets.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_REQUEST = "invalid_request_error"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNPROCESSABLE = "unprocessable_entity"

    UNAUTHENTICATED = "invalid_api_key"
    PERMISSION_DENIED = "permission_denied"
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
        super().__init__(message)
        self.message = message
        self.param = param


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
