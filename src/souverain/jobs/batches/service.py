"""Batch jobs: desired state in the database, one row per input line, claimed by a server's
batch runner with a lease token.

A batch is created `validating`; a runner checks its lines and writes one pending item per
line (`in_progress`); each line is answered once, its usage record settled and its result
kept (encrypted with the batch's own key) in one transaction, so a runner killed at any
point leaves every line either answered or pending, never both, never twice; the next
runner to claim the lease carries on. At the end the results become the output and error
files (`finalizing` → `completed`). Cancelling, expiry (the completion window) and
failures (a file that does not validate, a revoked key) end it too.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import ColumnElement, bindparam, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.access import Holding, check_scope, reach
from souverain.core.errors import ConflictError, InvalidRequestError, NotFoundError
from souverain.core.ids import new_id
from souverain.core.policy import check_may_keep
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.status import BATCH_ACTIVE, BATCH_ENDED
from souverain.db.jobs import BatchItemRow, BatchRow
from souverain.db.pages import Page, page_of
from souverain.db.tables import utcnow
from souverain.db.visibility import visible
from souverain.evidence import audit
from souverain.files import service as files
from souverain.gateway.file_lines import MAX_BATCH_LINES
from souverain.jobs.lease import Lease, LeaseLost
from souverain.sovereignty import policies
from souverain.storage.crypto import unwrap

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MAX_LINES = MAX_BATCH_LINES  # as OpenAI: a batch is at most 50,000 requests
CHUNK = 500  # lines written per transaction: no batch holds the database for long
ACTIVE = BATCH_ACTIVE
ENDED = BATCH_ENDED
MAX_WINDOW_H = 24 * 7


def line_record_id(batch_id: str, line: int) -> str:
    """The usage record of a line: the same on every attempt, so a line is metered once."""
    digest = hashlib.sha256(f"{batch_id}:{line}".encode()).hexdigest()[:16]
    return f"req_{digest}"


async def create_batch(
    session: AsyncSession,
    *,
    principal: Principal,
    shape: str,
    endpoint: str,
    input_file_ids: Sequence[str],
    model: str | None,
    metadata: dict[str, Any] | None,
    window_h: float,
    master_key: bytes,
    project_id: str | None,
) -> BatchRow:
    check_scope(principal, Scope.INFERENCE)
    if principal.org_id is None:
        raise InvalidRequestError("Batches belong to an organisation; use an organisation's key.")
    in_force = await policies.effective(session, org_id=principal.org_id, project_id=project_id)
    check_may_keep(in_force, "a batch", param="input_file_id")
    if endpoint not in ENDPOINTS:
        raise InvalidRequestError(
            f"endpoint must be one of {', '.join(ENDPOINTS)}", param="endpoint"
        )
    if not 1 <= window_h <= MAX_WINDOW_H:
        raise InvalidRequestError(f"the window must be 1 to {MAX_WINDOW_H} hours")
    lines = 0
    for file_id in input_file_ids:
        found = await files.get_file(session, principal=principal, file_id=file_id)
        if found.purpose != "batch":
            raise InvalidRequestError(
                f"File {file_id} was uploaded with purpose {found.purpose!r}, not 'batch'.",
                param="input_file_id",
            )
        lines += found.num_lines or 0
    if lines > MAX_LINES:
        raise InvalidRequestError(
            f"A batch holds at most {MAX_LINES} lines; these files have {lines}.",
            param="input_file_id",
        )
    batch_id = new_id("batch")
    kek = await files.organisation_kek(
        session, master_key=master_key, org_id=principal.org_id, create=True
    )
    _, wrapped = files.new_data_key(kek, batch_id)
    now = utcnow()
    row = BatchRow(
        id=batch_id, org_id=principal.org_id, project_id=project_id, key_id=principal.key_id,
        shape=shape, endpoint=endpoint, model=model, input_file_ids=list(input_file_ids),
        metadata_=metadata, status="validating", total=0, completed=0, failed=0, errors=[],
        wrapped_key=wrapped, created_at=now, deadline=now + timedelta(hours=window_h),
    )  # fmt: skip
    session.add(row)
    await audit.record(
        session, actor=audit.actor_of(principal), action="batch.create", org_id=row.org_id,
        target_type="batch", target_id=row.id,
        details={"endpoint": endpoint, "files": list(input_file_ids), "window_h": window_h},
    )  # fmt: skip
    return row


def _visible(principal: Principal) -> ColumnElement[bool]:
    """Batches are the tenant's data: their creator's, and the organisation's managers'."""
    check_scope(principal, Scope.INFERENCE)
    return visible(
        reach(principal, Holding.DATA),
        org=BatchRow.org_id,
        project=BatchRow.project_id,
        key=BatchRow.key_id,
    )


async def get_batch(session: AsyncSession, *, principal: Principal, batch_id: str) -> BatchRow:
    query = select(BatchRow).where(BatchRow.id == batch_id, _visible(principal))
    row = (await session.execute(query)).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"No such batch: {batch_id}", param="batch_id")
    return row


async def list_batches(
    session: AsyncSession, *, principal: Principal, limit: int, after: str | None
) -> Page[BatchRow]:
    query = select(BatchRow).where(_visible(principal))
    return await page_of(session, query, table=BatchRow, limit=limit, after=after)


async def cancel_batch(session: AsyncSession, *, principal: Principal, batch_id: str) -> BatchRow:
    row = await get_batch(session, principal=principal, batch_id=batch_id)
    if row.status in ENDED:
        raise ConflictError(f"The batch is already {row.status}.")
    if row.status != "cancelling":
        row.status, row.cancelling_at = "cancelling", utcnow()
        await audit.record(
            session, actor=audit.actor_of(principal), action="batch.cancel", org_id=row.org_id,
            target_type="batch", target_id=row.id,
        )  # fmt: skip
    return row


# The runner's side.


def batch_lease(lease_s: float) -> Lease:
    return Lease(BatchRow.id, BatchRow.lock_token, BatchRow.lock_expires_at, lease_s)


async def claim(
    sessions: async_sessionmaker[AsyncSession], *, lease_s: float, per_org: int
) -> tuple[str, str] | None:
    """Take the lease on one active batch nobody holds; (batch id, token) or None.

    Fair across organisations: the oldest claimable batch of the organisation holding the
    fewest leases now goes first, and an organisation already holding `per_org` leases
    (in any server) waits, so one tenant's batches never occupy every runner."""
    now, lease = utcnow(), batch_lease(lease_s)
    async with sessions() as session:
        leases = select(BatchRow.org_id, func.count()).where(_leased(now))
        held: dict[str, int] = {
            org: count for org, count in (await session.execute(leases.group_by(BatchRow.org_id)))
        }
        waiting = select(BatchRow.org_id, func.min(BatchRow.created_at)).where(_claimable(now))
        orgs = sorted(
            (held.get(org, 0), created, org)
            for org, created in await session.execute(waiting.group_by(BatchRow.org_id))
        )
        candidates = [
            await session.scalar(
                select(BatchRow.id)
                .where(_claimable(now), BatchRow.org_id == org)
                .order_by(BatchRow.created_at)
                .limit(1)
            )
            for holding, _, org in orgs[:10]
            if holding < per_org
        ]
    for batch_id in filter(None, candidates):
        token = await lease.take(sessions, batch_id)
        if token is not None:
            return batch_id, token
    return None


