"""Organisations: the tenants. Each is created with a `default` project."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import can_see_org, check_operator, check_scope
from souverain.core.errors import ConflictError, NotFoundError
from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.core.roles import Role, Scope
from souverain.core.schemas.tenancy import OrganisationCreateRequest
from souverain.db.tables import MembershipRow, OrganisationRow, ProjectRow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import users

DEFAULT_PROJECT = "default"


async def find_org(session: AsyncSession, *, ref: str) -> OrganisationRow | None:
    """By id or by name."""
    query = select(OrganisationRow).where(
        or_(OrganisationRow.id == ref, OrganisationRow.name == ref)
    )
    return (await session.execute(query)).scalar_one_or_none()


async def get_org(session: AsyncSession, *, principal: Principal, ref: str) -> OrganisationRow:
    org = await find_org(session, ref=ref)
    if org is None or not can_see_org(principal, org.id):
        raise NotFoundError("organisation not found")
    check_scope(principal, Scope.READ)
    return org


async def list_orgs(session: AsyncSession, *, principal: Principal) -> list[OrganisationRow]:
    check_scope(principal, Scope.READ)
    query = select(OrganisationRow).order_by(OrganisationRow.name)
    if not principal.is_operator:
        query = query.where(OrganisationRow.id == principal.org_id)
    return list((await session.execute(query)).scalars())


async def create_org(
    session: AsyncSession, *, principal: Principal, request: OrganisationCreateRequest
) -> OrganisationRow:
    check_operator(principal)
    if await find_org(session, ref=request.name) is not None:
        raise ConflictError(f"organisation '{request.name}' already exists", param="name")
    org = OrganisationRow(
        id=new_id("org"), name=request.name, display_name=request.display_name or request.name
    )
    session.add(org)
    await session.flush()
    session.add(ProjectRow(id=new_id("prj"), org_id=org.id, name=DEFAULT_PROJECT))
    if request.owner:
        owner = await users.ensure_user(session, name=request.owner)
        session.add(
            MembershipRow(id=new_id("mem"), org_id=org.id, user_id=owner.id, role=Role.OWNER)
        )
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="org.create",
        org_id=org.id,
        target_type="organisation",
        target_id=org.id,
        details={"name": org.name, "owner": request.owner},
    )
    return org
