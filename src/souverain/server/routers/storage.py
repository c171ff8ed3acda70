"""An organisation's stored files: its quota (operators) and crypto-erasure (owners)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import Field

from souverain.core.schemas.common import StrictRequest
from souverain.files import service as files
from souverain.jobs import erasures
from souverain.server.deps import PrincipalDep, SessionDep
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
async def crypto_erase(org: str, principal: PrincipalDep, session: SessionDep) -> dict[str, Any]:
    """Destroy the organisation's key material: every one of its files becomes unreadable,
    at once and for good, wherever copies of their encrypted objects are; its fine-tuned
    models stop being served and can never be deployed again (their adapters were sealed
    with those keys), and its fine-tuning jobs are cancelled. Owners and operators;
    recorded in the audit log. New uploads get new key material."""
    found = await orgs.get_org(session, principal=principal, ref=org)
    erased = await erasures.erase_organisation(session, principal=principal, org_id=found.id)
    await session.commit()
    return {"org_id": found.id, "files": erased.files, "models": erased.models,
            "deployments": erased.deployments, "fine_tuning_jobs": erased.jobs, "batches": erased.batches}  # fmt: skip
