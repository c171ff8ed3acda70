"""One chunk of removal per kind of data, each in the caller's (short) transaction.

A chunk forgets rows and returns the stored objects they named; the caller deletes those
objects only after the transaction commits, so a crash in between leaves ciphertext that
nothing names, never a row pointing at nothing. A file's data key is cleared with its row,
so such leftover ciphertext can no longer be opened either.

Nothing in use is removed: the input files of batches and fine-tuning jobs that have not
ended are kept whatever their age; batch outputs and checkpoints age from the end of their
batch or job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.db.jobs import (
    BatchItemRow,
    BatchRow,
    FileRow,
    FineTuningCheckpointRow,
    FineTuningJobRow,
)
from souverain.db.tables import ModelAdapterRow, UsageRecordRow, utcnow
from souverain.evidence import audit, audit_log
from souverain.evidence.audit import timestamp
from souverain.files.service import release_storage

TENANT_FILES = ("batch", "fine-tune", "user_data", "evals")
BATCH_FILES = ("batch_output", "batch_error")
# The statuses of work that has ended (jobs/ owns them; retention sits below jobs/).
BATCH_ENDED = ("completed", "failed", "expired", "cancelled")
JOB_ENDED = ("succeeded", "failed", "cancelled")


@dataclass(frozen=True)
class StoredObject:
    store_uri: str
    object_key: str


@dataclass
class Removed:
    count: int = 0
    objects: list[StoredObject] = field(default_factory=list)


async def files(session: AsyncSession, *, org_id: str, cutoff: datetime, limit: int) -> Removed:
    """Tenants' files uploaded before `cutoff`, except those a batch or job still reads."""
    query = select(FileRow).where(
        FileRow.org_id == org_id,
        FileRow.status != "deleted",
        FileRow.purpose.in_(TENANT_FILES),
        FileRow.created_at < cutoff,
    )
    in_use = await _files_in_use(session, org_id=org_id)
    if in_use:
        query = query.where(FileRow.id.not_in(in_use))
    rows = list((await session.execute(query.order_by(FileRow.created_at).limit(limit))).scalars())
    return Removed(len(rows), await _forget_files(session, rows))


async def _files_in_use(session: AsyncSession, *, org_id: str) -> set[str]:
    batches = select(BatchRow.input_file_ids).where(
        BatchRow.org_id == org_id, BatchRow.status.not_in(BATCH_ENDED)
    )
    used = {file_id for ids in (await session.execute(batches)).scalars() for file_id in ids}
    jobs = select(FineTuningJobRow.training_files, FineTuningJobRow.validation_file_id).where(
        FineTuningJobRow.org_id == org_id, FineTuningJobRow.status.not_in(JOB_ENDED)
    )
    for training, validation in (await session.execute(jobs)).all():
        used |= {entry["file_id"] for entry in training}
        used |= {validation} if validation else set()
    return used


async def _forget_files(session: AsyncSession, rows: list[FileRow]) -> list[StoredObject]:
    now, objects = utcnow(), []
    for row in rows:
        objects.append(StoredObject(row.store_uri, row.object_key))
        row.status, row.deleted_at, row.wrapped_key = "deleted", now, ""
        await release_storage(session, org_id=row.org_id, size=row.stored_bytes)
        await audit.record(
            session, actor=audit.SYSTEM_CONTROLLER, action="file.delete", org_id=row.org_id,
            target_type="file", target_id=row.id,
            details={"reason": "retention", "datacenter": row.datacenter_id},
        )  # fmt: skip
    return objects


async def batch_outputs(
    session: AsyncSession, *, org_id: str, cutoff: datetime, limit: int
) -> Removed:
    """Batches that ended before `cutoff`: their answers kept per line, their output and
    error files. The batch itself (counts, times) stays."""
    ended_at = func.coalesce(
        BatchRow.completed_at, BatchRow.failed_at, BatchRow.expired_at, BatchRow.cancelled_at
    )
    answers = exists().where(BatchItemRow.batch_id == BatchRow.id, BatchItemRow.result.is_not(None))
    outputs = exists().where(
        FileRow.id.in_([BatchRow.output_file_id, BatchRow.error_file_id]),
        FileRow.status != "deleted",
    )
    query = select(BatchRow).where(
        BatchRow.org_id == org_id,
        BatchRow.status.in_(BATCH_ENDED),
        ended_at < cutoff,
        or_(answers, outputs),
    )
    removed = Removed()
    for batch in (await session.execute(query.limit(limit))).scalars():
        removed.count += 1
        removed.objects += await _forget_batch_outputs(session, batch)
    return removed


