"""A batch's lines as the runner reads and answers them, and the key they run on.

Lines are read from the batch's encrypted input files in order, numbered across them;
each answer is OpenAI's output line. The key that created the batch is checked again
before each line (at most once per key-cache period, as live requests see revocations):
a batch stops as soon as its key can no longer act.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from souverain.core.errors import (
    InvalidRequestError,
    SouverainError,
    UpstreamError,
    answer_of,
    quoted,
    validation_message,
)
from souverain.core.principal import Principal
from souverain.db.jobs import BatchRow, FileRow
from souverain.files import service as files
from souverain.gateway.state import AppState
from souverain.jobs.batches import service as batches
from souverain.tenancy.auth import principal_for_key


@dataclass(frozen=True)
class Line:
    number: int  # from 1, across the batch's files
    custom_id: str
    body: dict[str, Any]


async def read_lines(
    state: AppState, batch: BatchRow, errors: list[dict[str, Any]]
) -> AsyncIterator[Line]:
    """The batch's input lines in order, numbered across its files; what cannot be a line
    goes to `errors` with its number."""
    number = 0
    for file_id in batch.input_file_ids:
        async with state.sessions() as session:
            row = await session.get(FileRow, file_id)
            if row is None or row.status != "processed":
                errors.append({"code": "file_gone", "message": f"file {file_id} is gone"})
                return
            plaintext = await files.open_file(session, row=row, master_key=state.master_key)
        async for raw in split_lines(plaintext):
            number += 1
            if number > batches.MAX_LINES:  # files stored before the limit
                errors.append({"code": "too_many_lines", "line": number,
                               "message": f"a batch holds at most {batches.MAX_LINES} lines"})  # fmt: skip
                return
            line = _line(batch, number, raw, errors)
            if line is not None:
                yield line


def _line(batch: BatchRow, number: int, raw: bytes, errors: list[dict[str, Any]]) -> Line | None:
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        errors.append({"code": "invalid_json", "message": "not JSON", "line": number})
        return None
    if not isinstance(value, dict) or not isinstance(value.get("body"), dict):
        errors.append({"code": "invalid_request", "message": "no body object", "line": number})
        return None
    url = value.get("url")
    if url is not None and url != batch.endpoint:
        errors.append({"code": "invalid_request", "line": number,
                       "message": f"the line is for {quoted(url)}, the batch for {batch.endpoint}"})  # fmt: skip
        return None
    return Line(number, str(value.get("custom_id") or number), value["body"])


async def split_lines(plaintext: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for piece in plaintext:
        buffer += piece
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield line
    if buffer.strip():
        yield bytes(buffer)


def error_answer(error: Exception) -> tuple[int, Any]:
    """The status and body a refused or failed line is answered with: the API's own."""
    if isinstance(error, ValidationError):
        message, param = validation_message(list(error.errors(include_url=False)))
        error = InvalidRequestError(message, param=param)
    if not isinstance(error, SouverainError):
        error = UpstreamError(str(error)[:300])
    return answer_of(error)


def result_line(line: Line, record_id: str, status: int, body: Any) -> bytes:
    """OpenAI's output line (Mistral's has the same fields)."""
    answer: dict[str, Any] = {
        "id": f"batch_req_{record_id.removeprefix('req_')}",
        "custom_id": line.custom_id,
        "response": {"status_code": status, "request_id": record_id, "body": body},
        "error": None,
    }
    if status != 200 and isinstance(body, dict) and "error" in body:
        answer["error"] = {"code": body["error"].get("code"), "message": body["error"]["message"]}
    return json.dumps(answer, ensure_ascii=False).encode()


class KeyWatch:
    """The batch's key as it is now: read again when the last reading is older than the
    key cache's period, so a revoked key stops its batch as fast as its live requests."""

    def __init__(self, state: AppState, key_id: str, principal: Principal) -> None:
        self._state = state
        self._key_id = key_id
        self.principal: Principal | None = principal
        self.reason = ""
        self._read_at = time.monotonic()

    async def current(self) -> Principal | None:
        """The key's principal, or None (with `reason`) once it can no longer act."""
        if self.principal is None:
            return None
        if time.monotonic() - self._read_at >= self._state.settings.key_cache_ttl_s:
            async with self._state.sessions() as session:
                try:
                    self.principal = await principal_for_key(session, key_id=self._key_id)
                except SouverainError as error:
                    self.principal, self.reason = None, revoked_reason(error)
            self._read_at = time.monotonic()
        return self.principal


def revoked_reason(error: SouverainError) -> str:
    return f"the key that created this batch can no longer act: {error.message}"
