"""Edge guards that run before routing, authentication or body parsing.

* Bodies larger than `max_request_bytes` are refused with 413, whether announced by
  Content-Length or streamed, so an unauthenticated client cannot make the server read and
  parse an arbitrarily large body.
* NUL and other control characters in the path or query string are refused with 400:
  no identifier contains them, and some databases reject them with an error.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote_to_bytes

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from souverain.core.errors import PayloadTooLargeError, error_body
from souverain.core.schemas.common import CONTROL


class EdgeGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        large_bodies: dict[tuple[str, str], int] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.large_bodies = large_bodies or {}  # (method, path) -> its own limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw = scope.get("raw_path") or scope["path"].encode()
        target = unquote_to_bytes(raw) + b"?" + unquote_to_bytes(scope.get("query_string", b""))
        if CONTROL.search(target.decode("latin-1")):
            await _refuse(send, 400, "The URL holds control characters.", "invalid_request_error")
            return
        limit = self.large_bodies.get((scope.get("method", ""), scope["path"]), self.max_body_bytes)
        declared = dict(scope.get("headers") or {}).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(send, 413, f"Request body exceeds {limit} bytes.", "payload_too_large")
            return
        await self.app(scope, self._counting(receive, limit), send)

    def _counting(self, receive: Receive, limit: int) -> Receive:
        seen = 0

        async def wrapped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise PayloadTooLargeError(f"Request body exceeds {limit} bytes.")
            return message

        return wrapped


async def _refuse(send: Send, status: int, message: str, code: str) -> None:
    body = json.dumps(error_body(status, message, code)).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
