"""Console sessions opened by single sign-on, and how they follow the directory.

A session opened through a provider keeps the provider's refresh token (sealed). Every
`refresh_s` while the session is used, one server (whichever claims the row first) asks the
provider for a fresh ID token and re-reads the person's groups: removed from a group, they
are demoted at that moment; refused by the provider (account disabled, grant revoked), or
left with no role, the session ends. A provider that does not answer is asked again; after
a second interval without an answer the session ends (fail closed). A session without a
refresh token lasts one interval, then the person signs in again (which re-reads them too).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.errors import AuthenticationError, ServiceUnavailableError
from souverain.db.identity import IdentityProviderRow, SsoSessionRow, UserIdentityRow
from souverain.db.tables import ConsoleSessionRow, ProjectRow, utcnow
from souverain.evidence.audit import SYSTEM_SERVER, actor_of, record
from souverain.identity import people, providers, signin
from souverain.identity.oidc import IdTokenRefused, OidcClient
from souverain.identity.sealing import seal, unseal
from souverain.tenancy import console_sessions
from souverain.tenancy.auth import principal_for_key

CLAIM_FOR = timedelta(seconds=30)  # one server refreshes a session at a time


def _purpose(session_id: str) -> str:
    return f"refresh-token:{session_id}"


@dataclass(frozen=True)
class SsoSettings:
    master_key: bytes
    max_age_s: int
    refresh_s: int


async def open_sso_session(
    session: AsyncSession,
    *,
    provider: IdentityProviderRow,
    claims: dict[str, Any],
    refresh_token: str | None,
    project_ref: str | None,
    settings: SsoSettings,
    client: str | None,
    now: datetime | None = None,
) -> console_sessions.Opened:
    """Sign someone in whose ID token was just checked: their standing, their sign-in key,
    a console session on it. Raises IdTokenRefused when the mapping gives them nothing."""
    now = now or utcnow()
    identity = await people.find_identity(session, provider_id=provider.id, subject=claims["sub"])
    standing = await signin.evaluate(
        session, provider=provider, identity=identity, claims=claims, project_ref=project_ref
    )
    standing.identity.last_signin_at = now
    key = await signin.signin_key(session, standing=standing, org_id=provider.org_id, now=now)
    principal = await principal_for_key(session, key_id=key.id, now=now)
    opened = await console_sessions.open_session(
        session, principal=principal, max_age_s=settings.max_age_s, client=client, now=now
    )
    _remember(
        session,
        session_id=opened.cookie.partition(".")[0],
        standing=standing,
        refresh_token=refresh_token,
        settings=settings,
        now=now,
    )
    await record(
        session,
        actor=actor_of(principal),
        action="identity.signin",
        org_id=provider.org_id,
        target_type="identity_provider",
        target_id=provider.id,
        details={
            "provider": provider.name,
            "subject": claims["sub"],
            "role": standing.role,
            "project_id": standing.project_id,
        },
        now=now,
    )
    return opened


def _remember(
    session: AsyncSession,
    *,
    session_id: str,
    standing: signin.Standing,
    refresh_token: str | None,
    settings: SsoSettings,
    now: datetime,
) -> None:
    """What the session needs to follow the provider: the identity and its refresh token."""
    sealed = None
    if refresh_token:
        sealed = seal(settings.master_key, refresh_token, purpose=_purpose(session_id))
    session.add(
        SsoSessionRow(
            session_id=session_id,
            identity_id=standing.identity.id,
            project_id=standing.project_id,
            refresh_token=sealed,
            refresh_at=now + timedelta(seconds=settings.refresh_s),
        )
    )


async def is_due(session: AsyncSession, *, session_id: str, now: datetime | None = None) -> bool:
    """One primary-key read per console request: is this an SSO session due a refresh?"""
    query = select(SsoSessionRow.refresh_at).where(SsoSessionRow.session_id == session_id)
    refresh_at = (await session.execute(query)).scalar_one_or_none()
    return refresh_at is not None and refresh_at <= (now or utcnow())


async def claim_refresh(
    session: AsyncSession, *, session_id: str, now: datetime
) -> SsoSessionRow | None:
    """The session's SSO row when its refresh is due and this server won it."""
    won = await session.execute(
        update(SsoSessionRow)
        .where(
            SsoSessionRow.session_id == session_id,
            SsoSessionRow.refresh_at <= now,
            (SsoSessionRow.claimed_until.is_(None)) | (SsoSessionRow.claimed_until < now),
        )
        .values(claimed_until=now + CLAIM_FOR)
    )
    if not won.rowcount:  # type: ignore[attr-defined]
        return None
    return await session.get(SsoSessionRow, session_id)


