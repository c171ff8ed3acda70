"""Exports as the API sees them: asked for by an organisation's owners with a key of the
organisation (or by an operator, who may follow it but never download it), one at a time;
read by them only (anyone else gets 404, as for a missing export).

An export of an organisation whose data was erased, with nothing left since, is refused
(409): there is nothing of it to export. A zero-retention organisation may export what it
has (usage records, invoices, policies, audit events): it is its data; its archive is
stored like any other (zero retention governs content sent for inference, not what the
tenant asks to take away), and the tenant deletes it by erasing its organisation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import can_see_org, check_org
from souverain.core.errors import ConflictError, GoneError, NotFoundError, PermissionDeniedError
from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.db.exports import ExportRow
from souverain.db.tables import utcnow
from souverain.evidence import audit
from souverain.files import service as files
from souverain.jobs import erasure_certificates as certificates
from souverain.storage.crypto import DecryptionError, open_sealed, unwrap
from souverain.storage.stores import StoreError, store_from_uri
from souverain.tenancy import orgs

ACTIVE = frozenset({"queued", "running"})


async def is_erased(session: AsyncSession, *, org_id: str) -> bool:
    """Erased, and nothing stored since."""
    return await certificates.find_certificate(
        session, org_id=org_id
    ) is not None and not await certificates.has_anything_to_erase(session, org_id=org_id)


async def create_export(session: AsyncSession, *, principal: Principal, org_ref: str) -> ExportRow:
    """Queue an export of everything the organisation has (owners, operators; audited)."""
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.OWN)
    if principal.project_id is not None:
        raise PermissionDeniedError(
            "An export holds every project's data: ask with a key of the organisation, "
            "not of one project.",
            param="org",
        )
    if await is_erased(session, org_id=org.id):
        raise ConflictError(
            "This organisation's data was erased: there is nothing left to export.",
            param="org",
        )
    running = await session.scalar(
        select(ExportRow.id).where(ExportRow.org_id == org.id, ExportRow.status.in_(ACTIVE))
    )
    if running is not None:
        raise ConflictError(
            f"The export {running} of this organisation has not ended; wait for it.",
            param="org",
        )
    row = ExportRow(
        id=new_id("exp"), org_id=org.id, requested_by=principal.key_id, status="queued",
        attempts=0, created_at=utcnow(),
    )  # fmt: skip
    session.add(row)
    await audit.record(
        session, actor=audit.actor_of(principal), action="export.create", org_id=org.id,
        target_type="export", target_id=row.id,
    )  # fmt: skip
    return row


async def get_export(
    session: AsyncSession, *, principal: Principal, org_ref: str, export_id: str
) -> ExportRow:
    """An export of the organisation, for its owners and operators only (else 404)."""
    org = await orgs.find_org(session, ref=org_ref)
    row = await session.get(ExportRow, export_id)
    if (
        org is None
        or row is None
        or row.org_id != org.id
        or not can_see_org(principal, org.id)
        or not principal.has(Scope.OWN)
    ):
        raise NotFoundError(f"No such export: {export_id}", param="export_id")
    return row


async def open_export(
    session: AsyncSession, *, principal: Principal, row: ExportRow, master_key: bytes
) -> AsyncIterator[bytes]:
    """The archive's plaintext, decrypted here as it streams; the download is audited.
    Its organisation's people only: an operator may ask for an export (offboarding) and
    follow it, never read a tenant's content."""
    if principal.org_id != row.org_id:
        raise PermissionDeniedError(
            "An export's content is its organisation's: operators may ask for one and see "
            "its status, not read it.",
            param="export_id",
        )
    if row.status == "erased":
        raise GoneError("This export was erased with its organisation's keys.")
    if row.status != "succeeded" or not (row.store_uri and row.object_key and row.wrapped_key):
        raise ConflictError(f"This export is {row.status}: its archive is not ready.")
    kek = await files.organisation_kek(
        session, master_key=master_key, org_id=row.org_id, create=False
    )
    data_key = unwrap(kek, bytes.fromhex(row.wrapped_key), row.id)
    await audit.record(
        session, actor=audit.actor_of(principal), action="export.download", org_id=row.org_id,
        target_type="export", target_id=row.id, details={"bytes": row.bytes},
    )  # fmt: skip
    return _readable(
        open_sealed(store_from_uri(row.store_uri).read(row.object_key), data_key, row.id)
    )


async def _readable(plaintext: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    try:
        async for piece in plaintext:
            yield piece
    except (StoreError, DecryptionError) as error:
        raise GoneError(f"This export's archive cannot be read back: {error}") from None
