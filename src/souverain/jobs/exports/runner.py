"""Export jobs, run by the controller: load → process → apply (`jobs.cycle`).

    load     claim the export's lease, mark it running, seal the audit chain's head (the
             archive's chain proof ends at that seal), place the archive in a store the
             organisation's policy allows, take its key
    process  stream the archive: every object read and decrypted, hashed into the signed
             manifest, sealed with a data key wrapped by the organisation's key, written to
             the store; plaintext touches no disk
    apply    record where the archive is and what it holds, or why it failed; audited

A round that dies half-way leaves its lease to expire; the next round starts the archive
again from the beginning (the store's write is all or nothing), at most `MAX_ATTEMPTS`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain import __version__
from souverain.core.errors import SouverainError
from souverain.core.exports import MANIFEST_KIND, README_TEXT
from souverain.core.ids import new_id
from souverain.core.policy import Policy, intersect
from souverain.core.signing import sign
from souverain.db.audit import AuditSealRow
from souverain.db.exports import ExportRow
from souverain.db.tables import OrganisationRow, ProjectRow, utcnow
from souverain.evidence import audit, audit_log
from souverain.files import service as files
from souverain.jobs.cycle import run_cycle
from souverain.jobs.exports import records, stored
from souverain.jobs.exports.archive import ArchiveError, ArchiveWriter, Entry, entry_of
from souverain.jobs.exports.service import ACTIVE, is_erased
from souverain.jobs.lease import Lease
from souverain.sovereignty import policies
from souverain.storage.crypto import DecryptionError, Sealer
from souverain.storage.stores import StoreError, store_from_uri

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
README = README_TEXT.encode()


@dataclass(frozen=True)
class Loaded:
    export_id: str
    org: OrganisationRow
    requested_by: str | None
    sealed_seq: int
    datacenter_id: str
    store_uri: str
    kek: bytes
    started_at: datetime


@dataclass
class Outcome:
    error: str | None = None
    object_key: str | None = None
    wrapped_key: str | None = None
    size: int = 0
    sha256: str = ""
    objects: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    orphaned: bool = False


class ExportRunner:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        master_key: bytes,
        signing_key: Ed25519PrivateKey,
        file_stores: Mapping[str, str],
        lease_s: float = 900.0,
    ) -> None:
        self._sessions = sessions
        self._master_key = master_key
        self._signing_key = signing_key
        self._stores = file_stores
        self._lease = Lease(ExportRow.id, ExportRow.lock_token, ExportRow.lock_expires_at, lease_s)

    async def run_once(self) -> int:
        """Run every export waiting (or abandoned by a holder that died); how many ended."""
        async with self._sessions() as session:
            waiting = list((await session.execute(
                select(ExportRow.id).where(ExportRow.status.in_(ACTIVE), self._lease.free(utcnow()))
                .order_by(ExportRow.created_at)
            )).scalars())  # fmt: skip
        done = 0
        for export_id in waiting:
            ran = await run_cycle(
                self._sessions,
                self._lease,
                export_id,
                load=functools.partial(self._load, export_id=export_id),
                process=self._process,
                apply=self._apply,
            )
            if ran is not None and ran[1].orphaned and ran[1].object_key:
                await _delete(ran[0].store_uri, ran[1].object_key)
            done += ran is not None
        return done

    async def _load(self, session: AsyncSession, *, export_id: str) -> Loaded | None:
        row = await session.get(ExportRow, export_id)
        if row is None or row.status not in ACTIVE:
            return None
        try:
            return await self._start(session, row)
        except SouverainError as error:
            await _end(session, row, error=error.message)
            return None

    async def _start(self, session: AsyncSession, row: ExportRow) -> Loaded:
        row.attempts += 1
        if row.attempts > MAX_ATTEMPTS:
            raise ArchiveFailed(f"the export failed {MAX_ATTEMPTS} times; ask for a new one")
        if await is_erased(session, org_id=row.org_id):
            raise ArchiveFailed("the organisation's data was erased")
        row.status, row.started_at = "running", row.started_at or utcnow()
        await audit_log.seal(session, signing_key=self._signing_key)
        sealed = await session.scalar(select(func.max(AuditSealRow.seq)))
        policy = await _strictest(session, row.org_id)
        placement = await files.place_file(session, policy=policy, stores=self._stores)
        kek = await files.organisation_kek(
            session, master_key=self._master_key, org_id=row.org_id, create=True
        )
        org = await session.get(OrganisationRow, row.org_id)
        assert org is not None  # exports go with their organisation (cascade)
        return Loaded(
            row.id, org, row.requested_by, int(sealed or 0), placement.datacenter_id,
            placement.store_uri, kek, utcnow(),
        )  # fmt: skip

    async def _process(self, loaded: Loaded) -> Outcome:
        counts = stored.Counts()
        writer = ArchiveWriter(mtime=loaded.started_at.timestamp())
        data_key, wrapped = files.new_data_key(loaded.kek, loaded.export_id)
        object_key = new_id("obj")
        plaintext = writer.stream(self._entries(loaded, counts), self._manifest(loaded, counts))
        try:
            await store_from_uri(loaded.store_uri).write(
                object_key, _sealed(plaintext, data_key, loaded.export_id)
            )
        except (ArchiveError, SouverainError, StoreError, DecryptionError, OSError) as error:
            log.warning("export %s failed: %s", loaded.export_id, error)
            return Outcome(error=str(error))
        return Outcome(
            object_key=object_key, wrapped_key=wrapped, size=writer.size,
            sha256=writer.digest.hexdigest(), objects=len(writer.objects), counts=counts.values,
        )  # fmt: skip

    async def _entries(self, loaded: Loaded, counts: stored.Counts) -> AsyncIterator[Entry]:
        org, sessions, key = loaded.org, self._sessions, self._master_key
        yield entry_of("README.txt", README)
        parts = (
            stored.file_entries(sessions, org_id=org.id, master_key=key, counts=counts),
            stored.job_entries(sessions, org_id=org.id, counts=counts),
            stored.model_entries(sessions, org_id=org.id, master_key=key, counts=counts),
            records.usage_entries(sessions, org=org, counts=counts),
            records.settings_entries(sessions, org_id=org.id, counts=counts),
            records.audit_entries(
                sessions, org_id=org.id, sealed_seq=loaded.sealed_seq, counts=counts
            ),
            records.residency_entry(
                sessions, org=org, until=loaded.started_at, signing_key=self._signing_key,
                requested_by=loaded.requested_by,
            ),
        )  # fmt: skip
        for part in parts:
            async for entry in part:
                yield entry

    def _manifest(self, loaded: Loaded, counts: stored.Counts) -> Any:
        def signed(objects: list[dict[str, Any]]) -> dict[str, Any]:
            return sign(self._signing_key, {
                "kind": MANIFEST_KIND, "export_id": loaded.export_id,
                "organisation": {"id": loaded.org.id, "name": loaded.org.name},
                "created_at": loaded.started_at.isoformat(), "platform_version": __version__,
                "counts": counts.values, "objects": objects,
            })  # fmt: skip

        return signed

    async def _apply(self, session: AsyncSession, loaded: Loaded, outcome: Outcome) -> None:
        row = await session.get(ExportRow, loaded.export_id)
        if row is None or row.status not in ACTIVE:
            outcome.orphaned = True  # erased meanwhile: what was written is deleted
            return
        if outcome.error is not None:
            await _end(session, row, error=outcome.error)
            return
        row.datacenter_id, row.store_uri = loaded.datacenter_id, loaded.store_uri
        row.object_key, row.wrapped_key = outcome.object_key, outcome.wrapped_key
        row.bytes, row.sha256, row.objects = outcome.size, outcome.sha256, outcome.objects
        row.counts = outcome.counts
        await _end(session, row, error=None)


class ArchiveFailed(SouverainError):
    """Why an export cannot be made (recorded on it; no one is waiting on an answer)."""


async def _end(session: AsyncSession, row: ExportRow, *, error: str | None) -> None:
    row.status, row.error, row.finished_at = (
        "failed" if error else "succeeded", error, utcnow()
    )  # fmt: skip
    await audit.record(
        session, actor=audit.SYSTEM_CONTROLLER,
        action="export.failed" if error else "export.succeeded", org_id=row.org_id,
        target_type="export", target_id=row.id,
        details={"error": error} if error else {"bytes": row.bytes, "objects": row.objects,
                                                "datacenter": row.datacenter_id},
    )  # fmt: skip


async def _delete(store_uri: str, object_key: str) -> None:
    with contextlib.suppress(StoreError, OSError):
        await store_from_uri(store_uri).delete(object_key)


async def _sealed(
    plaintext: AsyncIterator[bytes], data_key: bytes, export_id: str
) -> AsyncIterator[bytes]:
    sealer = Sealer(data_key, export_id)
    yield sealer.header
    async for chunk in plaintext:
        for piece in sealer.feed(chunk):
            yield piece
    yield sealer.finish()


async def _strictest(session: AsyncSession, org_id: str) -> Policy:
    """The archive holds every project's data, so it goes only where each project's policy
    in force (ceiling ∩ project) allows: their intersection."""
    policy = await policies.ceiling_in_force(session, org_id=org_id)
    project_ids = list(
        (await session.execute(select(ProjectRow.id).where(ProjectRow.org_id == org_id))).scalars()
    )
    for project_id in project_ids:
        policy = intersect(
            policy, await policies.effective(session, org_id=org_id, project_id=project_id)
        )
    return policy
