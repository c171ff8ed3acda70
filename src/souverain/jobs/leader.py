"""The leader lease: one active controller per installation."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.db.tables import LeaseRow, utcnow

LEADER_LEASE = "controller"


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
    expires = now + timedelta(seconds=ttl_s)
    async with sessions.begin() as session:
        result = await session.execute(
            update(LeaseRow)
            .where(LeaseRow.name == name, or_(LeaseRow.holder == holder, LeaseRow.expires_at < now))
            .values(holder=holder, expires_at=expires)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            return True
        if await session.get(LeaseRow, name) is not None:
            return False
    try:
        async with sessions.begin() as session:
            session.add(LeaseRow(name=name, holder=holder, expires_at=expires))
        return True
    except IntegrityError:
        return False


async def release(
    sessions: async_sessionmaker[AsyncSession], *, holder: str, name: str = LEADER_LEASE
) -> None:
    async with sessions.begin() as session:
        await session.execute(
            update(LeaseRow)
            .where(LeaseRow.name == name, LeaseRow.holder == holder)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
