from __future__ import annotations

import re
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# C0 controls except tab, line feed and carriage return; DEL; C1 controls. They have no
# place in names and settings, break terminals and logs, and PostgreSQL refuses NUL.
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def find_control(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string holding a control character, if any."""
    if isinstance(value, str):
        return path if CONTROL.search(value) else None
    if isinstance(value, BaseModel):
        value = value.__dict__
    if isinstance(value, dict):
        for key, item in value.items():
            found = find_control(key, path) or find_control(
                item, f"{path}.{key}" if path else str(key)
            )
            if found is not None:
                return found
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = find_control(item, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None


class StrictRequest(BaseModel):
    """Unknown fields, non-finite numbers and control characters are refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _no_control_characters(self) -> StrictRequest:
        found = find_control(self)
        if found is not None:
            raise ValueError(f"{found}: control characters are not allowed")
        return self


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# OpenAI's bounds on `metadata`: 16 pairs, keys of 64 characters, values of 512.
Metadata = Annotated[
    dict[
        Annotated[str, StringConstraints(min_length=1, max_length=64)],
        Annotated[str, StringConstraints(max_length=512)],
    ]
    | None,
    Field(default=None, max_length=16),
]


Item = TypeVar("Item")


class ListPage(BaseModel, Generic[Item]):
    """A page of a list, newest first, in OpenAI's shape: `after=last_id` asks for the
    next page while `has_more`."""

    object: Literal["list"] = "list"
    data: list[Item]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class MistralList(BaseModel, Generic[Item]):
    """A list in Mistral's shape."""

    object: Literal["list"] = "list"
    data: list[Item]
    total: int
