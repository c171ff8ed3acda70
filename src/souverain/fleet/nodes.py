"""Nodes as Ray last reported them. The controller writes; operators read."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_operator
from souverain.core.fleet import ObservedNode
from souverain.core.principal import Principal
from souverain.db.tables import NodeRow, utcnow


async def list_nodes(session: AsyncSession, *, principal: Principal) -> list[NodeRow]:
    check_operator(principal)
    return list(
        (
            await session.execute(select(NodeRow).order_by(NodeRow.datacenter_id, NodeRow.id))
        ).scalars()
    )


async def sync_nodes(session: AsyncSession, *, observed: Sequence[ObservedNode]) -> None:
    """Mirror Ray's view: upsert what is seen; mark the rest dead."""
    now = utcnow()
    existing = {row.id: row for row in (await session.execute(select(NodeRow))).scalars()}
    for node in observed:
        row = existing.pop(node.id, None)
        if row is None:
            row = NodeRow(id=node.id)
            session.add(row)
        row.datacenter_id = node.datacenter_id
        row.address = node.address
        row.alive = node.alive
        row.resources = node.resources
        row.available = node.available
        row.labels = node.labels
        row.last_seen = now
    for row in existing.values():
        row.alive = False
    await session.flush()
