"""Reading, sealing and pruning the audit log (writing is `evidence.audit`), and reducing
an organisation's old events to stubs under its retention window."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_operator, check_org, check_scope
from souverain.core.audit import REMOVAL, Verdict, removal_details, sign_seal, verify_chain
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.db.audit import AuditEventRow, AuditHeadRow, AuditSealRow
from souverain.db.tables import utcnow
from souverain.evidence.audit import SYSTEM_CONTROLLER, record, timestamp


def as_dict(row: AuditEventRow, *, tenant_view: bool = False) -> dict[str, Any]:
    """An event as operators see it, or (`tenant_view`) as its organisation does: numbered
    by `org_seq`, without the link to the previous event of the global chain, which may be
    another tenant's."""
    found = {
        "seq": row.seq,
        "time": row.time,
        "actor_type": row.actor_type,
        "actor_id": row.actor_id,
        "actor_key_id": row.actor_key_id,
        "org_id": row.org_id,
        "action": row.action,
        "target_type": row.target_type,
        "target_id": row.target_id,
        "outcome": row.outcome,
        "details": row.details,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }
    if row.redacted:
        found["redacted"] = True
    if tenant_view:
        found["seq"] = row.org_seq
        del found["prev_hash"]
    return found


@dataclass(frozen=True)
class AuditFilter:
    org_id: str | None = None  # resolved and checked by the caller
    since: datetime | None = None
    until: datetime | None = None
    action: str | None = None
    after_seq: int = 0
    limit: int = 1000


async def list_events(
    session: AsyncSession, *, principal: Principal, where: AuditFilter
) -> list[AuditEventRow]:
    """Auditors, admins and owners read their organisation's events; operators read all."""
    check_scope(principal, Scope.AUDIT)
    number = AuditEventRow.seq if principal.is_operator else AuditEventRow.org_seq
    query = select(AuditEventRow).where(number > where.after_seq, AuditEventRow.redacted.is_(False))
    if where.org_id is not None:
        check_org(principal, where.org_id, Scope.AUDIT)
        query = query.where(AuditEventRow.org_id == where.org_id)
    if not principal.is_operator:
        query = query.where(AuditEventRow.org_id == principal.org_id)
    if where.since is not None:
        query = query.where(AuditEventRow.time >= timestamp(_utc(where.since)))
    if where.until is not None:
        query = query.where(AuditEventRow.time < timestamp(_utc(where.until)))
    if where.action is not None:
        query = query.where(AuditEventRow.action == where.action)
    query = query.order_by(number).limit(where.limit)
    return list((await session.execute(query)).scalars())


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


