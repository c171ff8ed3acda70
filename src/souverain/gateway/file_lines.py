"""Checking `batch` and `fine-tune` files line by line, as they stream in.

A bad file is refused whole (400), with the line number and the field, never half
accepted. Lines are bounded (10 MiB); batch lines are OpenAI's shape (`custom_id`,
`method`, `url`, `body`) or Mistral's (`custom_id`, `body`), at most 50,000 of them (as
OpenAI), their bodies checked against the endpoint's own request schema when the line
names it, custom ids unique; fine-tuning
lines are chats (`messages`, and optional `tools`) with an assistant message to learn
from, or ending with a user message (a reinforcement prompt), and at most 32 other fields
(what graders compare with, e.g. `answer`).
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from pydantic import BaseModel, TypeAdapter, ValidationError

from souverain.core.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    quoted,
    validation_message,
)
from souverain.gateway.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    Message,
    Tool,
)

MAX_LINE = 10 * 1024 * 1024
MAX_CUSTOM_ID = 512
ENDPOINT_SCHEMAS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}
_MESSAGES = TypeAdapter(list[Message])
_TOOLS = TypeAdapter(list[Tool])
CHECKED = frozenset({"batch", "fine-tune"})
MAX_EXTRA_FIELDS = 32
MAX_NESTING = 64  # arrays and objects within one line
MAX_BATCH_LINES = 50_000  # requests in one batch, as OpenAI


class LineChecker:
    """Feed the file's bytes in any pieces; `finish()` when they end."""

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose
        self.lines = 0
        self._buffer = bytearray()
        self._custom_ids: set[str] = set()

    def feed(self, data: bytes) -> None:
        self._buffer += data
        while (end := self._buffer.find(b"\n")) >= 0:
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            self._line(line)
        if len(self._buffer) > MAX_LINE:
            raise PayloadTooLargeError(
                f"line {self.lines + 1} is longer than {MAX_LINE} bytes", param="file"
            )

    def finish(self) -> int:
        if self._buffer.strip():
            self._line(bytes(self._buffer))
        self._buffer.clear()
        if self.purpose in CHECKED and self.lines == 0:
            raise InvalidRequestError("The file has no lines.", param="file")
        return self.lines

    def _line(self, raw: bytes) -> None:
        if not raw.strip():
            return  # blank lines (a trailing newline) are not lines
        self.lines += 1
        if self.purpose == "batch" and self.lines > MAX_BATCH_LINES:
            raise InvalidRequestError(
                f"A batch file holds at most {MAX_BATCH_LINES} lines.", param="file"
            )
        if len(raw) > MAX_LINE:
            raise PayloadTooLargeError(f"line {self.lines} is longer than {MAX_LINE} bytes")
        if self.purpose not in CHECKED:
            return
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            self._refuse("is not JSON")
        except RecursionError:
            self._refuse(f"nests arrays or objects deeper than {MAX_NESTING} levels")
        if nesting(value) > MAX_NESTING:
            self._refuse(f"nests arrays or objects deeper than {MAX_NESTING} levels")
        if not isinstance(value, dict):
            self._refuse("is not a JSON object")
        if self.purpose == "batch":
            self._batch(value)
        else:
            self._chat(value)

    def _refuse(self, what: str, field: str | None = None) -> NoReturn:
        where = f"line {self.lines}" + (f", field {field}" if field else "")
        raise InvalidRequestError(f"{where}: {what}", param="file")

    def _batch(self, line: dict[str, Any]) -> None:
        unknown = set(line) - {"custom_id", "method", "url", "body"}
        if unknown:
            self._refuse("unknown field", sorted(unknown)[0])
        custom_id = line.get("custom_id")
        if "url" in line or custom_id is not None:
            if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
                self._refuse(f"must be a string of 1 to {MAX_CUSTOM_ID} characters", "custom_id")
            if custom_id in self._custom_ids:
                self._refuse(f"custom_id {quoted(custom_id)} is used twice", "custom_id")
            self._custom_ids.add(custom_id)
        if "url" in line:
            if line.get("method", "POST") != "POST":
                self._refuse("must be POST", "method")
            if line["url"] not in ENDPOINT_SCHEMAS:
                self._refuse(f"must be one of {', '.join(ENDPOINT_SCHEMAS)}", "url")
        body = line.get("body")
        if not isinstance(body, dict):
            self._refuse("must be an object", "body")
        schema = ENDPOINT_SCHEMAS.get(line.get("url", ""))
        if schema is not None:
            self._validate(schema, body, "body")

    def _chat(self, line: dict[str, Any]) -> None:
        # Other fields are what reinforcement graders compare with (`answer`, ...).
        extra = set(line) - {"messages", "tools", "parallel_tool_calls"}
        if len(extra) > MAX_EXTRA_FIELDS:
            self._refuse(f"more than {MAX_EXTRA_FIELDS} fields besides messages")
        for name in extra:
            if not (0 < len(name) <= 64 and name.replace("_", "a").isalnum()):
                self._refuse("field names are letters, digits and '_', at most 64", name[:64])
        messages = line.get("messages")
        try:
            parsed = _MESSAGES.validate_python(messages)
            if "tools" in line:
                _TOOLS.validate_python(line["tools"])
        except ValidationError as error:
            message, param = validation_message(list(error.errors(include_url=False)))
            self._refuse(message, f"messages.{param}" if param else "messages")
        except InvalidRequestError as error:
            self._refuse(error.message, "tools")
        if not any(m.role == "assistant" for m in parsed) and (
            not parsed or parsed[-1].role != "user"
        ):
            self._refuse(
                "needs an assistant message to learn from, or (a reinforcement prompt) to "
                "end with a user message",
                "messages",
            )

    def _validate(self, schema: type[BaseModel], body: dict[str, Any], field: str) -> None:
        try:
            schema.model_validate(body)
        except ValidationError as error:
            message, param = validation_message(list(error.errors(include_url=False)))
            self._refuse(message, f"{field}.{param}" if param else field)
        except InvalidRequestError as error:
            self._refuse(error.message, field)


def nesting(value: Any) -> int:
    """How deeply arrays and objects nest in a parsed JSON value (without recursion)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((item, depth + 1) for item in node if isinstance(item, (dict, list)))
    return deepest
