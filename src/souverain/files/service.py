"""Tenants' files: where they may be stored, their keys, quota, reading and deletion.

A file is stored only in a datacenter its owner's effective sovereignty policy allows
(among those with a file store), else 451 naming why each was refused, exactly like
routing. Its object is encrypted with a data key of its own, wrapped by the
organisation's key (`storage.crypto`). Bytes stored count against the organisation's
storage quota, reserved with one conditional UPDATE so concurrent uploads cannot exceed it.
A file is seen by its uploader and the organisation's managers (`core.access`, DATA);
anyone else's file ids answer 404.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.access import Holding, check_org, check_scope, reach
from souverain.core.errors import (
    GoneError,
    NotFoundError,
    PolicyRefusedError,
    StorageQuotaError,
)
from souverain.core.ids import new_id
from souverain.core.policy import Policy, exclusion
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.db.jobs import FileRow, OrgKeyRow, OrgStorageRow
from souverain.db.pages import Page, page_of
from souverain.db.tables import DatacenterRow, utcnow
from souverain.db.visibility import visible
from souverain.evidence import audit
from souverain.fleet.datacenters import site_of
from souverain.storage.crypto import (
    DecryptionError,
    new_salt,
    open_sealed,
    organisation_key,
    unwrap,
    wrap,
)
from souverain.storage.stores import ObjectStore, StoreError, store_from_uri

PURPOSES = frozenset({"batch", "fine-tune", "user_data", "evals", "batch_output", "batch_error"})


@dataclass(frozen=True)
class Placement:
    datacenter_id: str
    store_uri: str


async def place_file(
    session: AsyncSession, *, policy: Policy, stores: Mapping[str, str]
) -> Placement:
    """The datacenter a new file goes to: allowed by `policy`, with a store, greenest first.
    Refused, the 451 names each datacenter's reason, a missing store included."""
    refused: dict[str, str] = {}
    candidates = []
    for dc in (await session.execute(select(DatacenterRow))).scalars():
        reason = exclusion(policy, site_of(dc))
        if reason is None and dc.id not in stores:
            reason = "no file store (the operator sets one in SOUVERAIN_FILE_STORES)"
        if reason is None:
            candidates.append((dc.carbon_intensity, dc.id))
        else:
            refused[dc.id] = reason
    if not candidates:
        why = "; ".join(f"{dc}: {reason}" for dc, reason in sorted(refused.items()))
        raise PolicyRefusedError(
            "No datacenter your sovereignty policy allows has a file store"
            + (f" ({why})" if why else "")
            + ". Nothing was stored.",
            param="file",
        )
    _, datacenter_id = min(candidates)
    return Placement(datacenter_id, stores[datacenter_id])


@dataclass(frozen=True)
class StoreCoverage:
    """Which declared datacenters keep files, which do not, and stores of no datacenter."""

    stored: list[str]
    missing: list[str]
    undeclared: list[str]


async def store_coverage(session: AsyncSession, *, stores: Mapping[str, str]) -> StoreCoverage:
    declared = set((await session.execute(select(DatacenterRow.id))).scalars())
    return StoreCoverage(
        stored=sorted(declared & stores.keys()),
        missing=sorted(declared - stores.keys()),
        undeclared=sorted(stores.keys() - declared),
    )


async def organisation_kek(
    session: AsyncSession, *, master_key: bytes, org_id: str, create: bool
) -> bytes:
    """The organisation's file key, derived from its salt (made on first use)."""
    row = await session.get(OrgKeyRow, org_id)
    if row is None:
        if not create:
            raise GoneError(
                "This organisation's key material was erased: its files can no longer be read."
            )
        row = OrgKeyRow(org_id=org_id, salt=new_salt().hex(), created_at=utcnow())
        session.add(row)
        await session.flush()
    return organisation_key(master_key, bytes.fromhex(row.salt), org_id)


