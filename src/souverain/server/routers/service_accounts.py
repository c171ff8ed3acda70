"""Service accounts of an organisation: non-human principals that own keys."""

from __future__ import annotations

from fastapi import APIRouter, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.roles import Role
from souverain.core.schemas.identity import (
    ServiceAccount,
    ServiceAccountCreateRequest,
    ServiceAccountKey,
    ServiceAccountKeyIssued,
    ServiceAccountKeyRequest,
    ServiceAccountRotateRequest,
)
from souverain.db.identity import ServiceAccountRow
from souverain.db.tables import ApiKeyRow, ProjectRow
from souverain.identity import service_accounts
from souverain.server.deps import PrincipalDep, SessionDep

router = APIRouter(prefix="/api/orgs/{org}/service-accounts", tags=["service accounts"])


async def _out(
    session: AsyncSession, account: ServiceAccountRow, keys: list[ApiKeyRow]
) -> ServiceAccount:
    project = await session.get(ProjectRow, account.project_id) if account.project_id else None
    return ServiceAccount(
        id=account.user_id,
        name=account.name,
        org_id=account.org_id,
        project=project.name if project else None,
        role=Role(account.role),
        description=account.description,
        expires_at=account.expires_at,
        created_at=account.created_at,
        keys=[ServiceAccountKey.model_validate(k) for k in keys],
    )


@router.post("", response_model=ServiceAccount, status_code=status.HTTP_201_CREATED)
async def create_account(
    org: str, body: ServiceAccountCreateRequest, principal: PrincipalDep, session: SessionDep
) -> ServiceAccount:
    """A non-human principal with a role in the organisation (or in one project), an
    optional expiry, and keys of its own. You grant it at most the role you hold."""
    account = await service_accounts.create(session, principal=principal, org_ref=org, request=body)
    await session.commit()
    return await _out(session, account, [])


@router.get("", response_model=list[ServiceAccount])
async def list_accounts(
    org: str, principal: PrincipalDep, session: SessionDep
) -> list[ServiceAccount]:
    """The organisation's service accounts and their keys (never their secrets)."""
    found = await service_accounts.list_accounts(session, principal=principal, org_ref=org)
    return [await _out(session, account, keys) for account, keys in found]


@router.post(
    "/{name}/keys", response_model=ServiceAccountKeyIssued, status_code=status.HTTP_201_CREATED
)
async def issue_key(
    org: str,
    name: str,
    body: ServiceAccountKeyRequest,
    principal: PrincipalDep,
    session: SessionDep,
) -> ServiceAccountKeyIssued:
    """A key of the account, shown once; it ends no later than the account."""
    row, full = await service_accounts.issue_key(
        session, principal=principal, org_ref=org, name=name, request=body
    )
    await session.commit()
    return ServiceAccountKeyIssued(**ServiceAccountKey.model_validate(row).model_dump(), key=full)


@router.post(
    "/{name}/keys/rotate",
    response_model=ServiceAccountKeyIssued,
    status_code=status.HTTP_201_CREATED,
)
async def rotate_keys(
    org: str,
    name: str,
    body: ServiceAccountRotateRequest,
    principal: PrincipalDep,
    session: SessionDep,
) -> ServiceAccountKeyIssued:
    """A new key; the account's other keys keep working for `overlap_hours`, then end."""
    row, full, previous = await service_accounts.rotate(
        session, principal=principal, org_ref=org, name=name, request=body
    )
    await session.commit()
    return ServiceAccountKeyIssued(
        **ServiceAccountKey.model_validate(row).model_dump(),
        key=full,
        previous=[ServiceAccountKey.model_validate(k) for k in previous],
    )


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_account(
    org: str, name: str, principal: PrincipalDep, session: SessionDep
) -> Response:
    """Remove the account: every key of it stops at once."""
    await service_accounts.delete(session, principal=principal, org_ref=org, name=name)
    await session.commit()
    return Response(status_code=204)
