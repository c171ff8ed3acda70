from __future__ import annotations

from fastapi import APIRouter

from souverain.core.schemas.policies import PolicyDocument, PolicyView
from souverain.server.deps import PrincipalDep, SessionDep, StateDep
from souverain.sovereignty import policies

router = APIRouter(prefix="/api/orgs/{org}", tags=["sovereignty"])


@router.get("/policy", response_model=PolicyView)
async def get_ceiling(org: str, principal: PrincipalDep, session: SessionDep) -> PolicyView:
    """The organisation's ceiling: what the operator allows it at most."""
    org_id, _, policy, version, _ = await policies.view(
        session, principal=principal, org_ref=org, project_ref=None
    )
    return PolicyView(
        org_id=org_id,
        project_id=None,
        scope="ceiling",
        policy=PolicyDocument.from_policy(policy),
        version_id=version.id if version else None,
        updated_at=version.created_at if version else None,
    )


@router.put("/policy", response_model=PolicyView)
async def set_ceiling(
    org: str, body: PolicyDocument, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> PolicyView:
    """Set the ceiling (operators). In force on this server when the answer comes, on the
    others within their route refresh (`SOUVERAIN_REPLICA_REFRESH_S`, 0.5 s); re-places
    replicas of the organisation's deployments that no longer comply."""
    version = await policies.set_ceiling(session, principal=principal, org_ref=org, document=body)
    await session.commit()
    await state.routes.refresh(state.sessions)
    return PolicyView(
        org_id=version.org_id,
        project_id=None,
        scope="ceiling",
        policy=PolicyDocument.from_policy(version.policy),
        version_id=version.id,
        updated_at=version.created_at,
    )


@router.get("/projects/{project}/policy", response_model=PolicyView)
async def get_project_policy(
    org: str, project: str, principal: PrincipalDep, session: SessionDep, effective: bool = False
) -> PolicyView:
    """A project's own policy, or with `effective=true` what applies: ceiling ∩ project."""
    org_id, project_id, own, version, in_effect = await policies.view(
        session, principal=principal, org_ref=org, project_ref=project
    )
    return PolicyView(
        org_id=org_id,
        project_id=project_id,
        scope="effective" if effective else "project",
        policy=PolicyDocument.from_policy(in_effect if effective else own),
        version_id=version.id if version else None,
        updated_at=version.created_at if version else None,
    )


@router.put("/projects/{project}/policy", response_model=PolicyView)
async def set_project_policy(
    org: str,
    project: str,
    body: PolicyDocument,
    principal: PrincipalDep,
    session: SessionDep,
    state: StateDep,
) -> PolicyView:
    """Set a project's policy (org admins). It may only narrow the ceiling: a widening is
    refused with 403, naming each constraint it would widen."""
    version = await policies.set_project_policy(
        session, principal=principal, org_ref=org, project_ref=project, document=body
    )
    await session.commit()
    await state.routes.refresh(state.sessions)  # in force here at once, elsewhere within 0.5 s
    return PolicyView(
        org_id=version.org_id,
        project_id=version.project_id,
        scope="project",
        policy=PolicyDocument.from_policy(version.policy),
        version_id=version.id,
        updated_at=version.created_at,
    )