def new_data_key(kek: bytes, file_id: str) -> tuple[bytes, str]:
    """A random data key for a file, and its wrapped form (hex) to keep in the row."""
    key = os.urandom(32)
    return key, wrap(kek, key, file_id).hex()


async def reserve_storage(
    session: AsyncSession, *, org_id: str, size: int, default_limit: int
) -> None:
    """Count `size` more bytes against the organisation's quota, or refuse (413)."""
    row = await session.get(OrgStorageRow, org_id)
    if row is None:
        session.add(OrgStorageRow(org_id=org_id, used_bytes=0, limit_bytes=None))
        await session.flush()
    limit = row.limit_bytes if row is not None and row.limit_bytes is not None else default_limit
    taken = await session.execute(
        update(OrgStorageRow)
        .where(OrgStorageRow.org_id == org_id, OrgStorageRow.used_bytes + size <= limit)
        .values(used_bytes=OrgStorageRow.used_bytes + size)
    )
    if not taken.rowcount:  # type: ignore[attr-defined]
        raise StorageQuotaError(
            "Your organisation's storage quota is reached; delete files to make room.",
            param="file",
        )


async def release_storage(session: AsyncSession, *, org_id: str, size: int) -> None:
    await session.execute(
        update(OrgStorageRow)
        .where(OrgStorageRow.org_id == org_id)
        .values(used_bytes=OrgStorageRow.used_bytes - size)
    )


async def storage_used(session: AsyncSession, *, org_id: str) -> int:
    row = await session.get(OrgStorageRow, org_id)
    return row.used_bytes if row is not None else 0


async def storage_left(session: AsyncSession, *, org_id: str, default_limit: int) -> int:
    """Bytes the organisation may still store: its limit (the operator's, else the
    default) less what it uses."""
    row = await session.get(OrgStorageRow, org_id)
    if row is None:
        return default_limit
    limit = row.limit_bytes if row.limit_bytes is not None else default_limit
    return max(0, limit - row.used_bytes)


async def set_storage_limit(
    session: AsyncSession, *, principal: Principal, org_id: str, limit_bytes: int | None
) -> None:
    check_scope(principal, Scope.PLATFORM)
    row = await session.get(OrgStorageRow, org_id)
    if row is None:
        session.add(OrgStorageRow(org_id=org_id, used_bytes=0, limit_bytes=limit_bytes))
    else:
        row.limit_bytes = limit_bytes
    await audit.record(
        session, actor=audit.actor_of(principal), action="storage.limit", org_id=org_id,
        target_type="organisation", target_id=org_id, details={"limit_bytes": limit_bytes},
    )  # fmt: skip


def can_read_files(principal: Principal) -> bool:
    return principal.has(Scope.INFERENCE) or principal.has(Scope.READ)


def _visible(principal: Principal) -> ColumnElement[bool]:
    """Files are the tenant's data: their uploader's, and the organisation's managers'
    (the one rule, `core.access`)."""
    if not can_read_files(principal):
        check_scope(principal, Scope.INFERENCE)
    return visible(
        reach(principal, Holding.DATA),
        org=FileRow.org_id,
        project=FileRow.project_id,
        key=FileRow.created_by_key,
    )


async def get_file(session: AsyncSession, *, principal: Principal, file_id: str) -> FileRow:
    """A live file the caller may see (another's answers 404, like a missing one)."""
    query = select(FileRow).where(
        FileRow.id == file_id, FileRow.status != "deleted", _visible(principal)
    )
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"No such file: {file_id}", param="file_id")
    return row


async def list_files(
    session: AsyncSession,
    *,
    principal: Principal,
    purpose: str | None,
    limit: int,
    after: str | None,
) -> Page[FileRow]:
    """The files the caller may see, newest first, a page after the file `after`."""
    query = select(FileRow).where(FileRow.status != "deleted", _visible(principal))
    if purpose is not None:
        query = query.where(FileRow.purpose == purpose)
    return await page_of(session, query, table=FileRow, limit=limit, after=after)


