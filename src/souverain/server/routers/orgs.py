from __future__ import annotations

from fastapi import APIRouter, status

from souverain.core.roles import Role
from souverain.core.schemas.tenancy import (
    Member,
    MemberAddRequest,
    Organisation,
    OrganisationCreateRequest,
    Project,
    ProjectCreateRequest,
    ProjectUpdateRequest,
)
from souverain.server.deps import PrincipalDep, SessionDep
from souverain.tenancy import memberships, orgs, projects

router = APIRouter(prefix="/api/orgs", tags=["organisations"])


@router.get("", response_model=list[Organisation])
async def list_orgs(principal: PrincipalDep, session: SessionDep) -> list[Organisation]:
    """Operators see every organisation; anyone else sees their own."""
    return [
        Organisation.model_validate(o) for o in await orgs.list_orgs(session, principal=principal)
    ]


@router.post("", response_model=Organisation, status_code=status.HTTP_201_CREATED)
async def create_org(
    body: OrganisationCreateRequest, principal: PrincipalDep, session: SessionDep
) -> Organisation:
    """Create an organisation (operators only), with a `default` project and optionally its owner."""
    org = await orgs.create_org(session, principal=principal, request=body)
    await session.commit()
    return Organisation.model_validate(org)


@router.get("/{org}", response_model=Organisation)
async def get_org(org: str, principal: PrincipalDep, session: SessionDep) -> Organisation:
    return Organisation.model_validate(await orgs.get_org(session, principal=principal, ref=org))


@router.get("/{org}/projects", response_model=list[Project])
async def list_projects(org: str, principal: PrincipalDep, session: SessionDep) -> list[Project]:
    rows = await projects.list_projects(session, principal=principal, org_ref=org)
    return [Project.model_validate(p) for p in rows]


@router.post("/{org}/projects", response_model=Project, status_code=status.HTTP_201_CREATED)
async def create_project(
    org: str, body: ProjectCreateRequest, principal: PrincipalDep, session: SessionDep
) -> Project:
    project = await projects.create_project(session, principal=principal, org_ref=org, request=body)
    await session.commit()
    return Project.model_validate(project)


@router.patch("/{org}/projects/{project}", response_model=Project)
async def update_project(
    org: str, project: str, body: ProjectUpdateRequest, principal: PrincipalDep,
    session: SessionDep,
) -> Project:  # fmt: skip
    """Change a project's priority (`batch`: its keys' requests queue behind interactive ones)."""
    row = await projects.update_project(
        session, principal=principal, org_ref=org, project_ref=project, request=body
    )
    await session.commit()
    return Project.model_validate(row)


@router.get("/{org}/members", response_model=list[Member])
async def list_members(org: str, principal: PrincipalDep, session: SessionDep) -> list[Member]:
    rows = await memberships.list_members(session, principal=principal, org_ref=org)
    return [
        Member(user_id=u.id, user=u.name, role=Role(m.role), created_at=m.created_at)
        for m, u in rows
    ]


@router.post("/{org}/members", response_model=Member, status_code=status.HTTP_201_CREATED)
async def add_member(
    org: str, body: MemberAddRequest, principal: PrincipalDep, session: SessionDep
) -> Member:
    """Add a user (created if new) or change their role; you can only grant what you hold."""
    membership, user = await memberships.add_member(
        session, principal=principal, org_ref=org, request=body
    )
    await session.commit()
    return Member(
        user_id=user.id,
        user=user.name,
        role=Role(membership.role),
        created_at=membership.created_at,
    )


@router.delete("/{org}/members/{user}", status_code=status.HTTP_204_NO_CONTENT)
async def remove_member(org: str, user: str, principal: PrincipalDep, session: SessionDep) -> None:
    """Remove a member. Their keys stop working within seconds."""
    await memberships.remove_member(session, principal=principal, org_ref=org, user_name=user)
    await session.commit()