async def _forget_batch_outputs(session: AsyncSession, batch: BatchRow) -> list[StoredObject]:
    cleared = await session.execute(
        update(BatchItemRow)
        .where(BatchItemRow.batch_id == batch.id, BatchItemRow.result.is_not(None))
        .values(result=None)
    )
    ids = [i for i in (batch.output_file_id, batch.error_file_id) if i is not None]
    outputs = select(FileRow).where(
        FileRow.id.in_(ids), FileRow.status != "deleted", FileRow.purpose.in_(BATCH_FILES)
    )
    rows = list((await session.execute(outputs)).scalars())
    await audit.record(
        session, actor=audit.SYSTEM_CONTROLLER, action="retention.batch_outputs",
        org_id=batch.org_id, target_type="batch", target_id=batch.id,
        details={"answers": int(cleared.rowcount), "files": [r.id for r in rows]},  # type: ignore[attr-defined]
    )  # fmt: skip
    return await _forget_files(session, rows)


async def checkpoints(
    session: AsyncSession, *, org_id: str, cutoff: datetime, limit: int
) -> Removed:
    """Checkpoints of jobs that ended before `cutoff`. The model a job made (its adapter)
    is the organisation's model and stays while the model does."""
    query = (
        select(FineTuningCheckpointRow)
        .join(FineTuningJobRow, FineTuningJobRow.id == FineTuningCheckpointRow.job_id)
        .where(
            FineTuningJobRow.org_id == org_id,
            FineTuningJobRow.status.in_(JOB_ENDED),
            FineTuningJobRow.finished_at < cutoff,
        )
        .limit(limit)
    )
    rows = list((await session.execute(query)).scalars())
    if not rows:
        return Removed()
    served = select(ModelAdapterRow.object_key).where(
        ModelAdapterRow.object_key.in_([r.object_key for r in rows])
    )
    keep = set((await session.execute(served)).scalars())
    await session.execute(
        delete(FineTuningCheckpointRow).where(FineTuningCheckpointRow.id.in_([r.id for r in rows]))
    )
    for job_id in sorted({r.job_id for r in rows}):
        await audit.record(
            session, actor=audit.SYSTEM_CONTROLLER, action="retention.checkpoints",
            org_id=org_id, target_type="fine_tuning_job", target_id=job_id,
            details={"steps": sorted(r.step for r in rows if r.job_id == job_id)},
        )  # fmt: skip
    objects = [StoredObject(r.store_uri, r.object_key) for r in rows if r.object_key not in keep]
    return Removed(len(rows), objects)


async def usage_records(
    session: AsyncSession, *, org_id: str, cutoff: datetime, limit: int
) -> Removed:
    """Settled usage records made before `cutoff` (the hourly, daily and monthly rollups,
    which hold sums only, stay), but never those of the last or the current month: invoices
    are made from the records themselves."""
    cutoff = min(cutoff, invoiced_from(utcnow()))
    chosen = (
        select(UsageRecordRow.id)
        .where(
            UsageRecordRow.org_id == org_id,
            UsageRecordRow.created_at < cutoff,
            UsageRecordRow.status != "open",
        )
        .limit(limit)
    )
    ids = list((await session.execute(chosen)).scalars())
    if ids:
        await session.execute(delete(UsageRecordRow).where(UsageRecordRow.id.in_(ids)))
        await audit.record(
            session, actor=audit.SYSTEM_CONTROLLER, action="retention.usage", org_id=org_id,
            target_type="organisation", target_id=org_id,
            details={"records": len(ids), "before": timestamp(cutoff)},
        )  # fmt: skip
    return Removed(len(ids))


def invoiced_from(now: datetime) -> datetime:
    """The first instant of last month: records from then on may still be invoiced."""
    first = now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first - timedelta(days=1)).replace(day=1)


async def audit_events(
    session: AsyncSession, *, org_id: str, cutoff: datetime, limit: int
) -> Removed:
    """The organisation's sealed events older than `cutoff`, reduced to stubs."""
    return Removed(await audit_log.redact(session, org_id=org_id, before=cutoff, limit=limit))
