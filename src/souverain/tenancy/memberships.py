"""Who belongs to an organisation, with which role. Granting follows `core.roles.can_grant`."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_org
from souverain.core.errors import NotFoundError, PermissionDeniedError
from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.core.roles import Role, Scope, can_grant
from souverain.core.schemas.tenancy import MemberAddRequest
from souverain.db.tables import MembershipRow, UserRow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import key_lineage, orgs, users


async def find_membership(
    session: AsyncSession, *, org_id: str, user_id: str
) -> MembershipRow | None:
    query = select(MembershipRow).where(
        MembershipRow.org_id == org_id, MembershipRow.user_id == user_id
    )
    return (await session.execute(query)).scalar_one_or_none()


async def list_members(
    session: AsyncSession, *, principal: Principal, org_ref: str
) -> list[tuple[MembershipRow, UserRow]]:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    query = (
        select(MembershipRow, UserRow)
        .join(UserRow, UserRow.id == MembershipRow.user_id)
        .where(MembershipRow.org_id == org.id)
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
