"""Nodes as Ray last reported them. The controller writes; operators read.

A live node the controller refuses work (`core/node_identity.py`: a label its certificate
does not bind it to, a certificate about to end, a clock off) shows why, and each change of
that verdict is audited (`node.refused`, `node.trusted`)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_operator
from souverain.core.fleet import ObservedNode
from souverain.core.node_identity import NOT_MEASURED
from souverain.core.principal import Principal
from souverain.db.tables import NodeRow, utcnow
from souverain.evidence.audit import SYSTEM_CONTROLLER, record


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
        await _judged(session, row, node.refusal if node.alive else None)
    for row in existing.values():
        row.alive = False
    await session.flush()


async def _judged(session: AsyncSession, row: NodeRow, refusal: str | None) -> None:
    """Record the node's verdict; audit it when its kind changed (not each new clock
    reading), leaving out the moments a new node waits for its clock to be read."""
    before, after = _kind(row.refusal), _kind(refusal)
    row.refusal = refusal
    if after != before and after != NOT_MEASURED and (after or before not in ("", NOT_MEASURED)):
        await record(
            session,
            actor=SYSTEM_CONTROLLER,
            action="node.refused" if refusal else "node.trusted",
            target_type="node",
            target_id=row.id,
            outcome="denied" if refusal else "success",
            details={"address": row.address, "datacenter": row.datacenter_id,
                     "reason": refusal or ""},
        )  # fmt: skip


def _kind(refusal: str | None) -> str:
    return (refusal or "").partition(" (")[0]
