"""An organisation's exports: everything it has, in one archive it can take away."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator

from fastapi import APIRouter
from fastapi.responses import Response, StreamingResponse

from souverain.core.errors import ConflictError, NotFoundError, PermissionDeniedError
from souverain.core.principal import Principal
from souverain.core.schemas.exports import Export
from souverain.db.exports import ExportRow
from souverain.gateway.state import AppState
from souverain.jobs.exports import service as exports
from souverain.server.deps import PrincipalDep, SessionDep, StateDep

router = APIRouter(prefix="/api/orgs/{org}/exports", tags=["data controls"])


@contextlib.contextmanager
def refusals_noted(state: AppState, action: str, principal: Principal) -> Iterator[None]:
    """A refused export or erasure is audited (counted per window, under the caller's own
    organisation: the target's log is not the caller's to write in), then answered."""
    try:
        yield
    except (PermissionDeniedError, NotFoundError, ConflictError) as error:
        state.audit_trail.note(
            action, reason=error.message, subject=principal.key_id, org_id=principal.org_id
        )
        raise


def export_view(row: ExportRow) -> Export:
    return Export.model_validate(row, from_attributes=True)


@router.post("", response_model=Export, status_code=202)
async def create_export(
    org: str, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> Export:
    """Ask for an export of everything the organisation has: its files, batches,
    fine-tuned adapters with their model cards, usage records (CSV and JSON lines),
    invoices, policies, keys' metadata (never a secret), audit events with the chain's
    proof and a signed residency report, in one tar archive whose manifest lists every
    object's SHA-256, signed with the installation's key. The controller writes it,
    encrypted with the organisation's key, to a store its policy allows. Owners and
    operators; audited. 409 once the organisation's data was erased."""
    with refusals_noted(state, "export.refused", principal):
        row = await exports.create_export(session, principal=principal, org_ref=org)
    await session.commit()
    return export_view(row)


@router.get("/{export_id}", response_model=Export)
async def get_export(
    org: str, export_id: str, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> Export:
    """The export's status and, once it succeeded, its size, SHA-256 and contents' counts
    (owners and operators; 404 for anyone else)."""
    with refusals_noted(state, "export.refused", principal):
        row = await exports.get_export(
            session, principal=principal, org_ref=org, export_id=export_id
        )
    return export_view(row)


@router.get("/{export_id}/content", response_model=None)
async def export_content(
    org: str, export_id: str, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> Response:
    """The archive (application/x-tar), decrypted as it streams (owners and operators;
    404 for anyone else; 409 until it succeeded; 410 once erased). Audited. Check it
    offline with `souverain exports verify`."""
    with refusals_noted(state, "export.refused", principal):
        row = await exports.get_export(
            session, principal=principal, org_ref=org, export_id=export_id
        )
        plaintext = await exports.open_export(
            session, principal=principal, row=row, master_key=state.master_key
        )
        first = await anext(plaintext, b"")  # an archive that cannot be read: 410, no audit
    await session.commit()  # the download is audited
    return StreamingResponse(
        _chain(first, plaintext),
        media_type="application/x-tar",
        headers={"Content-Disposition": f'attachment; filename="{row.id}.tar"'},
    )


async def _chain(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for piece in rest:
        yield piece