def _leased(now: datetime) -> ColumnElement[bool]:
    return (
        BatchRow.status.in_(ACTIVE)
        & BatchRow.lock_token.is_not(None)
        & (BatchRow.lock_expires_at >= now)
    )


def _claimable(now: datetime) -> ColumnElement[bool]:
    return (
        BatchRow.status.in_(ACTIVE)
        & batch_lease(0).free(now)
        & or_(
            BatchRow.not_before.is_(None),
            BatchRow.not_before <= now,
            BatchRow.status == "cancelling",  # a deferred batch ends at once
        )
    )


async def release(sessions: async_sessionmaker[AsyncSession], *, batch_id: str, token: str) -> None:
    await batch_lease(0).let_go(sessions, batch_id, token)


async def held(session: AsyncSession, *, batch_id: str, token: str) -> BatchRow:
    """The batch, if this runner still holds it (else LeaseLost: write nothing)."""
    await batch_lease(0).check(session, batch_id, token=token)
    row = await session.get(BatchRow, batch_id)
    if row is None:
        raise LeaseLost(batch_id)
    return row


async def add_items(session: AsyncSession, *, batch_id: str, items: list[tuple[int, str]]) -> None:
    if items:
        await session.execute(
            insert(BatchItemRow),
            [{"batch_id": batch_id, "line": line, "custom_id": custom_id, "status": "pending",
              "result": None} for line, custom_id in items],
        )  # fmt: skip


