"""Storing a tenant's bytes as a file: sealed as they stream into the store of a
datacenter the owner's policy allows, then recorded; a refusal anywhere leaves nothing.

Used by uploads (`server/routers/files.py`), inline batch files and batch outputs alike.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.errors import InvalidRequestError, StorageQuotaError
from souverain.core.ids import new_id
from souverain.core.policy import Policy
from souverain.core.principal import Principal
from souverain.db.jobs import FileRow
from souverain.db.tables import utcnow
from souverain.evidence import audit
from souverain.files import service as files
from souverain.storage.crypto import Sealer
from souverain.storage.stores import ObjectStore, store_from_uri


class FileContext(Protocol):
    """What storing a file needs of a server process (`gateway.state.AppState` has it)."""

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]: ...
    @property
    def master_key(self) -> bytes: ...
    @property
    def file_stores(self) -> dict[str, str]: ...
    @property
    def files_quota_bytes(self) -> int: ...


@dataclass(frozen=True)
class Owner:
    """Whose file it is, and under which policy it is placed."""

    org_id: str
    project_id: str | None
    key_id: str | None
    policy: Policy
    actor: audit.Actor


@dataclass(frozen=True)
class Checked:
    """What is known of a file once it is written (or a refusal, raised instead)."""

    filename: str
    purpose: str
    lines: int | None
    expires_at: datetime | None = None


Finish = Callable[[ObjectStore, str, bytes, str], Awaitable[Checked]]


async def store_plaintext(
    state: FileContext, *, owner: Owner, plaintext: AsyncIterator[bytes], finish: Finish
) -> FileRow:  # fmt: skip
    """Seal `plaintext` into the store of a datacenter the owner's policy allows, then
    record the file; a refusal anywhere (policy, quota, `finish`) leaves nothing stored."""
    async with state.sessions.begin() as session:
        placement = await files.place_file(session, policy=owner.policy, stores=state.file_stores)
        left = await files.storage_left(
            session, org_id=owner.org_id, default_limit=state.files_quota_bytes
        )
        if left <= 0:
            raise StorageQuotaError("Your organisation's storage quota is reached.", param="file")
        kek = await files.organisation_kek(
            session, master_key=state.master_key, org_id=owner.org_id, create=True
        )
    file_id = files.new_file_id()
    data_key, wrapped = files.new_data_key(kek, file_id)
    store, object_key = store_from_uri(placement.store_uri), new_id("obj")
    counted = _Counted(plaintext, limit=left)
    try:
        stored = await store.write(object_key, _sealed(counted, data_key, file_id))
        checked = await finish(store, object_key, data_key, file_id)
        row = FileRow(
            id=file_id, org_id=owner.org_id, project_id=owner.project_id,
            filename=checked.filename, purpose=checked.purpose, bytes=counted.size,
            stored_bytes=stored, sha256=counted.digest.hexdigest(), num_lines=checked.lines,
            sample_type=sample_type(checked.purpose),
            datacenter_id=placement.datacenter_id, store_uri=placement.store_uri,
            object_key=object_key, wrapped_key=wrapped, status="processed",
            created_by_key=owner.key_id, created_at=utcnow(), expires_at=checked.expires_at,
        )  # fmt: skip
        async with state.sessions.begin() as session:
            await files.reserve_storage(
                session, org_id=row.org_id, size=stored,
                default_limit=state.files_quota_bytes,
            )  # fmt: skip
            session.add(row)
            await audit.record(
                session, actor=owner.actor, action="file.upload", org_id=row.org_id,
                target_type="file", target_id=row.id,
                details={"purpose": row.purpose, "bytes": row.bytes, "sha256": row.sha256,
                         "datacenter": row.datacenter_id},
            )  # fmt: skip
    except BaseException:
        await store.delete(object_key)  # refused whole: nothing of it stays
        raise
    return row


def sample_type(purpose: str) -> str | None:
    return {"batch": "batch_request", "fine-tune": "instruct", "batch_output": "batch_result",
            "batch_error": "batch_error"}.get(purpose)  # fmt: skip


class _Counted:
    """Plaintext passing through: its size and sha256. Past `limit` bytes (what the
    organisation's quota leaves) the upload stops there, not once it is all written."""

    def __init__(self, plaintext: AsyncIterator[bytes], *, limit: int) -> None:
        self._plaintext = plaintext
        self._limit = limit
        self.size = 0
        self.digest = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for piece in self._plaintext:
            self.size += len(piece)
            if self.size > self._limit:
                raise StorageQuotaError(
                    "This file does not fit in what your organisation's storage quota "
                    "leaves; delete files to make room.",
                    param="file",
                )
            self.digest.update(piece)
            yield piece


async def _sealed(plaintext: _Counted, data_key: bytes, file_id: str) -> AsyncIterator[bytes]:
    sealer = Sealer(data_key, file_id)
    yield sealer.header
    async for piece in plaintext:
        for sealed in sealer.feed(piece):
            yield sealed
    yield sealer.finish()


def principal_org(principal: Principal) -> str:
    if principal.org_id is None:
        raise InvalidRequestError("Files belong to an organisation; use an organisation's key.")
    return principal.org_id
