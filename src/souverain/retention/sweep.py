"""The retention sweep, run by the controller: for every organisation with a window, remove
what is older, one bounded chunk per short transaction, each kind in turn.

Objects leave their stores only after the transaction that forgot them commits. Audit
events are reduced to stubs only in sealed segments, and the chain is sealed again at once,
so the `retention.audit` event that vouches for the stubs is itself sealed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.db.data_controls import DataControlsRow
from souverain.db.tables import utcnow
from souverain.evidence import audit_log
from souverain.retention import removals
from souverain.retention.removals import Removed, StoredObject
from souverain.storage.stores import StoreError, store_from_uri

Chunk = Callable[..., Awaitable[Removed]]
KINDS: tuple[tuple[str, str, Chunk], ...] = (
    ("files", "files_days", removals.files),
    ("batch_outputs", "batch_outputs_days", removals.batch_outputs),
    ("checkpoints", "fine_tuning_days", removals.checkpoints),
    ("usage_records", "usage_days", removals.usage_records),
    ("audit_events", "audit_days", removals.audit_events),
)


@dataclass
class Swept:
    """How much each kind lost in one sweep."""

    counts: dict[str, int] = field(default_factory=lambda: {kind: 0 for kind, _, _ in KINDS})


class RetentionSweep:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        signing_key: Ed25519PrivateKey | None,
        chunk: int = 200,
    ) -> None:
        self._sessions = sessions
        self._signing_key = signing_key
        self._chunk = chunk

    async def run_once(self, *, now: datetime | None = None) -> Swept:
        now = now or utcnow()
        async with self._sessions() as session:
            everyone = list((await session.execute(select(DataControlsRow))).scalars())
        swept = Swept()
        for controls in everyone:
            for kind, window, chunk in KINDS:
                days = getattr(controls, window)
                if days is None or (kind == "audit_events" and self._signing_key is None):
                    continue  # stubs need a seal to vouch for them
                cutoff = now - timedelta(days=days)
                swept.counts[kind] += await self._drain(chunk, controls.org_id, cutoff)
        return swept

    async def _drain(self, chunk: Chunk, org_id: str, cutoff: datetime) -> int:
        """Chunks until one comes back short: each committed, then its objects deleted."""
        total = 0
        while True:
            async with self._sessions.begin() as session:
                removed = await chunk(session, org_id=org_id, cutoff=cutoff, limit=self._chunk)
            await delete_objects(removed.objects)
            if chunk is removals.audit_events and removed.count:
                await self._seal()
            total += removed.count
            if removed.count < self._chunk:
                return total

    async def _seal(self) -> None:
        assert self._signing_key is not None
        async with self._sessions.begin() as session:
            await audit_log.seal(session, signing_key=self._signing_key)


async def delete_objects(objects: list[StoredObject]) -> None:
    for found in objects:
        with contextlib.suppress(StoreError, OSError):
            await store_from_uri(found.store_uri).delete(found.object_key)