async def pending_lines(session: AsyncSession, *, batch_id: str) -> set[int]:
    query = select(BatchItemRow.line).where(
        BatchItemRow.batch_id == batch_id, BatchItemRow.status == "pending"
    )
    return set((await session.execute(query)).scalars())


async def first_pending(session: AsyncSession, *, batch_id: str, limit: int) -> list[int]:
    query = (
        select(BatchItemRow.line)
        .where(BatchItemRow.batch_id == batch_id, BatchItemRow.status == "pending")
        .order_by(BatchItemRow.line)
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


async def last_item(session: AsyncSession, *, batch_id: str) -> int:
    """The last line written so far (0: none), so validation resumes after it."""
    query = select(func.max(BatchItemRow.line)).where(BatchItemRow.batch_id == batch_id)
    return int((await session.execute(query)).scalar_one() or 0)


async def answer_line(
    session: AsyncSession, *, batch_id: str, line: int, ok: bool, sealed: str
) -> bool:
    """Keep a line's result once; False if it was already answered (nothing changes)."""
    done = await session.execute(
        update(BatchItemRow)
        .where(
            BatchItemRow.batch_id == batch_id,
            BatchItemRow.line == line,
            BatchItemRow.status == "pending",
        )
        .values(status="done" if ok else "failed", result=sealed)
    )
    if not done.rowcount:  # type: ignore[attr-defined]
        return False
    column = BatchRow.completed if ok else BatchRow.failed
    await session.execute(
        update(BatchRow).where(BatchRow.id == batch_id).values({column: column + 1})
    )
    return True


async def fail_lines(
    session: AsyncSession, *, batch_id: str, answers: Sequence[tuple[int, str]]
) -> None:
    """Answer pending lines with their (sealed) errors in one statement, lines already
    answered left as they are; the batch's failed count is counted again from its items."""
    connection = await session.connection()  # Core's executemany, not the ORM's bulk path
    await connection.execute(
        update(BatchItemRow)
        .where(
            BatchItemRow.batch_id == bindparam("batch"),
            BatchItemRow.line == bindparam("number"),
            BatchItemRow.status == "pending",
        )
        .values(status="failed", result=bindparam("sealed")),
        [{"batch": batch_id, "number": line, "sealed": sealed} for line, sealed in answers],
    )
    failed = select(func.count()).where(
        BatchItemRow.batch_id == batch_id, BatchItemRow.status == "failed"
    )
    await session.execute(
        update(BatchRow).where(BatchRow.id == batch_id).values(failed=failed.scalar_subquery())
    )


async def results(
    session: AsyncSession, *, batch_id: str, after_line: int, limit: int
) -> list[BatchItemRow]:
    query = (
        select(BatchItemRow)
        .where(BatchItemRow.batch_id == batch_id, BatchItemRow.line > after_line)
        .order_by(BatchItemRow.line)
        .limit(limit)
    )
    return list((await session.execute(query)).scalars())


async def count_items(session: AsyncSession, *, batch_id: str) -> int:
    query = select(func.count()).select_from(BatchItemRow).where(BatchItemRow.batch_id == batch_id)
    return int((await session.execute(query)).scalar_one())


async def result_key(session: AsyncSession, *, row: BatchRow, master_key: bytes) -> bytes:
    kek = await files.organisation_kek(
        session, master_key=master_key, org_id=row.org_id, create=False
    )
    return unwrap(kek, bytes.fromhex(row.wrapped_key), row.id)


def seal_result(key: bytes, batch_id: str, line: int, data: bytes) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, data, f"{batch_id}:{line}".encode())
    return base64.b64encode(nonce + sealed).decode()


def open_result(key: bytes, batch_id: str, line: int, sealed: str) -> bytes:
    raw = base64.b64decode(sealed)
    return AESGCM(key).decrypt(raw[:12], raw[12:], f"{batch_id}:{line}".encode())


def set_times(row: BatchRow, status: str, now: datetime | None = None) -> None:
    """Move to `status` and stamp the time OpenAI's batch object names for it."""
    now = now or utcnow()
    row.status = status
    stamp = {"in_progress": "in_progress_at", "finalizing": "finalizing_at",
             "completed": "completed_at", "failed": "failed_at", "expired": "expired_at",
             "cancelled": "cancelled_at"}.get(status)  # fmt: skip
    if stamp is not None and getattr(row, stamp) is None:
        setattr(row, stamp, now)
