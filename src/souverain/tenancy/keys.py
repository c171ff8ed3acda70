"""API keys: `sk-souv-<id>_<secret>`, only a SHA-256 of the secret is stored.

A new key never grants more than its creator holds: its role must be within the
creator's effective scopes and within the role of the user it is issued for; a key
restricted to a project can only mint keys for that project; it cannot outlive the key
that created it; the minting key is checked in the database, not the cache, so a key
revoked a millisecond ago mints nothing. A minted key remembers its parent: revoking a
key revokes every key below it, and a parent's rate limits bind its descendants too
(they share its buckets). Keys belong to a membership: removing a member revokes their
keys in that organisation, so re-adding them starts with none.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_org, check_scope
from souverain.core.errors import (
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
)
from souverain.core.ids import hash_secret, new_api_key
from souverain.core.principal import Principal
from souverain.core.roles import Role, Scope, can_grant, scopes_of
from souverain.core.schemas.tenancy import KeyCreateRequest
from souverain.db.tables import ApiKeyRow, UserRow, utcnow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import memberships, orgs, projects, users
from souverain.tenancy.auth import lineage_limits
from souverain.tenancy.key_lineage import revoke_lineage


async def create_key(
    session: AsyncSession,
    *,
    principal: Principal,
    request: KeyCreateRequest,
    now: datetime | None = None,
) -> tuple[ApiKeyRow, str]:
    """Return the stored row and the full key, which is never shown again."""
    now = now or utcnow()
    await _check_minter(session, principal=principal, now=now)
    org_id = await _target_org(session, principal=principal, request=request)
    user = await _target_user(session, principal=principal, request=request, org_id=org_id)
    project_id = await _target_project(session, principal=principal, request=request, org_id=org_id)
    held = await memberships.held_scopes(
        session, org_id=org_id, user=user, project_id=project_id, now=now
    )
    scopes = frozenset(request.scopes) if request.scopes is not None else scopes_of(request.role)
    if held is None or not can_grant(held, role=request.role, scopes=scopes):
        raise PermissionDeniedError(f"user '{user.name}' does not hold the '{request.role}' role")
    if not can_grant(principal.scopes, role=request.role, scopes=scopes):
        raise PermissionDeniedError(f"you cannot create a key with the '{request.role}' role")
    expires_at = _expiry(principal, request, now)
    key_id, secret, full = new_api_key()
    row = ApiKeyRow(
        id=key_id,
        secret_hash=hash_secret(secret),
        name=request.name,
        user_id=user.id,
        created_by=principal.user_id,
        parent_key_id=principal.key_id,
        org_id=org_id,
        project_id=project_id,
        role=request.role,
        scopes=sorted(scopes),
        priority="batch" if principal.priority == "batch" else request.priority,
        expires_at=expires_at,
        created_at=now,
    )
    session.add(row)
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="key.create",
        org_id=org_id,
        target_type="key",
        target_id=key_id,
        details={
            "user": user.name,
            "role": request.role,
            "scopes": sorted(scopes),
            "priority": row.priority,
            "project_id": project_id,
            "expires_at": expires_at.isoformat() if expires_at else None,
        },
    )
    return row, full


async def _check_minter(session: AsyncSession, *, principal: Principal, now: datetime) -> None:
    """The key asking to mint, as the database has it now (not as the cache remembers it)."""
    row = await session.get(ApiKeyRow, principal.key_id)
    if row is None or row.revoked_at is not None:
        raise AuthenticationError("This API key has been revoked.")
    if row.expires_at is not None and row.expires_at <= now:
        raise AuthenticationError("This API key has expired.")
    await lineage_limits(session, row=row, now=now)  # an ancestor revoked: refused too


async def _target_org(
    session: AsyncSession, *, principal: Principal, request: KeyCreateRequest
) -> str | None:
    if request.role == Role.OPERATOR:
        if request.org is not None:
            raise InvalidRequestError("operator keys belong to no organisation", param="org")
        return None
    ref = request.org or principal.org_id
    if ref is None:
        raise InvalidRequestError("name the organisation the key is for", param="org")
    org = await orgs.get_org(session, principal=principal, ref=ref)
    return org.id


async def _target_user(
    session: AsyncSession, *, principal: Principal, request: KeyCreateRequest, org_id: str | None
) -> UserRow:
    if request.user is None:
        return await users.get_user(session, user_id=principal.user_id)
    if org_id is not None:
        check_org(principal, org_id, Scope.MANAGE)
    else:
        check_scope(principal, Scope.PLATFORM)
    user = await users.find_user_by_name(session, name=request.user)
    if org_id is not None:
        # Only this organisation's members exist here: whether the name is a user
        # elsewhere on the platform is none of the caller's business.
        member = user and await memberships.find_membership(session, org_id=org_id, user_id=user.id)
        if not member:
            raise NotFoundError("no member of this organisation has that name", param="user")
    if user is None:
        raise NotFoundError("user not found", param="user")
    return user


async def _target_project(
    session: AsyncSession, *, principal: Principal, request: KeyCreateRequest, org_id: str | None
) -> str | None:
    if request.project is None:
        return principal.project_id
    if org_id is None:
        raise InvalidRequestError("operator keys belong to no project", param="project")
    project = await projects.get_project(
        session, principal=principal, org_id=org_id, ref=request.project
    )
    return project.id


def _expiry(principal: Principal, request: KeyCreateRequest, now: datetime) -> datetime | None:
    wanted = now + timedelta(days=request.expires_in_days) if request.expires_in_days else None
    limit = principal.expires_at
    if limit is None:
        return wanted
    if wanted is not None and wanted > limit:
        raise PermissionDeniedError("a key cannot outlive the key that creates it")
    return wanted or limit


async def list_keys(
    session: AsyncSession, *, principal: Principal, org_ref: str | None = None
) -> list[tuple[ApiKeyRow, UserRow]]:
    check_scope(principal, Scope.READ)
    query = select(ApiKeyRow, UserRow).join(UserRow, UserRow.id == ApiKeyRow.user_id)
    if org_ref is not None:
        org = await orgs.get_org(session, principal=principal, ref=org_ref)
        query = query.where(ApiKeyRow.org_id == org.id)
    if not principal.is_operator:
        query = query.where(ApiKeyRow.org_id == principal.org_id)
        if not principal.has(Scope.MANAGE):
            query = query.where(ApiKeyRow.user_id == principal.user_id)
        if principal.project_id is not None:
            query = query.where(ApiKeyRow.project_id == principal.project_id)
    query = query.order_by(ApiKeyRow.created_at)
    return [(k, u) for k, u in (await session.execute(query)).all()]


async def priorities_in_effect(
    session: AsyncSession, *, rows: Sequence[ApiKeyRow]
) -> dict[str, str]:
    """Each key's priority in effect, by key id, as authentication decides it: its own, or
    its project's (its organisation's default project's) when that is batch."""
    org_ids = {r.org_id for r in rows if r.org_id is not None}
    inherited = await projects.priorities_of(session, org_ids=org_ids) if org_ids else {}
    return {
        r.id: projects.priority_in_effect(
            r.priority,
            inherited.get(r.project_id or r.org_id, "interactive") if r.org_id else "interactive",
        )
        for r in rows
    }