async def open_file(
    session: AsyncSession, *, row: FileRow, master_key: bytes
) -> AsyncIterator[bytes]:
    """The file's plaintext, streamed, decrypted here (where it is used)."""
    if row.status == "erased":
        raise GoneError("This file's key material was erased: it can no longer be read.")
    kek = await organisation_kek(session, master_key=master_key, org_id=row.org_id, create=False)
    data_key = unwrap(kek, bytes.fromhex(row.wrapped_key), row.id)
    return _plaintext(store_from_uri(row.store_uri), row, data_key)


async def _plaintext(store: ObjectStore, row: FileRow, data_key: bytes) -> AsyncIterator[bytes]:
    try:
        async for piece in open_sealed(store.read(row.object_key), data_key, row.id):
            yield piece
    except (StoreError, DecryptionError) as error:
        raise GoneError(f"This file cannot be read back: {error}") from None


async def delete_file(session: AsyncSession, *, principal: Principal, file_id: str) -> FileRow:
    """Forget the file (committed here), then remove its object: a crash in between leaves
    ciphertext no row names, never a row naming an object that is gone."""
    row = await get_file(session, principal=principal, file_id=file_id)
    check_scope(principal, Scope.INFERENCE)
    await _forget(session, row, actor=audit.actor_of(principal), reason="deleted")
    await session.commit()
    await _remove_object(row)
    return row


async def _forget(session: AsyncSession, row: FileRow, *, actor: audit.Actor, reason: str) -> None:
    row.status, row.deleted_at = "deleted", utcnow()
    await release_storage(session, org_id=row.org_id, size=row.stored_bytes)
    await audit.record(
        session, actor=actor, action="file.delete", org_id=row.org_id, target_type="file",
        target_id=row.id, details={"reason": reason, "datacenter": row.datacenter_id},
    )  # fmt: skip


async def _remove_object(row: FileRow) -> None:
    with contextlib.suppress(StoreError, OSError):
        await store_from_uri(row.store_uri).delete(row.object_key)


async def sweep_expired(
    sessions: async_sessionmaker[AsyncSession],
    *,
    now: datetime | None = None,
    chunk: int = 50,
    most: int = 500,
) -> int:
    """Delete files whose expiry has passed, `chunk` at a time: each chunk is forgotten in
    a short transaction of its own, and its objects are removed once that committed.
    Returns how many (at most `most` a call; the next sweep carries on)."""
    now, done = now or utcnow(), 0
    query = select(FileRow).where(
        FileRow.expires_at.is_not(None), FileRow.expires_at <= now, FileRow.status != "deleted"
    )
    while done < most:
        async with sessions.begin() as session:
            expired = list((await session.execute(query.limit(min(chunk, most - done)))).scalars())
            for row in expired:
                await _forget(session, row, actor=audit.SYSTEM_CONTROLLER, reason="expired")
        for row in expired:
            await _remove_object(row)
        done += len(expired)
        if len(expired) < chunk:
            break
    return done


async def crypto_erase(session: AsyncSession, *, principal: Principal, org_id: str) -> int:
    """Destroy the organisation's key material: all its files become unreadable at once,
    whatever copies of their objects exist. Owners and operators; audited."""
    check_org(principal, org_id, Scope.OWN)
    row = await session.get(OrgKeyRow, org_id)
    if row is not None:
        await session.delete(row)
    files = list(
        (
            await session.execute(
                select(FileRow).where(FileRow.org_id == org_id, FileRow.status == "processed")
            )
        ).scalars()
    )
    for file in files:
        file.status = "erased"
    await audit.record(
        session, actor=audit.actor_of(principal), action="org.crypto_erase", org_id=org_id,
        target_type="organisation", target_id=org_id, details={"files": len(files)},
    )  # fmt: skip
    return len(files)


def new_file_id() -> str:
    return new_id("file")
