"""Console sessions: an API key exchanged once for a cookie.

The browser never keeps the key. Sign-in presents it, the server checks it like any
bearer and stores only the key's id and a SHA-256 of a fresh session secret; the browser
gets `<session id>.<secret>` in an HttpOnly cookie. Every request on the cookie is checked
as if the key had just been presented again (revoked, expired, demoted, member removed →
signed out at once), and the session itself ends after `idle_s` without a request, after
`max_age_s` in all, or at sign-out. Changes also need the CSRF token, an HMAC of the
session secret that the page's script holds in memory and sends as a header: a cookie
alone, even one a browser attaches to a forged request, changes nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, update
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import AuthenticationError
from souverain.core.ids import hash_secret, secret_matches
from souverain.core.principal import Principal
from souverain.db.tables import ConsoleSessionRow, utcnow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy.auth import principal_for_key

_ENDED = "Your console session has ended. Sign in again with an API key."
TOUCH_EVERY = timedelta(seconds=15)  # last_seen_at is written at most this often


@dataclass(frozen=True)
class Opened:
    cookie: str  # `<id>.<secret>`: the only place the secret exists
    csrf: str


async def open_session(
    session: AsyncSession,
    *,
    principal: Principal,
    max_age_s: int,
    client: str | None,
    now: datetime | None = None,
) -> Opened:
    now = now or utcnow()
    # Ended sessions are kept a day (for whoever looks at one), then forgotten.
    await session.execute(
        delete(ConsoleSessionRow).where(ConsoleSessionRow.expires_at < now - timedelta(days=1))
    )
    session_id = secrets.token_hex(12)
    secret = secrets.token_urlsafe(32)
    session.add(
        ConsoleSessionRow(
            id=session_id,
            secret_hash=hash_secret(secret),
            key_id=principal.key_id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + timedelta(seconds=max_age_s),
        )
    )
    await record(
        session,
        actor=actor_of(principal),
        action="console.signin",
        org_id=principal.org_id,
        target_type="console_session",
        target_id=session_id,
        details={"client": client} if client else None,
        now=now,
    )
    cookie = f"{session_id}.{secret}"
    return Opened(cookie=cookie, csrf=csrf_token(cookie))


async def resolve(
    session: AsyncSession, *, cookie: str, idle_s: int, now: datetime | None = None
) -> Principal:
    """The principal behind a session cookie, or AuthenticationError."""
    now = now or utcnow()
    row = await _find(session, cookie)
    if row is None or row.revoked_at is not None:
        raise AuthenticationError(_ENDED)
    if row.expires_at <= now or row.last_seen_at + timedelta(seconds=idle_s) <= now:
        raise AuthenticationError(_ENDED)
    principal = await principal_for_key(session, key_id=row.key_id, now=now)
    if now - row.last_seen_at >= TOUCH_EVERY:
        await session.execute(
            update(ConsoleSessionRow).where(ConsoleSessionRow.id == row.id).values(last_seen_at=now)
        )
    return principal


async def close_session(
    session: AsyncSession, *, cookie: str, principal: Principal, now: datetime | None = None
) -> bool:
    """Sign out: the cookie stops working on every server at once."""
    now = now or utcnow()
    row = await _find(session, cookie)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = now
    await record(
        session,
        actor=actor_of(principal),
        action="console.signout",
        org_id=principal.org_id,
        target_type="console_session",
        target_id=row.id,
        now=now,
    )
    return True


def csrf_token(cookie: str) -> str:
    _, _, secret = cookie.partition(".")
    return hmac.new(secret.encode(), b"souverain-console-csrf", hashlib.sha256).hexdigest()


def csrf_matches(cookie: str, token: str) -> bool:
    return bool(token) and hmac.compare_digest(csrf_token(cookie), token)


async def _find(session: AsyncSession, cookie: str) -> ConsoleSessionRow | None:
    session_id, dot, secret = cookie.partition(".")
    if not dot or len(session_id) != 24 or not secret or len(cookie) > 200:
        return None
    row = await session.get(ConsoleSessionRow, session_id)
    if row is None or not secret_matches(secret, row.secret_hash):
        return None
    return row
