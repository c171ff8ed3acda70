"""Identity providers, configured by the operator: one or more per organisation, whose
people sign in only through them, and the platform's own for its operators.

The client secret is sealed (`identity/sealing.py`) and never leaves the server: listings
show the issuer, the client id and the redirect URI to register, nothing else.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_operator, check_org
from souverain.core.errors import ConflictError, NotFoundError
from souverain.core.ids import new_id
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.schemas.identity import ProviderCreateRequest
from souverain.db.identity import IdentityProviderRow, SsoSessionRow, UserIdentityRow
from souverain.db.tables import ConsoleSessionRow, utcnow
from souverain.evidence.audit import actor_of, record
from souverain.identity import oidc
from souverain.identity.sealing import seal, unseal
from souverain.tenancy import orgs


def _purpose(provider_id: str) -> str:
    return f"client-secret:{provider_id}"


async def add_provider(
    session: AsyncSession,
    *,
    principal: Principal,
    request: ProviderCreateRequest,
    master_key: bytes,
) -> IdentityProviderRow:
    check_operator(principal)
    org_id = None
    if request.org is not None:
        org_id = (await orgs.get_org(session, principal=principal, ref=request.org)).id
    oidc.check_endpoint(request.issuer)
    taken = select(IdentityProviderRow.id).where(
        IdentityProviderRow.name == request.name, _org_is(org_id)
    )
    if (await session.execute(taken)).first() is not None:
        raise ConflictError(f"a provider named '{request.name}' exists there", param="name")
    provider_id = new_id("idp")
    row = IdentityProviderRow(
        id=provider_id,
        org_id=org_id,
        name=request.name,
        issuer=request.issuer,
        client_id=request.client_id,
        client_secret=seal(master_key, request.client_secret, purpose=_purpose(provider_id)),
        scopes=request.scopes if "openid" in request.scopes.split() else f"openid {request.scopes}",
        username_claim=request.username_claim,
        groups_claim=request.groups_claim,
    )
    session.add(row)
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="identity_provider.create",
        org_id=org_id,
        target_type="identity_provider",
        target_id=provider_id,
        details={"name": row.name, "issuer": row.issuer, "client_id": row.client_id},
    )
    return row


async def list_providers(
    session: AsyncSession, *, principal: Principal, org_ref: str | None = None
) -> list[IdentityProviderRow]:
    """Operators see every provider; an organisation's managers see their own."""
    query = select(IdentityProviderRow).order_by(IdentityProviderRow.created_at)
    if org_ref is not None:
        org = await orgs.get_org(session, principal=principal, ref=org_ref)
        check_org(principal, org.id, Scope.MANAGE)
        query = query.where(IdentityProviderRow.org_id == org.id)
    else:
        check_operator(principal)
    return list((await session.execute(query)).scalars())


async def delete_provider(session: AsyncSession, *, principal: Principal, provider_id: str) -> None:
    """Its people's identities go with it; their console sessions opened through it end."""
    check_operator(principal)
    row = await session.get(IdentityProviderRow, provider_id)
    if row is None:
        raise NotFoundError("identity provider not found")
    opened_through = (
        select(SsoSessionRow.session_id)
        .join(UserIdentityRow, UserIdentityRow.id == SsoSessionRow.identity_id)
        .where(UserIdentityRow.provider_id == row.id)
    )
    await session.execute(
        update(ConsoleSessionRow)
        .where(ConsoleSessionRow.id.in_(opened_through), ConsoleSessionRow.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    await session.delete(row)
    await record(
        session,
        actor=actor_of(principal),
        action="identity_provider.delete",
        org_id=row.org_id,
        target_type="identity_provider",
        target_id=row.id,
        details={"name": row.name, "issuer": row.issuer},
    )


async def find_for_sign_in(
    session: AsyncSession, *, org_name: str | None, name: str | None
) -> IdentityProviderRow | None:
    """The provider a sign-in goes through: the organisation's (by name when it has
    several), or with no organisation the operators'."""
    query = select(IdentityProviderRow).order_by(IdentityProviderRow.created_at)
    if org_name:
        org = await orgs.find_org(session, ref=org_name)
        if org is None:
            return None
        query = query.where(IdentityProviderRow.org_id == org.id)
    else:
        query = query.where(IdentityProviderRow.org_id.is_(None))
    if name:
        query = query.where(IdentityProviderRow.name == name)
    return (await session.execute(query.limit(1))).scalar_one_or_none()


def client_of(row: IdentityProviderRow, master_key: bytes) -> oidc.Client:
    return oidc.Client(
        issuer=row.issuer,
        client_id=row.client_id,
        client_secret=unseal(master_key, row.client_secret, purpose=_purpose(row.id)),
        scopes=row.scopes,
    )


def _org_is(org_id: str | None) -> ColumnElement[bool]:
    column = IdentityProviderRow.org_id
    return column.is_(None) if org_id is None else column == org_id
