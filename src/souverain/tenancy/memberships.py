"""Who belongs to an organisation, with which role. Granting follows `core.roles.can_grant`."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_org
from souverain.core.errors import NotFoundError, PermissionDeniedError
from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.core.roles import Role, Scope, can_grant, scopes_of
from souverain.core.schemas.tenancy import MemberAddRequest
from souverain.db.identity import ProjectGrantRow, ServiceAccountRow
from souverain.db.tables import MembershipRow, UserRow, utcnow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import key_lineage, orgs, users


async def find_membership(
    session: AsyncSession, *, org_id: str, user_id: str
) -> MembershipRow | None:
    query = select(MembershipRow).where(
        MembershipRow.org_id == org_id, MembershipRow.user_id == user_id
    )
    return (await session.execute(query)).scalar_one_or_none()


async def held_scopes(
    session: AsyncSession,
    *,
    org_id: str | None,
    user: UserRow,
    project_id: str | None,
    now: datetime | None = None,
) -> frozenset[Scope] | None:
    """What `user` holds now where a key of theirs acts: the operator role outside any
    organisation; inside one, their membership's role, and for a key restricted to a project
    also their role in that project (a role can be granted for one project only). None when
    they hold nothing there, or are a service account that expired or was deleted. Being a
    platform operator grants nothing inside a tenant."""
    if org_id is None:
        return scopes_of(Role.OPERATOR) if user.is_operator else None
    if user.kind == "service" and not await _service_account_alive(session, user.id, now):
        return None
    membership = await find_membership(session, org_id=org_id, user_id=user.id)
    held = scopes_of(Role(membership.role)) if membership is not None else None
    if project_id is not None:
        grant = await find_project_grant(session, project_id=project_id, user_id=user.id)
        if grant is not None:
            held = (held or frozenset()) | scopes_of(Role(grant.role))
    return held


async def find_project_grant(
    session: AsyncSession, *, project_id: str, user_id: str
) -> ProjectGrantRow | None:
    query = select(ProjectGrantRow).where(
        ProjectGrantRow.project_id == project_id, ProjectGrantRow.user_id == user_id
    )
    return (await session.execute(query)).scalar_one_or_none()


async def _service_account_alive(session: AsyncSession, user_id: str, now: datetime | None) -> bool:
    account = await session.get(ServiceAccountRow, user_id)
    if account is None:
        return False
    return account.expires_at is None or account.expires_at > (now or utcnow())


async def list_members(
    session: AsyncSession, *, principal: Principal, org_ref: str
) -> list[tuple[MembershipRow, UserRow]]:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    query = (
        select(MembershipRow, UserRow)
        .join(UserRow, UserRow.id == MembershipRow.user_id)
        .where(MembershipRow.org_id == org.id, UserRow.kind == "person")
        .order_by(UserRow.name)
    )
    return [(m, u) for m, u in (await session.execute(query)).all()]


async def add_member(
    session: AsyncSession, *, principal: Principal, org_ref: str, request: MemberAddRequest
) -> tuple[MembershipRow, UserRow]:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.MANAGE)
    if request.role == Role.OPERATOR:
        raise PermissionDeniedError("the operator role is not an organisation role")
    if not can_grant(principal.scopes, role=request.role):
        raise PermissionDeniedError(f"you cannot grant the '{request.role}' role")
    user = await users.ensure_user(session, name=request.user)
    membership = await find_membership(session, org_id=org.id, user_id=user.id)
    if membership is None:
        membership = MembershipRow(
            id=new_id("mem"), org_id=org.id, user_id=user.id, role=request.role
        )
        session.add(membership)
    else:
        if not can_grant(principal.scopes, role=Role(membership.role)):
            raise PermissionDeniedError("you cannot change the role of a member who outranks you")
        membership.role = request.role
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="member.set",
        org_id=org.id,
        target_type="user",
        target_id=user.id,
        details={"user": user.name, "role": request.role},
    )
    return membership, user


async def remove_member(
    session: AsyncSession, *, principal: Principal, org_ref: str, user_name: str
) -> None:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.MANAGE)
    user = await users.find_user_by_name(session, name=user_name)
    membership = user and await find_membership(session, org_id=org.id, user_id=user.id)
    if not membership:
        raise NotFoundError("member not found")
    if not can_grant(principal.scopes, role=Role(membership.role)):
        raise PermissionDeniedError("you cannot remove a member who outranks you")
    await session.delete(membership)
    revoked = await key_lineage.revoke_membership_keys(
        session, org_id=org.id, user_id=membership.user_id
    )
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="member.remove",
        org_id=org.id,
        target_type="user",
        target_id=membership.user_id,
        details={"user": user_name, "keys_revoked": revoked},
    )
