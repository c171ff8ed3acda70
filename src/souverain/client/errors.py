"""What a call to souverain's API can raise, and the streamed download every client shares."""

from __future__ import annotations

from typing import Any

import httpx


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def error_of(response: httpx.Response) -> ApiError:
    """The API's error shape as an exception (or the raw text when it is not that shape)."""
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, str(error.get("code")), str(error.get("message")))
    except (ValueError, KeyError, TypeError):
        return ApiError(response.status_code, "http_error", response.text[:300])


def stream_into(http: httpx.Client, path: str, into: Any) -> int:
    """A download streamed into `into` (a binary file); the bytes written."""
    written = 0
    with http.stream("GET", path, timeout=None) as answer:
        if answer.status_code >= 400:
            answer.read()
            raise error_of(answer)
        for block in answer.iter_bytes():
            into.write(block)
            written += len(block)
    return written