async def revoke_key(session: AsyncSession, *, principal: Principal, key_id: str) -> ApiKeyRow:
    row = await session.get(ApiKeyRow, key_id)
    if row is None or not _can_see_key(principal, row):
        raise NotFoundError("key not found")
    if row.user_id != principal.user_id:
        if row.org_id is not None:
            check_org(principal, row.org_id, Scope.MANAGE)
        else:
            check_scope(principal, Scope.PLATFORM)
        if not can_grant(principal.scopes, role=Role(row.role)):
            raise PermissionDeniedError("you cannot revoke a key above your own role")
    if row.revoked_at is None:
        cascaded = await revoke_lineage(session, key=row)
        await record(
            session,
            actor=actor_of(principal),
            action="key.revoke",
            org_id=row.org_id,
            target_type="key",
            target_id=row.id,
            details={"descendants_revoked": cascaded},
        )
    return row


def _can_see_key(principal: Principal, row: ApiKeyRow) -> bool:
    if principal.is_operator:
        return True
    if row.org_id != principal.org_id:
        return False
    if principal.project_id is not None and row.project_id != principal.project_id:
        return False
    return row.user_id == principal.user_id or principal.has(Scope.MANAGE)


async def set_limits(
    session: AsyncSession, *, principal: Principal, key_id: str, rpm: int | None, tpm: int | None
) -> ApiKeyRow:
    """Rate limits of a key: set by whoever manages its organisation (or the operator),
    never by the key's own holder, since lifting a limit grants more."""
    row = await session.get(ApiKeyRow, key_id)
    if row is None or not _can_see_key(principal, row):
        raise NotFoundError("key not found")
    if row.org_id is None:
        check_scope(principal, Scope.PLATFORM)
    else:
        check_org(principal, row.org_id, Scope.MANAGE)
    row.rpm, row.tpm = rpm, tpm
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="key.limits",
        org_id=row.org_id,
        target_type="key",
        target_id=row.id,
        details={"rpm": rpm, "tpm": tpm},
    )
    return row
