"""Crypto-erasure of an organisation: everything its keys protected stops, in one
transaction.

Deleting the organisation's key material (`files.crypto_erase`) makes its files
unreadable; what was made from them must stop too. Its fine-tuned models lose their
adapters (the rows that named the sealed objects and their wrapped keys), so they can
never be deployed again; their deployments are deleted, which takes them out of the
gateway's routes at its next refresh and makes the controller stop their replicas, whose
supervisors delete the decrypted adapter from the node as they stop; its fine-tuning
jobs are cancelled, which deletes their decrypted data on the training node.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.principal import Principal
from souverain.core.status import BATCH_ACTIVE
from souverain.db.jobs import BatchRow, FineTuningJobRow
from souverain.db.tables import DeploymentRow, ModelAdapterRow, utcnow
from souverain.evidence import audit
from souverain.files import service as files
from souverain.jobs.deployments.service import retire
from souverain.jobs.fine_tuning import service as fine_tuning

REASON = "its organisation's keys were erased"


@dataclass(frozen=True)
class Erased:
    files: int
    models: int
    deployments: int
    jobs: int
    batches: int


async def erase_organisation(session: AsyncSession, *, principal: Principal, org_id: str) -> Erased:
    """Owners and operators (checked by `files.crypto_erase`); audited."""
    erased_files = await files.crypto_erase(session, principal=principal, org_id=org_id)
    actor = audit.actor_of(principal)
    models = list(
        (
            await session.execute(
                select(ModelAdapterRow.model_id).where(ModelAdapterRow.org_id == org_id)
            )
        ).scalars()
    )
    await session.execute(delete(ModelAdapterRow).where(ModelAdapterRow.org_id == org_id))
    deployments = list(
        (
            await session.execute(
                select(DeploymentRow).where(
                    DeploymentRow.model_id.in_(models), DeploymentRow.deleted.is_(False)
                )
            )
        ).scalars()
    )
    for deployment in deployments:
        await retire(session, deployment=deployment, actor=actor, reason=REASON)
    jobs = list(
        (
            await session.execute(
                select(FineTuningJobRow).where(
                    FineTuningJobRow.org_id == org_id,
                    FineTuningJobRow.status.in_(fine_tuning.ACTIVE),
                )
            )
        ).scalars()
    )
    for job in jobs:
        await _cancel(session, job)
    stopped = await _fail_batches(session, org_id=org_id)
    return Erased(erased_files, len(models), len(deployments), len(jobs), stopped)


async def _fail_batches(session: AsyncSession, *, org_id: str) -> int:
    """The organisation's batches that have not ended fail at once: their results could
    never be sealed or read again. A runner holding one loses its lease and stops."""
    batches = list(
        (
            await session.execute(
                select(BatchRow).where(BatchRow.org_id == org_id, BatchRow.status.in_(BATCH_ACTIVE))
            )
        ).scalars()
    )
    now = utcnow()
    for batch in batches:
        batch.status, batch.failed_at = "failed", now
        batch.errors = [{"code": "keys_erased", "message": f"Batch failed: {REASON}",
                         "param": None, "line": None}]  # fmt: skip
        batch.lock_token, batch.lock_expires_at = None, None
    return len(batches)


async def _cancel(session: AsyncSession, job: FineTuningJobRow) -> None:
    """Stop the job: at once if nothing runs, else the controller kills its worker."""
    job.wanted = "cancel"
    if job.status != "running" and not (job.status == "paused" and job.node_id is not None):
        job.status, job.finished_at = "cancelled", utcnow()
    job.error = {"code": "keys_erased", "message": f"Job cancelled: {REASON}", "param": None}
    await fine_tuning.add_event(session, job, f"Job cancelled: {REASON}", level="warn")
