from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query

from souverain.core.signing import key_id, public_key_pem
from souverain.server.deps import PrincipalDep, SessionDep, StateDep
from souverain.sovereignty import residency

router = APIRouter(prefix="/api", tags=["evidence"])


@router.get("/orgs/{org}/reports/residency")
async def residency_report(
    org: str,
    principal: PrincipalDep,
    session: SessionDep,
    state: StateDep,
    since: datetime = Query(alias="from"),
    until: datetime = Query(alias="to"),
) -> dict[str, Any]:
    """Requests and tokens per datacenter and country over a period, each request checked
    against the sovereignty policy in force when it was made, violations listed. Signed
    with the platform's Ed25519 key: verify offline with `souverain reports verify`.
    For auditors, admins and owners of the organisation, and operators."""
    signed = await residency.residency(
        session,
        principal=principal,
        org_ref=org,
        since=since,
        until=until,
        signing_key=state.signing_key,
    )
    await session.commit()  # the report's generation is audited
    return signed


@router.get("/signing-key")
async def signing_key(principal: PrincipalDep, state: StateDep) -> dict[str, str]:
    """The platform's public key, to verify reports and audit seals offline."""
    public = state.signing_key.public_key()
    return {
        "algorithm": "Ed25519",
        "key_id": key_id(public),
        "public_key_pem": public_key_pem(public),
    }
