"""Revocation that reaches every key below the revoked one."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.db.tables import ApiKeyRow, utcnow


async def revoke_lineage(session: AsyncSession, *, key: ApiKeyRow) -> int:
    """Revoke `key` and every key minted below it; returns how many descendants."""
    now = utcnow()
    key.revoked_at = now
    frontier, descendants = [key.id], 0
    while frontier:
        children = list(
            (
                await session.execute(
                    select(ApiKeyRow).where(ApiKeyRow.parent_key_id.in_(frontier))
                )
            ).scalars()
        )
        for child in children:
            if child.revoked_at is None:
                child.revoked_at = now
                descendants += 1
        frontier = [child.id for child in children]
    await session.flush()
    return descendants


async def revoke_membership_keys(session: AsyncSession, *, org_id: str, user_id: str) -> int:
    """A removed member's keys in that organisation, and everything they minted."""
    query = select(ApiKeyRow).where(
        ApiKeyRow.org_id == org_id, ApiKeyRow.user_id == user_id, ApiKeyRow.revoked_at.is_(None)
    )
    revoked = 0
    for key in list((await session.execute(query)).scalars()):
        if key.revoked_at is None:
            revoked += 1 + await revoke_lineage(session, key=key)
    return revoked
