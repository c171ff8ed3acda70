"""Authentication: from a bearer string to a `Principal`.

Lookups are cached for at most `key_cache_ttl_s` (≤ 5 s), so a revocation, an expiry or
a demotion is seen by every server process within that time without a database round
trip on every request.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.errors import AuthenticationError
from souverain.core.ids import parse_api_key, secret_matches
from souverain.core.principal import Principal
from souverain.core.roles import Role, Scope, effective_scopes
from souverain.db.tables import ApiKeyRow, OrganisationRow, UserRow, utcnow
from souverain.tenancy import memberships, projects

_INVALID = "Incorrect API key provided. Keys look like sk-souv-<id>_<secret>."
MAX_LINEAGE = 64  # keys minted by keys minted by …: deeper chains are refused


async def authenticate(
    session: AsyncSession, *, token: str, now: datetime | None = None
) -> Principal:
    parsed = parse_api_key(token)
    if parsed is None:
        raise AuthenticationError(_INVALID)
    key_id, secret = parsed
    row = await session.get(ApiKeyRow, key_id)
    if row is None or not secret_matches(secret, row.secret_hash):
        raise AuthenticationError(_INVALID)
    return await principal_of(session, row=row, now=now)


async def principal_for_key(
    session: AsyncSession, *, key_id: str, now: datetime | None = None
) -> Principal:
    """The principal of a stored key, checked as if it had just been presented: how work
    done later on a key's behalf (a batch) keeps exactly that key's rights, no more, and
    stops when the key is revoked, expires or loses its membership."""
    row = await session.get(ApiKeyRow, key_id)
    if row is None:
        raise AuthenticationError(_INVALID)
    return await principal_of(session, row=row, now=now)


async def principal_of(
    session: AsyncSession, *, row: ApiKeyRow, now: datetime | None = None
) -> Principal:
    now = now or utcnow()
    if row.revoked_at is not None:
        raise AuthenticationError("This API key has been revoked.")
    if row.expires_at is not None and row.expires_at <= now:
        raise AuthenticationError("This API key has expired.")
    user = await session.get(UserRow, row.user_id)
    if user is None:
        raise AuthenticationError(_INVALID)
    holder = await memberships.held_scopes(
        session, org_id=row.org_id, user=user, project_id=row.project_id, now=now
    )
    if holder is None:
        raise AuthenticationError(
            "The user of this API key is no longer a member of its organisation."
        )
    if row.org_id is not None and await session.get(OrganisationRow, row.org_id) is None:
        raise AuthenticationError(_INVALID)
    limits = await lineage_limits(session, row=row, now=now)
    role = Role(row.role)
    # never more urgent than its project: a batch project's keys are batch keys
    inherited = await projects.priority_of(session, org_id=row.org_id, project_id=row.project_id)
    return Principal(
        key_id=row.id,
        user_id=user.id,
        user_name=user.name,
        org_id=row.org_id,
        project_id=row.project_id,
        role=role,
        scopes=effective_scopes(role, frozenset(Scope(s) for s in row.scopes), holder),
        expires_at=row.expires_at,
        rpm=row.rpm,
        tpm=row.tpm,
        lineage_limits=limits,
        service_account=user.kind == "service",
        priority=projects.priority_in_effect(row.priority, inherited),
    )


async def lineage_limits(
    session: AsyncSession, *, row: ApiKeyRow, now: datetime
) -> tuple[tuple[str, int | None, int | None], ...]:
    """Walk up the keys that minted this one: any of them revoked or expired makes this
    key invalid too (revocation cascades even for keys minted before a cascade was
    written), and each one's rate limits apply to this key as well."""
    limits: list[tuple[str, int | None, int | None]] = []
    current: ApiKeyRow | None = row
    for _ in range(MAX_LINEAGE):
        if current is None:
            return tuple(limits)
        if current is not row and current.revoked_at is not None:
            raise AuthenticationError("This API key has been revoked (a key above it was).")
        if current.expires_at is not None and current.expires_at <= now:
            raise AuthenticationError("This API key has expired.")
        if current.rpm is not None or current.tpm is not None:
            limits.append((current.id, current.rpm, current.tpm))
        if current.parent_key_id is None:
            return tuple(limits)
        current = await session.get(ApiKeyRow, current.parent_key_id)
    raise AuthenticationError(_INVALID)


class KeyCache:
    """A short-lived cache of authentication outcomes, successes and failures alike."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        ttl_s: float,
        max_entries: int = 50_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sessions = sessions
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[str, tuple[float, Principal | AuthenticationError]] = {}

    async def authenticate(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        hit = self._entries.get(digest)
        if hit is None or hit[0] <= now:
            hit = (now + self._ttl_s, await self._lookup(token))
            if len(self._entries) >= self._max_entries:
                self._entries.clear()
            self._entries[digest] = hit
        outcome = hit[1]
        if isinstance(outcome, AuthenticationError):
            raise AuthenticationError(outcome.message)
        if outcome.expires_at is not None and outcome.expires_at <= utcnow():
            raise AuthenticationError("This API key has expired.")
        return outcome

    async def _lookup(self, token: str) -> Principal | AuthenticationError:
        async with self._sessions() as session:
            try:
                return await authenticate(session, token=token)
            except AuthenticationError as error:
                return error

    def clear(self) -> None:
        self._entries.clear()
