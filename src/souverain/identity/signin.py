"""Single sign-on to the console: the authorization code flow with PKCE.

    begin   a flow row (state hashed, bound to this browser by a cookie, a nonce, the PKCE
            verifier, where to return), then the browser goes to the provider
    take    the provider sends the browser back with `code` and `state`: the flow is found by
            its state, used once, and must belong to the browser presenting it
    (router) the code is exchanged with the verifier, the ID token checked (oidc.py), all
            outside any transaction
    open    the person's user (found, linked or created just in time), their roles from the
            group mapping, their sign-in key, and a console session like any other

A person signed in this way acts through a key of theirs that is never shown to anyone
(`SIGNIN_KEY`), one per organisation and project: keys they mint in the console hang from
it, and it follows their roles, so everything the platform checks for keys holds for them.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import InvalidRequestError, ServiceUnavailableError
from souverain.core.ids import hash_secret, new_api_key
from souverain.core.roles import Role, scopes_of
from souverain.db.identity import (
    DirectoryGroupRow,
    DirectoryMemberRow,
    DirectoryUserRow,
    IdentityProviderRow,
    ProjectGrantRow,
    SignInFlowRow,
    UserIdentityRow,
)
from souverain.db.tables import ApiKeyRow, ProjectRow, UserRow, utcnow
from souverain.evidence.audit import Actor, record
from souverain.identity import mappings, oidc, people
from souverain.identity.mappings import RANK, Grants
from souverain.identity.oidc import IdTokenRefused
from souverain.tenancy import memberships, projects

FLOW_TTL = timedelta(minutes=10)
MAX_PENDING_FLOWS = 10_000  # sign-ins in progress, all providers together
SIGNIN_KEY = "console sign-in (single sign-on)"
RETURN_TO = re.compile(r"/console(?:#/[A-Za-z0-9/_.-]{0,150})?")


def check_return_to(value: str | None) -> str:
    """Where the browser goes after signing in: a page of this console, nothing else (no
    other host, no scheme, no `//`, no path outside /console)."""
    if not value:
        return "/console"
    if not RETURN_TO.fullmatch(value) or "//" in value:
        raise InvalidRequestError("return_to must be a page of the console", param="return_to")
    return value


@dataclass(frozen=True)
class Begun:
    url: str  # the provider's authorization URL
    browser: str  # the flow cookie's value: binds the flow to this browser


async def begin(
    session: AsyncSession,
    *,
    provider: IdentityProviderRow,
    discovery: oidc.Discovery,
    client: oidc.Client,
    redirect_uri: str,
    return_to: str,
    project: str | None,
    now: datetime | None = None,
) -> Begun:
    now = now or utcnow()
    await session.execute(delete(SignInFlowRow).where(SignInFlowRow.expires_at <= now))
    pending = (await session.execute(select(func.count()).select_from(SignInFlowRow))).scalar_one()
    if pending >= MAX_PENDING_FLOWS:
        raise ServiceUnavailableError("Too many sign-ins are in progress; try again shortly.")
    state, browser, nonce = (secrets.token_urlsafe(32) for _ in range(3))
    verifier, challenge = oidc.pkce_pair()
    session.add(
        SignInFlowRow(
            state_hash=hash_secret(state),
            browser_hash=hash_secret(browser),
            provider_id=provider.id,
            nonce=nonce,
            verifier=verifier,
            project=project,
            return_to=return_to,
            expires_at=now + FLOW_TTL,
        )
    )
    url = oidc.authorization_url(
        discovery,
        client,
        redirect_uri=redirect_uri,
        state=state,
        nonce=nonce,
        challenge=challenge,
    )
    return Begun(url=url, browser=browser)


Flow = SignInFlowRow


async def take(session: AsyncSession, *, state: str) -> Flow:
    """The flow this callback finishes, used up whatever happens next: a state is good
    for one callback only."""
    flow = await session.get(SignInFlowRow, hash_secret(state)) if state else None
    if flow is None:
        raise IdTokenRefused("unknown_state", "This sign-in is unknown or was already used.")
    await session.delete(flow)
    await session.flush()
    return flow


def check_flow(flow: Flow, *, browser: str | None, now: datetime | None = None) -> None:
    """The flow belongs to the browser presenting it (no login CSRF) and is not too old."""
    if browser is None or not secrets.compare_digest(hash_secret(browser), flow.browser_hash):
        raise IdTokenRefused("state_mismatch", "This sign-in was begun in another browser.")
    if flow.expires_at <= (now or utcnow()):
        raise IdTokenRefused("flow_expired", "This sign-in took too long; begin again.")


@dataclass(frozen=True)
class Standing:
    """Where someone signs in to, once the mapping has spoken: a role in the organisation
    (project None) or in one project."""

    identity: UserIdentityRow
    user: UserRow
    role: Role
    project_id: str | None


def provider_actor(provider: IdentityProviderRow) -> Actor:
    return Actor("provider", provider.id)  # an identity provider, through the mapping


async def evaluate(
    session: AsyncSession,
    *,
    provider: IdentityProviderRow,
    identity: UserIdentityRow | None,
    claims: dict[str, Any],
    project_ref: str | None,
) -> Standing:
    """Re-read someone's groups, make their memberships agree, and say where they stand.
    Raises IdTokenRefused("no_role") when the mapping leaves them nothing (a first sign-in
    then creates nothing at all)."""
    token_groups = people.groups_of(claims, provider.groups_claim)
    groups = await _groups(
        session, provider=provider, identity=identity, token=token_groups, claims=claims
    )
    grants = mappings.grants_for(groups, await mappings.load_lines(session, org_id=provider.org_id))
    if identity is None:
        if grants.is_empty():
            raise IdTokenRefused("no_role", "Your groups give you no role here.")
        name = people.user_name_of(claims, provider)
        identity = await people.link_identity(
            session, provider=provider, subject=claims["sub"], name=name
        )
    identity.groups = token_groups
    user = await session.get(UserRow, identity.user_id)
    assert user is not None  # identities cascade with their user
    if provider.org_id is None:
        role = await _operator_role(session, provider=provider, user=user, grants=grants)
        return Standing(identity=identity, user=user, role=role, project_id=None)
    entry = await people.directory_entry(session, org_id=provider.org_id, user=user, claims=claims)
    if not entry.active:
        raise IdTokenRefused("deactivated", "Your account is deactivated in the directory.")
    await people.apply_grants(
        session, org_id=provider.org_id, user=user, grants=grants, actor=provider_actor(provider)
    )
    role, project_id = await _org_standing(
        session, org_id=provider.org_id, user=user, project_ref=project_ref
    )
    return Standing(identity=identity, user=user, role=role, project_id=project_id)


async def _groups(
    session: AsyncSession,
    *,
    provider: IdentityProviderRow,
    identity: UserIdentityRow | None,
    token: list[str],
    claims: dict[str, Any],
) -> list[str]:
    """The person's groups: the token's claim, or (group source `scim`) the groups their
    directory entry is in — found by their user, or at a first sign-in by their name."""
    if await mappings.group_source(session, org_id=provider.org_id) == "token":
        return token
    if provider.org_id is None:
        return []
    query = (
        select(DirectoryGroupRow.display_name)
        .join(DirectoryMemberRow, DirectoryMemberRow.group_id == DirectoryGroupRow.id)
        .join(DirectoryUserRow, DirectoryUserRow.id == DirectoryMemberRow.member_id)
        .where(DirectoryUserRow.org_id == provider.org_id)
    )
    if identity is not None:
        query = query.where(DirectoryUserRow.user_id == identity.user_id)
    else:
        query = query.where(DirectoryUserRow.user_name == people.user_name_of(claims, provider))
    return list((await session.execute(query)).scalars())


async def _operator_role(
    session: AsyncSession, *, provider: IdentityProviderRow, user: UserRow, grants: Grants
) -> Role:
    if user.is_operator != grants.operator:
        user.is_operator = grants.operator
        await record(
            session,
            actor=provider_actor(provider),
            action="operator.directory",
            target_type="user",
            target_id=user.id,
            details={"user": user.name, "operator": grants.operator},
        )
    if not grants.operator:
        raise IdTokenRefused("no_role", "Your groups do not make you an operator.")
    return Role.OPERATOR


async def _org_standing(
    session: AsyncSession, *, org_id: str, user: UserRow, project_ref: str | None
) -> tuple[Role, str | None]:
    membership = await memberships.find_membership(session, org_id=org_id, user_id=user.id)
    org_role = Role(membership.role) if membership is not None else None
    query = (
        select(ProjectGrantRow.project_id, ProjectGrantRow.role, ProjectRow.name)
        .join(ProjectRow, ProjectRow.id == ProjectGrantRow.project_id)
        .where(ProjectGrantRow.org_id == org_id, ProjectGrantRow.user_id == user.id)
    )
    grants = {pid: (Role(role), name) for pid, role, name in (await session.execute(query)).all()}
    if project_ref is not None:
        project = await projects.find_project(session, org_id=org_id, ref=project_ref)
        granted = grants.get(project.id) if project is not None else None
        role = _best(org_role, granted[0] if granted else None)
        if project is None or role is None:
            raise IdTokenRefused("no_role", "You hold no role in that project.")
        return role, project.id
    if org_role is not None:
        return org_role, None
    ranked = sorted(grants.items(), key=lambda item: (-RANK[item[1][0]], item[1][1]))
    if not ranked:
        raise IdTokenRefused("no_role", "Your groups give you no role here.")
    project_id, (role, _) = ranked[0]
    return role, project_id


def _best(a: Role | None, b: Role | None) -> Role | None:
    if a is None or b is None:
        return a or b
    return mappings.higher(a, b)


async def signin_key(
    session: AsyncSession,
    *,
    standing: Standing,
    org_id: str | None,
    now: datetime | None = None,
) -> ApiKeyRow:
    """The person's own key for console sessions where they stand: its secret is thrown
    away at once (it cannot be presented), its role follows the mapping."""
    query = select(ApiKeyRow).where(
        ApiKeyRow.user_id == standing.user.id,
        ApiKeyRow.name == SIGNIN_KEY,
        ApiKeyRow.revoked_at.is_(None),
        ApiKeyRow.parent_key_id.is_(None),
        ApiKeyRow.org_id.is_(None) if org_id is None else ApiKeyRow.org_id == org_id,
        ApiKeyRow.project_id.is_(None)
        if standing.project_id is None
        else ApiKeyRow.project_id == standing.project_id,
    )
    key = (await session.execute(query)).scalars().first()
    if key is None:
        key_id, secret, _ = new_api_key()
        key = ApiKeyRow(
            id=key_id,
            secret_hash=hashlib.sha256(secrets.token_bytes(32) + secret.encode()).hexdigest(),
            name=SIGNIN_KEY,
            user_id=standing.user.id,
            created_by=standing.user.id,
            org_id=org_id,
            project_id=standing.project_id,
            role=standing.role,
            scopes=sorted(scopes_of(standing.role)),
            created_at=now or utcnow(),
        )
        session.add(key)
    else:
        key.role = standing.role
        key.scopes = sorted(scopes_of(standing.role))
    await session.flush()
    return key
