"""/v1/files objects: one object in OpenAI's and Mistral's shapes at once."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel


class FileObject(BaseModel):
    """OpenAI's fields and Mistral's (`sample_type`, `source`, `num_lines`…) together:
    both SDKs read the same object."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    expires_at: int | None
    filename: str
    purpose: str
    status: str
    status_details: str | None = None
    num_lines: int | None
    sample_type: str
    source: Literal["upload"] = "upload"
    mimetype: str | None
    deleted: bool
    datacenter: str  # souverain: where it is stored


class FileList(BaseModel):
    """Both shapes: OpenAI's cursor page and Mistral's `total`."""

    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None
    total: int


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: Literal[True] = True
