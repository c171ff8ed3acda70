"""The audit log: who did what, to what, with which outcome; hash-chained and sealed.

Every mutation writes its event in the same transaction as the change itself, so if the
event cannot be written the change does not happen (fail-closed). Appends take the chain
head's row lock, so concurrent writers, in any number of server processes, form one chain.
Details never hold secrets or prompt content.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.audit import event_hash
from souverain.core.errors import ServiceUnavailableError
from souverain.core.principal import Principal
from souverain.db.audit import AuditEventRow, AuditHeadRow, AuditOrgHeadRow
from souverain.db.tables import utcnow


@dataclass(frozen=True)
class Actor:
    type: str  # key | service_account | provider | directory | system | anonymous
    id: str | None = None  # user id, or the system component
    key_id: str | None = None


SYSTEM_CONTROLLER = Actor("system", "controller")
SYSTEM_SERVER = Actor("system", "server")


def actor_of(principal: Principal) -> Actor:
    kind = "service_account" if principal.service_account else "key"
    return Actor(kind, principal.user_id, principal.key_id)


def timestamp(moment: datetime) -> str:
    """Fixed-width UTC ISO 8601, so text order is time order."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def record(
    session: AsyncSession,
    *,
    actor: Actor,
    action: str,
    org_id: str | None = None,
    target_type: str | None = None,
    target_id: str | None = None,
    outcome: str = "success",
    details: dict[str, Any] | None = None,
    now: datetime | None = None,
) -> int:
    """Append one event to the chain, in the caller's transaction. Returns its seq."""
    claimed = await session.execute(
        update(AuditHeadRow).where(AuditHeadRow.id == 1).values(last_seq=AuditHeadRow.last_seq + 1)
    )
    if not claimed.rowcount:  # type: ignore[attr-defined]
        # Fail closed: without its audit event, the change must not happen.
        raise ServiceUnavailableError("The audit log cannot be written; nothing was changed.")

    seq, prev_hash = (
        await session.execute(
            select(AuditHeadRow.last_seq, AuditHeadRow.last_hash).where(AuditHeadRow.id == 1)
        )
    ).one()
    event = {
        "seq": int(seq),
        "time": timestamp(now or utcnow()),
        "actor_type": actor.type,
        "actor_id": actor.id,
        "actor_key_id": actor.key_id,
        "org_id": org_id,
        "action": action,
        "target_type": target_type,
        "target_id": target_id,
        "outcome": outcome,
        "details": json.dumps(
            details or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ),
        "prev_hash": prev_hash,
    }
    event["hash"] = event_hash(event)
    org_seq = await _next_org_seq(session, org_id) if org_id is not None else None
    session.add(AuditEventRow(**event, org_seq=org_seq))
    await session.execute(
        update(AuditHeadRow).where(AuditHeadRow.id == 1).values(last_hash=event["hash"])
    )
    await session.flush()
    return int(seq)


async def _next_org_seq(session: AsyncSession, org_id: str) -> int:
    """The organisation's next event number. The chain head's lock, taken first, already
    serialises appends, so the insert of a first counter cannot race."""
    bumped = await session.execute(
        update(AuditOrgHeadRow)
        .where(AuditOrgHeadRow.org_id == org_id)
        .values(last_seq=AuditOrgHeadRow.last_seq + 1)
    )
    if not bumped.rowcount:  # type: ignore[attr-defined]
        session.add(AuditOrgHeadRow(org_id=org_id, last_seq=1))
        await session.flush()
        return 1
    return int(
        (
            await session.execute(
                select(AuditOrgHeadRow.last_seq).where(AuditOrgHeadRow.org_id == org_id)
            )
        ).scalar_one()
    )
