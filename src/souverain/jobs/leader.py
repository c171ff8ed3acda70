"""The leader lease: one active controller per installation (the one `Lease`, on the
`leases` table, where the token is the holder's name)."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.db.jobs import LeaseRow
from souverain.db.tables import utcnow
from souverain.jobs.lease import Lease

LEADER_LEASE = "controller"


def leader_lease(ttl_s: float) -> Lease:
    return Lease(LeaseRow.name, LeaseRow.holder, LeaseRow.expires_at, ttl_s, clear_token=False)


async def try_acquire(
    sessions: async_sessionmaker[AsyncSession],
    *,
    holder: str,
    ttl_s: float,
    name: str = LEADER_LEASE,
    now: datetime | None = None,
) -> bool:
    """Take or renew the lease. True when `holder` holds it until now + ttl."""
    now = now or utcnow()
    lease = leader_lease(ttl_s)
    async with sessions.begin() as session:
        if await lease.claim(session, name, token=holder, now=now):
            return True
        if await session.get(LeaseRow, name) is not None:
            return False
    try:  # the first controller of the installation
        async with sessions.begin() as session:
            session.add(
                LeaseRow(name=name, holder=holder, expires_at=now + timedelta(seconds=ttl_s))
            )
        return True
    except IntegrityError:
        return False


async def release(
    sessions: async_sessionmaker[AsyncSession], *, holder: str, name: str = LEADER_LEASE
) -> None:
    await leader_lease(0).let_go(sessions, name, holder)
