from __future__ import annotations

from fastapi import APIRouter

from souverain.core.schemas.tenancy import Me
from souverain.server.deps import PrincipalDep, SessionDep
from souverain.tenancy import orgs

router = APIRouter(prefix="/api", tags=["identity"])


@router.get("/me", response_model=Me)
async def whoami(principal: PrincipalDep, session: SessionDep) -> Me:
    """Who this key acts for, in which organisation, with which effective scopes."""
    org = await orgs.find_org(session, ref=principal.org_id) if principal.org_id else None
    return Me(
        user=principal.user_name,
        user_id=principal.user_id,
        key_id=principal.key_id,
        org_id=principal.org_id,
        org=org.name if org else None,
        project_id=principal.project_id,
        role=principal.role,
        scopes=sorted(principal.scopes),
        priority="batch" if principal.priority == "batch" else "interactive",
    )
