"""Single sign-on's configuration: identity providers (the operator's), group mappings
(an organisation's owner's; the platform's are the operators'), SCIM tokens (the owner's)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from souverain.core.roles import Role
from souverain.core.schemas.identity import (
    GroupMappingLineOut,
    GroupMappings,
    GroupMappingsRequest,
    IdentityProvider,
    ProviderCreateRequest,
    ScimToken,
    ScimTokenCreated,
    ScimTokenCreateRequest,
)
from souverain.db.identity import IdentityProviderRow
from souverain.gateway.state import AppState
from souverain.identity import mappings, providers
from souverain.identity.scim import tokens as scim_tokens
from souverain.server.deps import PrincipalDep, SessionDep, StateDep
from souverain.server.routers.sso import redirect_uri

router = APIRouter(prefix="/api", tags=["identity"])


def _provider(
    row: IdentityProviderRow, request: Request, state: AppState, org: str | None
) -> IdentityProvider:
    base = (state.settings.public_url or str(request.base_url)).rstrip("/")
    sign_in = f"{base}/console/sso/start" + (f"?org={org}" if org else "")
    return IdentityProvider(
        id=row.id,
        org_id=row.org_id,
        name=row.name,
        issuer=row.issuer,
        client_id=row.client_id,
        scopes=row.scopes,
        username_claim=row.username_claim,
        groups_claim=row.groups_claim,
        created_at=row.created_at,
        redirect_uri=redirect_uri(request, state),
        sign_in_url=sign_in,
    )


@router.post(
    "/identity-providers", response_model=IdentityProvider, status_code=status.HTTP_201_CREATED
)
async def add_provider(
    body: ProviderCreateRequest,
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    state: StateDep,
) -> IdentityProvider:
    """Operators: let an organisation's people (or, without `org`, the platform's operators)
    sign in to the console with this OpenID provider. Register the answer's `redirect_uri`
    at the provider. The client secret is sealed and never shown again."""
    row = await providers.add_provider(
        session, principal=principal, request=body, master_key=state.master_key
    )
    await session.commit()
    return _provider(row, request, state, body.org)


@router.get("/identity-providers", response_model=list[IdentityProvider])
async def list_providers(
    request: Request, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> list[IdentityProvider]:
    """Operators: every identity provider."""
    rows = await providers.list_providers(session, principal=principal)
    return [_provider(row, request, state, None) for row in rows]


@router.get("/orgs/{org}/identity-providers", response_model=list[IdentityProvider])
async def list_org_providers(
    org: str, request: Request, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> list[IdentityProvider]:
    """The organisation's providers (its managers): where its people sign in."""
    rows = await providers.list_providers(session, principal=principal, org_ref=org)
    return [_provider(row, request, state, org) for row in rows]


@router.delete("/identity-providers/{provider_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_provider(
    provider_id: str, principal: PrincipalDep, session: SessionDep
) -> Response:
    """Operators: remove a provider; accounts at it can no longer sign in."""
    await providers.delete_provider(session, principal=principal, provider_id=provider_id)
    await session.commit()
    return Response(status_code=204)


async def _mappings(session: SessionDep, principal: PrincipalDep, org: str | None) -> GroupMappings:
    found, source, rows = await mappings.read_mappings(session, principal=principal, org_ref=org)
    lines = [
        GroupMappingLineOut(group=r.group, role=Role(r.role), project=name) for r, name in rows
    ]
    return GroupMappings(org=found.name if found else None, group_source=source, lines=lines)


@router.get("/orgs/{org}/group-mappings", response_model=GroupMappings)
async def read_org_mappings(
    org: str, principal: PrincipalDep, session: SessionDep
) -> GroupMappings:
    """Which of the directory's groups give which role (its managers)."""
    return await _mappings(session, principal, org)


@router.put("/orgs/{org}/group-mappings", response_model=GroupMappings)
async def replace_org_mappings(
    org: str, body: GroupMappingsRequest, principal: PrincipalDep, session: SessionDep
) -> GroupMappings:
    """The owner's: replace the whole mapping. A role can be given for the organisation or
    for one project; nobody is given a role the owner does not hold, nor `operator`. People
    are re-evaluated at their next sign-in or session refresh (SCIM groups: at once)."""
    await mappings.replace_mappings(session, principal=principal, org_ref=org, request=body)
    await session.commit()
    return await _mappings(session, principal, org)


@router.get("/operators/group-mappings", response_model=GroupMappings)
async def read_platform_mappings(principal: PrincipalDep, session: SessionDep) -> GroupMappings:
    """Operators: which groups of the operators' provider make operators."""
    return await _mappings(session, principal, None)


@router.put("/operators/group-mappings", response_model=GroupMappings)
async def replace_platform_mappings(
    body: GroupMappingsRequest, principal: PrincipalDep, session: SessionDep
) -> GroupMappings:
    """Operators: replace the platform's mapping (its only role is `operator`)."""
    await mappings.replace_mappings(session, principal=principal, org_ref=None, request=body)
    await session.commit()
    return await _mappings(session, principal, None)


@router.post(
    "/orgs/{org}/scim-tokens", response_model=ScimTokenCreated, status_code=status.HTTP_201_CREATED
)
async def create_scim_token(
    org: str,
    body: ScimTokenCreateRequest,
    request: Request,
    principal: PrincipalDep,
    session: SessionDep,
    state: StateDep,
) -> ScimTokenCreated:
    """The owner's: a bearer token for the organisation's directory to provision users and
    groups by SCIM 2.0. Shown once."""
    row, token = await scim_tokens.create_token(
        session, principal=principal, org_ref=org, name=body.name
    )
    await session.commit()
    base = (state.settings.public_url or str(request.base_url)).rstrip("/")
    return ScimTokenCreated(
        **ScimToken.model_validate(row).model_dump(), token=token, base_url=f"{base}/scim/v2"
    )


@router.get("/orgs/{org}/scim-tokens", response_model=list[ScimToken])
async def list_scim_tokens(
    org: str, principal: PrincipalDep, session: SessionDep
) -> list[ScimToken]:
    """The organisation's SCIM tokens (never their secrets)."""
    rows = await scim_tokens.list_tokens(session, principal=principal, org_ref=org)
    return [ScimToken.model_validate(row) for row in rows]


@router.delete("/orgs/{org}/scim-tokens/{token_id}", response_model=ScimToken)
async def revoke_scim_token(
    org: str, token_id: str, principal: PrincipalDep, session: SessionDep
) -> ScimToken:
    """The owner's: the directory can no longer provision with this token."""
    row = await scim_tokens.revoke_token(
        session, principal=principal, org_ref=org, token_id=token_id
    )
    await session.commit()
    return ScimToken.model_validate(row)
