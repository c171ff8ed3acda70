"""The cycle every kind of long work follows: load → process → apply.

    load     one transaction: claim the row's lease, read what the round needs (and write
             what must be fenced before any effect, e.g. a budget reservation)
    process  no transaction open: Ray, the network, the clock; returns an outcome value
    apply    one transaction that starts with the lease's fence (`UPDATE … WHERE key AND
             token`); if another holder took the row meanwhile, nothing of the round is
             written (LeaseLost)

The lease is let go at the end of the round, whatever happened. What must only happen
once the facts are committed (stopping an actor whose end was recorded, removing an
object whose row was forgotten) is the caller's, after `run_cycle` returns the outcome:
commit the fact, then act.

No database transaction is ever held across a Ray or network call, so on SQLite no writer
(usage settlement included) waits while an actor starts.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.jobs.lease import Lease, LeaseLost, new_token

log = logging.getLogger(__name__)

Loaded = TypeVar("Loaded")
Outcome = TypeVar("Outcome")


async def run_cycle(
    sessions: async_sessionmaker[AsyncSession],
    lease: Lease,
    key: str,
    *,
    load: Callable[[AsyncSession], Awaitable[Loaded | None]],
    process: Callable[[Loaded], Awaitable[Outcome]],
    apply: Callable[[AsyncSession, Loaded, Outcome], Awaitable[None]],
) -> tuple[Loaded, Outcome] | None:
    """One round on the row `key`; (loaded, outcome) once applied, None when the row was
    held by another, had nothing to do, or was taken over before the apply."""
    token = new_token()
    async with sessions.begin() as session:
        if not await lease.claim(session, key, token=token):
            return None
        loaded = await load(session)
    if loaded is None:
        await lease.let_go(sessions, key, token)
        return None
    try:
        outcome = await process(loaded)
        async with sessions.begin() as session:
            await lease.fence(session, key, token=token, release=True)
            await apply(session, loaded, outcome)
    except LeaseLost:
        log.warning("lost the lease on %s; dropping this round's writes", key)
        return None
    except BaseException:
        try:
            await lease.let_go(sessions, key, token)
        except Exception:  # the lease expires on its own; what ended the round goes on up
            log.exception("letting go of %s failed; its lease will expire", key)
        raise
    return loaded, outcome