async def refresh_if_due(
    sessions: async_sessionmaker[AsyncSession],
    oidc: OidcClient,
    settings: SsoSettings,
    *,
    session_id: str,
    now: datetime | None = None,
) -> None:
    """Re-read the person's groups when it is time (see the module docstring). Network
    calls happen between transactions, never inside one."""
    now = now or utcnow()
    async with sessions.begin() as session:
        if await claim_refresh(session, session_id=session_id, now=now) is None:
            return
        row, identity, provider = await _parts(session, session_id)
        if row is None or identity is None or provider is None:
            await end(session, session_id=session_id, reason="provider_removed", now=now)
            return
        client = providers.client_of(provider, settings.master_key)
        sealed, refresh_at, project_id = row.refresh_token, row.refresh_at, row.project_id
        subject, issuer = identity.subject, provider.issuer
    try:
        if sealed is None:
            raise IdTokenRefused("no_refresh_token")
        token = unseal(settings.master_key, sealed, purpose=_purpose(session_id))
        discovery = await oidc.discover(issuer)
        tokens = await oidc.refresh(discovery, client, token)
        claims = await oidc.verify(
            tokens.id_token, discovery=discovery, client_id=client.client_id, nonce=None
        )
        if claims.get("sub") != subject:
            raise IdTokenRefused("wrong_subject")
    except ServiceUnavailableError:
        if now >= refresh_at + timedelta(seconds=settings.refresh_s):
            async with sessions.begin() as session:
                await end(session, session_id=session_id, reason="provider_unreachable", now=now)
        return
    except AuthenticationError as error:
        reason = error.reason if isinstance(error, IdTokenRefused) else "refused"
        async with sessions.begin() as session:
            await end(session, session_id=session_id, reason=reason, now=now)
        return
    await _apply_refresh(
        sessions, settings, session_id=session_id, claims=claims, tokens_refresh=tokens.refresh_token,
        project_id=project_id, now=now,
    )  # fmt: skip


async def _apply_refresh(
    sessions: async_sessionmaker[AsyncSession],
    settings: SsoSettings,
    *,
    session_id: str,
    claims: dict[str, Any],
    tokens_refresh: str | None,
    project_id: str | None,
    now: datetime,
) -> None:
    async with sessions.begin() as session:
        row, identity, provider = await _parts(session, session_id)
        if row is None or identity is None or provider is None:
            return
        try:
            project = await _project_name(session, project_id)
            standing = await signin.evaluate(
                session, provider=provider, identity=identity, claims=claims, project_ref=project
            )
        except IdTokenRefused as refused:
            await end(session, session_id=session_id, reason=refused.reason, now=now)
            return
        if standing.project_id != project_id:
            await end(session, session_id=session_id, reason="scope_changed", now=now)
            return
        await signin.signin_key(session, standing=standing, org_id=provider.org_id, now=now)
        if tokens_refresh:
            row.refresh_token = seal(
                settings.master_key, tokens_refresh, purpose=_purpose(session_id)
            )
        row.refresh_at = now + timedelta(seconds=settings.refresh_s)
        row.claimed_until = None


async def _project_name(session: AsyncSession, project_id: str | None) -> str | None:
    if project_id is None:
        return None
    project = await session.get(ProjectRow, project_id)
    return project.name if project else None


async def end(session: AsyncSession, *, session_id: str, reason: str, now: datetime) -> None:
    """The directory has spoken: the session stops on every server at once."""
    console = await session.get(ConsoleSessionRow, session_id)
    if console is None or console.revoked_at is not None:
        return
    await session.execute(
        update(ConsoleSessionRow).where(ConsoleSessionRow.id == session_id).values(revoked_at=now)
    )
    _, _, provider = await _parts(session, session_id)
    await record(
        session,
        actor=signin.provider_actor(provider) if provider else SYSTEM_SERVER,
        action="identity.session_ended",
        org_id=provider.org_id if provider else None,
        target_type="console_session",
        target_id=session_id,
        details={"reason": reason},
        now=now,
    )


async def _parts(
    session: AsyncSession, session_id: str
) -> tuple[SsoSessionRow | None, UserIdentityRow | None, IdentityProviderRow | None]:
    row = await session.get(SsoSessionRow, session_id)
    if row is None:
        return None, None, None
    identity = await session.get(UserIdentityRow, row.identity_id)
    if identity is None:
        return row, None, None
    return row, identity, await session.get(IdentityProviderRow, identity.provider_id)
