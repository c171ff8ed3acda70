"""An organisation's stored files: its quota (operators), its erasure (owners) and the
certificate of that erasure."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field
from sqlalchemy.exc import IntegrityError

from souverain.core.access import check_org
from souverain.core.errors import ConflictError, NotFoundError
from souverain.core.roles import Scope
from souverain.core.schemas.common import StrictRequest
from souverain.files import service as files
from souverain.jobs import erasure_certificates as certificates
from souverain.jobs import erasures
from souverain.server.deps import PrincipalDep, SessionDep, StateDep
from souverain.server.routers.exports import refusals_noted
from souverain.tenancy import orgs

router = APIRouter(prefix="/api/orgs", tags=["files"])


class StorageLimitRequest(StrictRequest):
    limit_bytes: int | None = Field(default=None, ge=0, le=2**60)


@router.get("/{org}/storage")
async def get_storage(org: str, principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    """Bytes your organisation keeps in the file stores (encrypted size)."""
    found = await orgs.get_org(session, principal=principal, ref=org)
    return {"org_id": found.id, "used_bytes": await files.storage_used(session, org_id=found.id)}


@router.put("/{org}/storage")
async def set_storage(
    org: str, body: StorageLimitRequest, principal: PrincipalDep, session: SessionDep
) -> dict[str, Any]:
    """The organisation's storage quota (operators; null: the installation's default)."""
    found = await orgs.get_org(session, principal=principal, ref=org)
    await files.set_storage_limit(
        session, principal=principal, org_id=found.id, limit_bytes=body.limit_bytes
    )
    await session.commit()
    return {"org_id": found.id, "limit_bytes": body.limit_bytes}


@router.post("/{org}/crypto-erase")
async def crypto_erase(
    org: str, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    """Erase the organisation's data: its key material is destroyed first, so every one of
    its files, adapters and exports becomes unreadable at once and for good, wherever
    copies of their encrypted objects are; then those objects are deleted from the stores.
    Its fine-tuned models stop being served and can never be deployed again, its
    fine-tuning jobs are cancelled and its unfinished batches fail. Owners and operators;
    recorded in the audit log. The answer carries a `certificate` signed by the
    installation's key (verify it offline with `souverain erasure verify`); erasing again
    an organisation with nothing left answers the same certificate. New uploads get new
    key material."""
    with refusals_noted(state, "erasure.refused", principal):
        found = await orgs.get_org(session, principal=principal, ref=org)
        try:
            erasure = await erasures.erase_organisation(
                session, principal=principal, org_id=found.id, signing_key=state.signing_key
            )
            await session.commit()
        except IntegrityError:  # another erasure of it committed first: nothing of this one
            await session.rollback()
            raise ConflictError(
                "Another erasure of this organisation has just finished; ask again to get "
                "its certificate.",
                param="org",
            ) from None
    await erasures.remove_objects(erasure.objects)  # the fact is committed: now the objects
    erased = erasure.erased
    return {"org_id": found.id, "files": erased.files, "models": erased.models,
            "deployments": erased.deployments, "fine_tuning_jobs": erased.jobs,
            "batches": erased.batches, "certificate": erasure.certificate}  # fmt: skip


@router.get("/{org}/erasure-certificate")
async def erasure_certificate(
    org: str, principal: PrincipalDep, session: SessionDep
) -> dict[str, Any]:
    """The signed certificate of the organisation's last erasure (owners, auditors and
    operators); 404 when it was never erased."""
    found = await orgs.get_org(session, principal=principal, ref=org)
    check_org(principal, found.id, Scope.AUDIT)
    certificate = await certificates.find_certificate(session, org_id=found.id)
    if certificate is None:
        raise NotFoundError("This organisation was never erased.")
    return certificate