async def chain(
    session: AsyncSession, *, principal: Principal, after_seq: int = 0, limit: int = 10_000
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """A page of the chain, every seal and the head's seq, for verification (operators)."""
    check_operator(principal)
    query = (
        select(AuditEventRow)
        .where(AuditEventRow.seq > after_seq)
        .order_by(AuditEventRow.seq)
        .limit(limit)
    )
    events = [as_dict(r) for r in (await session.execute(query)).scalars()]
    seals = [
        seal_dict(r)
        for r in (await session.execute(select(AuditSealRow).order_by(AuditSealRow.seq))).scalars()
    ]
    head = (
        await session.execute(select(AuditHeadRow.last_seq).where(AuditHeadRow.id == 1))
    ).scalar_one()
    return events, seals, int(head)


async def verify(
    session: AsyncSession, *, principal: Principal, public_key: Ed25519PublicKey
) -> Verdict:
    """The whole chain recomputed and every seal checked (operators): the verdict
    `souverain audit verify` reaches, here with the server's own key."""
    events: list[dict[str, Any]] = []
    after, page = 0, 10_000
    while True:
        found, seals, head = await chain(session, principal=principal, after_seq=after, limit=page)
        events += found
        if len(found) < page:
            return verify_chain(events, seals, public_key, head_seq=head)
        after = found[-1]["seq"]


def seal_dict(row: AuditSealRow) -> dict[str, Any]:
    return {
        "seq": row.seq,
        "hash": row.hash,
        "sealed_at": row.sealed_at,
        "signature": row.signature,
        "key_id": row.key_id,
    }


async def seal(
    session: AsyncSession, *, signing_key: Ed25519PrivateKey, now: datetime | None = None
) -> AuditSealRow | None:
    """Sign the chain head if events were added since the last seal."""
    seq, head_hash = (
        await session.execute(
            select(AuditHeadRow.last_seq, AuditHeadRow.last_hash).where(AuditHeadRow.id == 1)
        )
    ).one()
    last = (await session.execute(select(func.max(AuditSealRow.seq)))).scalar_one()
    if seq == 0 or (last is not None and last >= seq):
        return None
    sealed_at = timestamp(now or utcnow())
    signature, key = sign_seal(signing_key, int(seq), head_hash, sealed_at)
    row = AuditSealRow(
        seq=int(seq), hash=head_hash, sealed_at=sealed_at, signature=signature, key_id=key
    )
    session.add(row)
    await session.flush()
    return row


async def prune(session: AsyncSession, *, retention_days: int, now: datetime | None = None) -> int:
    """Delete events older than the retention period, whole sealed segments only: up to
    the last seal whose events are all older than the cut-off. The pruning is audited."""
    cutoff = timestamp((now or utcnow()) - timedelta(days=retention_days))
    first_young = (
        await session.execute(
            select(func.min(AuditEventRow.seq)).where(AuditEventRow.time >= cutoff)
        )
    ).scalar_one()
    query = select(AuditSealRow).order_by(AuditSealRow.seq.desc())
    if first_young is not None:
        query = query.where(AuditSealRow.seq < first_young)
    boundary = (await session.execute(query.limit(1))).scalars().first()
    if boundary is None:
        return 0
    result = await session.execute(delete(AuditEventRow).where(AuditEventRow.seq <= boundary.seq))
    pruned = int(result.rowcount)  # type: ignore[attr-defined]
    if pruned:
        await record(
            session,
            actor=SYSTEM_CONTROLLER,
            action="audit.prune",
            details={
                "through_seq": boundary.seq,
                "events": pruned,
                "retention_days": retention_days,
            },
            now=now,
        )
    return pruned


STUB = {
    "actor_type": "", "actor_id": None, "actor_key_id": None, "action": "",
    "target_type": None, "target_id": None, "outcome": "", "details": "", "redacted": True,
}  # fmt: skip


async def redact(
    session: AsyncSession, *, org_id: str, before: datetime, limit: int, now: datetime | None = None
) -> int:
    """Reduce up to `limit` of the organisation's events older than `before` to stubs, in
    sealed segments only, and record what was removed (`retention.audit`, never itself
    removed: it vouches for the stubs). The caller seals the chain after committing."""
    sealed = (await session.execute(select(func.max(AuditSealRow.seq)))).scalar_one()
    if sealed is None:
        return 0
    cutoff = timestamp(before)
    chosen = (
        select(AuditEventRow.seq)
        .where(
            AuditEventRow.org_id == org_id,
            AuditEventRow.seq <= sealed,
            AuditEventRow.time < cutoff,
            AuditEventRow.redacted.is_(False),
            AuditEventRow.action != REMOVAL,
        )
        .order_by(AuditEventRow.seq)
        .limit(limit)
    )
    seqs = list((await session.execute(chosen)).scalars())
    if not seqs:
        return 0
    await session.execute(update(AuditEventRow).where(AuditEventRow.seq.in_(seqs)).values(**STUB))
    details = removal_details(before=cutoff, through_seq=max(seqs), events=len(seqs))
    await record(
        session, actor=SYSTEM_CONTROLLER, action=REMOVAL, org_id=org_id,
        target_type="organisation", target_id=org_id, details=details, now=now,
    )  # fmt: skip
    return len(seqs)
