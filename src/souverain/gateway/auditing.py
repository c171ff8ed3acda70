"""Audit events that can come in floods are counted, then written one per window.

Failed authentications, denied changes and sovereignty refusals are each noted with a
subject (a key id, a model) and a reason; every `window_s` one event per (action,
organisation, subject, reason) is appended with its count and the window, so a flood of
bad keys costs at most a few rows a minute. Distinct subjects are capped; beyond the cap
they are counted under "other".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.db.tables import utcnow
from souverain.evidence.audit import SYSTEM_SERVER, record, timestamp

log = logging.getLogger(__name__)

Key = tuple[str, str | None, str, str]  # action, org id, subject, reason


class AuditTrail:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, window_s: float = 60.0, cap: int = 1000
    ) -> None:
        self._sessions = sessions
        self._window_s = window_s
        self._cap = cap
        self._counts: Counter[Key] = Counter()
        self._since: datetime = utcnow()

    def note(
        self, action: str, *, reason: str, subject: str | None = None, org_id: str | None = None
    ) -> None:
        key: Key = (action, org_id, subject or "-", reason[:200])
        if key not in self._counts and len(self._counts) >= self._cap:
            key = (action, None, "other", "other")
        self._counts[key] += 1

    async def flush(self) -> int:
        counts, since, now = self._counts, self._since, utcnow()
        self._counts, self._since = Counter(), now
        if not counts:
            return 0
        try:
            await self._write(counts, since, now)
        except Exception:
            self._counts.update(counts)  # keep them for the next window
            self._since = since
            raise
        return len(counts)

    async def _write(self, counts: Counter[Key], since: datetime, now: datetime) -> None:
        async with self._sessions.begin() as session:
            for (action, org_id, subject, reason), count in sorted(counts.items(), key=str):
                await record(
                    session,
                    actor=SYSTEM_SERVER,
                    action=action,
                    org_id=org_id,
                    target_type="subject",
                    target_id=subject,
                    outcome="denied",
                    details={
                        "count": count,
                        "reason": reason,
                        "from": timestamp(since),
                        "to": timestamp(now),
                    },
                    now=now,
                )

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._window_s)
            try:
                await self.flush()
            except Exception:
                log.exception(
                    "writing aggregated audit events failed; they are kept for the next window"
                )
