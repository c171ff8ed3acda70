"""One lease for all long work: claim, renew by heartbeat, release, fenced by a token.

A lease is two columns of the row it guards: a token (who holds it) and an expiry. A
holder claims a row that is free (no token, or an expired one), renews it while it works,
and writes its results only through `fence`, an `UPDATE … WHERE key AND token`: if the
lease expired and another holder took the row, the fence matches nothing and the whole
write-back is dropped (`LeaseLost`). The leader election, deployments, fine-tuning jobs and
batches all use this one class, each naming its table's columns.

The token is a fencing token in Kleppmann's sense ("How to do distributed locking", 2016):
a holder paused past its expiry cannot write, because its token no longer matches.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import InstrumentedAttribute

from souverain.db.tables import utcnow

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """Another holder owns the row now; what this holder meant to write is dropped."""


def new_token() -> str:
    return secrets.token_hex(8)


@dataclass(frozen=True)
class Lease:
    """The lease of rows of one table: `key`, `token` and `expires` are its columns."""

    key: InstrumentedAttribute[Any]
    token: InstrumentedAttribute[Any]
    expires: InstrumentedAttribute[Any]
    ttl_s: float
    clear_token: bool = True  # False where the token column names the last holder

    @property
    def table(self) -> Any:
        return self.key.class_

    def free(self, now: datetime) -> ColumnElement[bool]:
        """The rows nobody holds (a filter for finding work)."""
        return or_(self.token.is_(None), self.expires < now)

    async def claim(
        self, session: AsyncSession, key: str, *, token: str, now: datetime | None = None
    ) -> bool:
        """Take the row if it is free (or renew it, if `token` holds it already)."""
        now = now or utcnow()
        taken = await session.execute(
            update(self.table)
            .where(self.key == key, or_(self.free(now), self.token == token))
            .values({self.token: token, self.expires: now + timedelta(seconds=self.ttl_s)})
        )
        return bool(taken.rowcount)  # type: ignore[attr-defined]

    async def renew(self, session: AsyncSession, key: str, *, token: str) -> bool:
        """Push the expiry back; False when `token` no longer holds the row."""
        kept = await session.execute(
            update(self.table)
            .where(self.key == key, self.token == token)
            .values({self.expires: utcnow() + timedelta(seconds=self.ttl_s)})
        )
        return bool(kept.rowcount)  # type: ignore[attr-defined]

    async def fence(
        self, session: AsyncSession, key: str, *, token: str, release: bool = False, **values: Any
    ) -> None:
        """Start a write-back: `UPDATE … WHERE key AND token`, writing `values` (and letting
        the row go if `release`), or raise LeaseLost. On PostgreSQL the update also locks
        the row until the transaction ends; on SQLite it takes the write lock."""
        changes: dict[Any, Any] = {self.table.__table__.c[k]: v for k, v in values.items()}
        changes |= self._vacated() if release else {self.expires: self._expiry()}
        owned = await session.execute(
            update(self.table).where(self.key == key, self.token == token).values(changes)
        )
        if not owned.rowcount:  # type: ignore[attr-defined]
            raise LeaseLost(key)

    async def check(self, session: AsyncSession, key: str, *, token: str) -> None:
        """LeaseLost unless `token` still holds the row (a read, for read-only rounds)."""
        held = await session.scalar(select(self.token).where(self.key == key))
        if held != token:
            raise LeaseLost(key)

    async def release(self, session: AsyncSession, key: str, *, token: str) -> None:
        await session.execute(
            update(self.table).where(self.key == key, self.token == token).values(self._vacated())
        )

    def _expiry(self) -> datetime:
        return utcnow() + timedelta(seconds=self.ttl_s)

    def _vacated(self) -> dict[Any, Any]:
        if self.clear_token:
            return {self.token: None, self.expires: None}
        return {self.expires: utcnow() - timedelta(seconds=1)}

    # The same, each in a transaction of its own.

    async def take(self, sessions: async_sessionmaker[AsyncSession], key: str) -> str | None:
        """Claim the row with a new token; the token, or None if someone holds it."""
        token = new_token()
        async with sessions.begin() as session:
            return token if await self.claim(session, key, token=token) else None

    async def let_go(
        self, sessions: async_sessionmaker[AsyncSession], key: str, token: str
    ) -> None:
        async with sessions.begin() as session:
            await self.release(session, key, token=token)

    async def heartbeat(
        self,
        sessions: async_sessionmaker[AsyncSession],
        key: str,
        token: str,
        work: asyncio.Task[Any],
    ) -> bool:
        """Renew every third of the lease's life while `work` runs; if the lease cannot be
        renewed (taken, or the database unreachable), cancel `work` at once. True when the
        lease was held until `work` ended."""
        while not work.done():
            await asyncio.wait({work}, timeout=self.ttl_s / 3)
            if work.done():
                break
            try:
                async with sessions.begin() as session:
                    kept = await self.renew(session, key, token=token)
            except Exception:
                log.exception("the lease on %s could not be renewed", key)
                kept = False
            if not kept:
                work.cancel()
                await asyncio.wait({work})
                return False
        return True
