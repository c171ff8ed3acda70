"""/v1/files: tenants' files, in OpenAI's and Mistral's shapes on the same routes.

An upload is parsed as it streams (multipart, incrementally), checked line by line,
hashed, encrypted in 64 KiB segments and written to the store of a datacenter the
caller's policy allows: it never rests in clear, in memory or on disk. Downloads are
streamed, decrypted where they are served.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response, StreamingResponse
from python_multipart.multipart import MultipartParser, parse_options_header

from souverain.core.access import check_scope
from souverain.core.errors import (
    InvalidRequestError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from souverain.core.policy import check_may_keep
from souverain.core.roles import Scope
from souverain.core.schemas.files import FileDeleted, FileList, FileObject
from souverain.db.jobs import FileRow
from souverain.db.tables import utcnow
from souverain.files import service as files
from souverain.files.uploads import Checked, store_plaintext
from souverain.gateway.file_lines import LineChecker
from souverain.gateway.state import AppState
from souverain.server.deps import PrincipalDep, SessionDep, StateDep, get_principal, storing_owner
from souverain.server.pagination import FILES, Cursor, cursor, list_page
from souverain.storage.crypto import open_sealed
from souverain.storage.stores import ObjectStore

router = APIRouter(prefix="/v1/files", tags=["files"])

UPLOAD_PURPOSES = frozenset({"batch", "fine-tune", "user_data", "evals"})
MAX_FIELDS = 16  # form fields besides the file: purpose, expires_after[…], a few more
MAX_FIELD_BYTES = 4096
MIN_EXPIRY_S, MAX_EXPIRY_S = 3600, 30 * 86400


def file_object(row: FileRow) -> FileObject:
    """Both shapes at once: OpenAI's fields and Mistral's (`sample_type`, `source`…)."""
    return FileObject(
        id=row.id,
        bytes=row.bytes,
        created_at=int(row.created_at.timestamp()),
        expires_at=int(row.expires_at.timestamp()) if row.expires_at else None,
        filename=row.filename,
        purpose=row.purpose,
        status=row.status,
        num_lines=row.num_lines,
        sample_type=row.sample_type or "pretrain",
        mimetype="application/jsonl" if row.purpose in {"batch", "fine-tune"} else None,
        deleted=row.status == "deleted",
        datacenter=row.datacenter_id,
    )


class Upload:
    """One multipart upload being parsed, checked, hashed and sealed as it streams."""

    def __init__(self, boundary: bytes, limit: int) -> None:
        self.fields: dict[str, str] = {}
        self.filename = ""
        self.size = 0
        self.limit = limit
        self.digest = hashlib.sha256()
        self.checker: LineChecker | None = None
        self.checked_while_streaming = False
        self._name = ""
        self._is_file = False
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._value = bytearray()
        self._data: list[bytes] = []
        self._seen_file = False
        self._parts = 0
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._field,
                "on_header_value": self._header,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_done,
                "on_part_data": self._part_data,
                "on_part_end": self._end,
            },
        )

    def _begin(self) -> None:
        self._headers, self._value, self._is_file, self._name = {}, bytearray(), False, ""
        self._parts += 1
        if self._parts > MAX_FIELDS + 1:
            raise InvalidRequestError(
                f"An upload has one file and at most {MAX_FIELDS} other form fields."
            )

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_done(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._name == "file":
            if self._seen_file:
                raise InvalidRequestError("Send one file per upload.", param="file")
            self._seen_file = self._is_file = True
            self.filename = _filename(options.get(b"filename", b"upload"))
            purpose = self.fields.get("purpose")
            if purpose is not None:
                self.checker, self.checked_while_streaming = LineChecker(purpose), True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._is_file:
            self._data.append(data[start:end])
        else:
            self._value += data[start:end]
            if len(self._value) > MAX_FIELD_BYTES:
                raise InvalidRequestError(f"The form field {self._name!r} is too long.")

    def _end(self) -> None:
        if not self._is_file and self._name:
            self.fields[self._name] = self._value.decode("utf-8", "replace")

    def take(self) -> list[bytes]:
        """The file bytes parsed since the last call, checked and counted."""
        pieces, self._data = self._data, []
        for piece in pieces:
            self.size += len(piece)
            if self.size > self.limit:
                raise PayloadTooLargeError(
                    f"Files may be at most {self.limit} bytes.", param="file"
                )
            self.digest.update(piece)
            if self.checker is not None:
                self.checker.feed(piece)
        return pieces


def _filename(raw: bytes) -> str:
    """A file's name as uploaded: UTF-8, at most 255 characters, no control characters
    (they would reach headers, logs and terminals of whoever lists the files)."""
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequestError("The file's name is not UTF-8.", param="file") from None
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        raise InvalidRequestError(
            "The file's name has control characters; rename the file.", param="file"
        )
    if not name.strip() or len(name) > 255:
        raise InvalidRequestError("The file's name must have 1 to 255 characters.", param="file")
    return name


def _boundary(request: Request) -> bytes:
    kind, options = parse_options_header(request.headers.get("content-type", ""))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise UnsupportedMediaTypeError("Upload files as multipart/form-data.")
    return options[b"boundary"]


@router.post("", summary="Upload a file", status_code=200)
async def upload_file(request: Request) -> FileObject:
    """Upload a file (multipart: `file`, `purpose` batch | fine-tune | user_data | evals,
    optional `expires_after[anchor]=created_at` and `expires_after[seconds]`). It is stored
    encrypted, in a datacenter your sovereignty policy allows (451 if none has a store).
    `batch` and `fine-tune` files are checked line by line; a bad one is refused whole."""
    state: AppState = request.app.state.souverain
    principal = await get_principal(request, state)
    check_scope(principal, Scope.INFERENCE)
    owner = await storing_owner(state, principal)
    check_may_keep(owner.policy, "a file upload", param="file")
    upload = Upload(_boundary(request), state.settings.files_max_bytes)

    async def finish(store: ObjectStore, key: str, data_key: bytes, file_id: str) -> Checked:
        purpose = _purpose(upload)
        lines = await _check_lines(upload, purpose, store, key, data_key, file_id)
        return Checked(upload.filename or "upload", purpose, lines, _expiry(upload.fields))

    row = await store_plaintext(
        state, owner=owner, plaintext=_parts(request, upload), finish=finish
    )
    return file_object(row)


async def _parts(request: Request, upload: Upload) -> AsyncIterator[bytes]:
    """The file part's bytes, as the multipart body streams in."""
    async for chunk in request.stream():
        upload.parser.write(chunk)
        for piece in upload.take():
            yield piece
    upload.parser.finalize()
    for piece in upload.take():
        yield piece
    if not upload.filename and not upload.size:
        raise InvalidRequestError("The upload has no `file` part.", param="file")


