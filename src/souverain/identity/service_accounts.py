"""Service accounts: non-human principals of an organisation (or of one of its projects)
that own keys.

A service account is a user of kind `service` (never listed among members, shown apart in
the console and, as `service_account`, in the audit log) holding its role like a member does
(a membership, or a role in its one project). Its keys are bounded by that role, its project
and its expiry, and do **not** hang from the key of whoever issued them: a CI pipeline keeps
working when the person who set it up leaves; removing the account revokes them all.

Rotation: a new key is issued and every other key of the account is cut to end
`overlap_hours` later (24 by default), so for that window two keys work and the new one can
be deployed before the old one stops.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_org, check_project
from souverain.core.errors import ConflictError, NotFoundError, PermissionDeniedError
from souverain.core.ids import hash_secret, new_api_key, new_id
from souverain.core.principal import Principal
from souverain.core.roles import ORG_ROLES, Role, Scope, can_grant, scopes_of
from souverain.core.schemas.identity import (
    ServiceAccountCreateRequest,
    ServiceAccountKeyRequest,
    ServiceAccountRotateRequest,
)
from souverain.db.identity import ProjectGrantRow, ServiceAccountRow
from souverain.db.tables import ApiKeyRow, MembershipRow, OrganisationRow, UserRow, utcnow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import key_lineage, orgs, projects


async def create(
    session: AsyncSession,
    *,
    principal: Principal,
    org_ref: str,
    request: ServiceAccountCreateRequest,
) -> ServiceAccountRow:
    org = await _managed_org(session, principal, org_ref)
    if request.role not in ORG_ROLES or not can_grant(principal.scopes, role=request.role):
        raise PermissionDeniedError(f"you cannot grant the '{request.role}' role")
    project_id = principal.project_id
    if request.project is not None:
        project = await projects.get_project(
            session, principal=principal, org_id=org.id, ref=request.project
        )
        project_id = project.id
    if await _find(session, org.id, request.name) is not None:
        raise ConflictError(f"a service account named '{request.name}' exists", param="name")
    now = utcnow()
    user = UserRow(id=new_id("usr"), name=f"svc:{new_id('sa')}", is_operator=False, kind="service")
    session.add(user)
    await session.flush()
    account = ServiceAccountRow(
        user_id=user.id,
        org_id=org.id,
        project_id=project_id,
        name=request.name,
        description=request.description,
        role=request.role,
        expires_at=now + timedelta(days=request.expires_in_days)
        if request.expires_in_days
        else None,
        created_by=principal.user_id,
        created_at=now,
    )
    session.add(account)
    _hold(session, account)
    await session.flush()
    await _audit(session, principal, "service_account.create", account)
    return account


def _hold(session: AsyncSession, account: ServiceAccountRow) -> None:
    """The account's role, held like a member's: in the organisation, or in its project."""
    if account.project_id is None:
        session.add(
            MembershipRow(
                id=new_id("mem"),
                org_id=account.org_id,
                user_id=account.user_id,
                role=account.role,
                source="service",
            )
        )
    else:
        session.add(
            ProjectGrantRow(
                id=new_id("pgr"),
                org_id=account.org_id,
                project_id=account.project_id,
                user_id=account.user_id,
                role=account.role,
                source="service",
            )
        )


async def list_accounts(
    session: AsyncSession, *, principal: Principal, org_ref: str
) -> list[tuple[ServiceAccountRow, list[ApiKeyRow]]]:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.READ)
    query = select(ServiceAccountRow).where(ServiceAccountRow.org_id == org.id)
    if principal.project_id is not None:
        query = query.where(ServiceAccountRow.project_id == principal.project_id)
    accounts = list((await session.execute(query.order_by(ServiceAccountRow.name))).scalars())
    return [(a, await _keys(session, a)) for a in accounts]


async def issue_key(
    session: AsyncSession,
    *,
    principal: Principal,
    org_ref: str,
    name: str,
    request: ServiceAccountKeyRequest,
) -> tuple[ApiKeyRow, str]:
    account = await get_account(session, principal=principal, org_ref=org_ref, name=name)
    return await _mint(session, principal, account, request)


async def rotate(
    session: AsyncSession,
    *,
    principal: Principal,
    org_ref: str,
    name: str,
    request: ServiceAccountRotateRequest,
) -> tuple[ApiKeyRow, str, list[ApiKeyRow]]:
    account = await get_account(session, principal=principal, org_ref=org_ref, name=name)
    previous = [k for k in await _keys(session, account) if k.revoked_at is None]
    row, full = await _mint(session, principal, account, request)
    ends = row.created_at + timedelta(hours=request.overlap_hours)
    for key in previous:
        if key.expires_at is None or key.expires_at > ends:
            key.expires_at = ends
    await session.flush()
    await _audit(
        session,
        principal,
        "service_account.rotate",
        account,
        {"new_key": row.id, "previous_keys": [k.id for k in previous], "until": ends.isoformat()},
    )
    return row, full, previous


async def delete(session: AsyncSession, *, principal: Principal, org_ref: str, name: str) -> None:
    account = await get_account(session, principal=principal, org_ref=org_ref, name=name)
    revoked = await key_lineage.revoke_membership_keys(
        session, org_id=account.org_id, user_id=account.user_id
    )
    for held in (MembershipRow, ProjectGrantRow):
        query = select(held).where(held.user_id == account.user_id)
        for row in list((await session.execute(query)).scalars()):
            await session.delete(row)
    await session.delete(account)
    await _audit(session, principal, "service_account.delete", account, {"keys_revoked": revoked})


async def get_account(
    session: AsyncSession, *, principal: Principal, org_ref: str, name: str
) -> ServiceAccountRow:
    org = await _managed_org(session, principal, org_ref)
    account = await _find(session, org.id, name)
    if account is None:
        raise NotFoundError("service account not found")
    if account.project_id is not None:
        check_project(principal, account.project_id)
    elif principal.project_id is not None:
        raise NotFoundError("service account not found")
    if not can_grant(principal.scopes, role=Role(account.role)):
        raise PermissionDeniedError("you cannot manage an account above your own role")
    return account


async def _mint(
    session: AsyncSession,
    principal: Principal,
    account: ServiceAccountRow,
    request: ServiceAccountKeyRequest,
) -> tuple[ApiKeyRow, str]:
    now = utcnow()
    expires = _expiry(account, request, now)
    key_id, secret, full = new_api_key()
    row = ApiKeyRow(
        id=key_id,
        secret_hash=hash_secret(secret),
        name=request.name or f"{account.name} key",
        user_id=account.user_id,
        created_by=principal.user_id,
        parent_key_id=None,  # bounded by the account, not by whoever issued it
        org_id=account.org_id,
        project_id=account.project_id,
        role=account.role,
        scopes=sorted(scopes_of(Role(account.role))),
        expires_at=expires,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    await _audit(session, principal, "service_account.key", account, {"key": key_id})
    return row, full


def _expiry(
    account: ServiceAccountRow, request: ServiceAccountKeyRequest, now: datetime
) -> datetime | None:
    wanted = now + timedelta(days=request.expires_in_days) if request.expires_in_days else None
    if account.expires_at is None:
        return wanted
    return min(wanted, account.expires_at) if wanted else account.expires_at


async def _managed_org(
    session: AsyncSession, principal: Principal, org_ref: str
) -> OrganisationRow:
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.MANAGE)
    return org


async def _find(session: AsyncSession, org_id: str, name: str) -> ServiceAccountRow | None:
    query = select(ServiceAccountRow).where(
        ServiceAccountRow.org_id == org_id, ServiceAccountRow.name == name
    )
    return (await session.execute(query)).scalar_one_or_none()


async def _keys(session: AsyncSession, account: ServiceAccountRow) -> list[ApiKeyRow]:
    query = select(ApiKeyRow).where(ApiKeyRow.user_id == account.user_id)
    return list((await session.execute(query.order_by(ApiKeyRow.created_at))).scalars())


async def _audit(
    session: AsyncSession,
    principal: Principal,
    action: str,
    account: ServiceAccountRow,
    extra: dict[str, object] | None = None,
) -> None:
    await record(
        session,
        actor=actor_of(principal),
        action=action,
        org_id=account.org_id,
        target_type="service_account",
        target_id=account.user_id,
        details={"name": account.name, "role": account.role, **(extra or {})},
    )