def _purpose(upload: Upload) -> str:
    purpose = upload.fields.get("purpose", "")
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidRequestError(
            f"purpose must be one of {', '.join(sorted(UPLOAD_PURPOSES))}", param="purpose"
        )
    return purpose


async def _check_lines(
    upload: Upload, purpose: str, store: ObjectStore, object_key: str, data_key: bytes,
    file_id: str,
) -> int:  # fmt: skip
    """Lines checked while streaming when `purpose` came first; else read back once."""
    if upload.checker is not None and upload.checked_while_streaming:
        return upload.checker.finish()
    checker = LineChecker(purpose)
    async for piece in open_sealed(store.read(object_key), data_key, file_id):
        checker.feed(piece)
    return checker.finish()


def _expiry(fields: dict[str, str]) -> Any:
    seconds = fields.get("expires_after[seconds]")
    if seconds is None:
        return None
    if fields.get("expires_after[anchor]", "created_at") != "created_at":
        raise InvalidRequestError("expires_after.anchor must be created_at", param="expires_after")
    if not seconds.isdigit() or not MIN_EXPIRY_S <= int(seconds) <= MAX_EXPIRY_S:
        raise InvalidRequestError(
            f"expires_after.seconds must be from {MIN_EXPIRY_S} to {MAX_EXPIRY_S}",
            param="expires_after",
        )
    return utcnow() + timedelta(seconds=int(seconds))


@router.get("", summary="List files")
async def list_files(
    principal: PrincipalDep,
    session: SessionDep,
    page: Annotated[Cursor, cursor(FILES)],
    purpose: str | None = Query(default=None, max_length=32),
) -> FileList:
    """Your files (all of your organisation's, for its managers; your project's, for
    project keys), newest first."""
    found = await files.list_files(
        session, principal=principal, purpose=purpose, limit=page.limit, after=page.after
    )
    listed = list_page([file_object(row) for row in found.rows], has_more=found.has_more)
    return FileList(**dict(listed), total=len(listed.data))


@router.get("/{file_id}", summary="Retrieve a file")
async def retrieve_file(file_id: str, principal: PrincipalDep, session: SessionDep) -> FileObject:
    return file_object(await files.get_file(session, principal=principal, file_id=file_id))


@router.get("/{file_id}/content", summary="Download a file's content", response_model=None)
async def file_content(
    file_id: str, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> Response:
    """The file's bytes, decrypted as they are streamed."""
    row = await files.get_file(session, principal=principal, file_id=file_id)
    plaintext = await files.open_file(session, row=row, master_key=state.master_key)
    first = await _first(plaintext)  # a file that cannot be read fails before the headers
    return StreamingResponse(
        _chain(first, plaintext),
        media_type="application/octet-stream",
        headers={"Content-Disposition": _disposition(row.filename)},
    )


async def _first(plaintext: AsyncIterator[bytes]) -> bytes:
    return await anext(plaintext, b"")


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for piece in rest:
        yield piece


def _disposition(name: str) -> str:
    """`attachment` with an ASCII fallback name and the exact one in RFC 6266/5987 form, so
    any UTF-8 name survives HTTP's Latin-1 headers."""
    fallback = "".join(
        ch if ch.isascii() and ch.isprintable() and ch not in '"\\;' else "_" for ch in name
    )
    return f"attachment; filename=\"{fallback or 'file'}\"; filename*=UTF-8''{quote(name, safe='')}"


@router.delete("/{file_id}", summary="Delete a file")
async def delete_file(file_id: str, principal: PrincipalDep, session: SessionDep) -> FileDeleted:
    row = await files.delete_file(session, principal=principal, file_id=file_id)
    return FileDeleted(id=row.id)
