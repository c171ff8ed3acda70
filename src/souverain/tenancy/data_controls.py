"""An organisation's data controls: its own zero data retention switch and its retention
windows. Owners and operators set them; every change is an audit event.

Zero retention is on for a request when the organisation's switch, the operator's ceiling
or the project's policy says so (`sovereignty.policies` folds this switch into the
ceiling): a tenant may turn it on, never off below what the operator requires.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_org
from souverain.core.errors import ConflictError
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.schemas.data_controls import DataControlsRequest, RetentionWindows
from souverain.core.status import BATCH_ACTIVE, FINE_TUNING_ACTIVE
from souverain.db.data_controls import DataControlsRow
from souverain.db.jobs import BatchRow, FineTuningJobRow
from souverain.db.tables import utcnow
from souverain.evidence.audit import actor_of, record
from souverain.tenancy import orgs

WINDOWS = tuple(RetentionWindows.model_fields)


async def find_controls(session: AsyncSession, *, org_id: str) -> DataControlsRow | None:
    return await session.get(DataControlsRow, org_id)


async def zero_retention_orgs(session: AsyncSession) -> set[str]:
    """Organisations whose own switch is on."""
    query = select(DataControlsRow.org_id).where(DataControlsRow.zero_retention.is_(True))
    return set((await session.execute(query)).scalars())


def windows_of(row: DataControlsRow | None) -> RetentionWindows:
    if row is None:
        return RetentionWindows()
    return RetentionWindows(**{name: getattr(row, name) for name in WINDOWS})


async def get_controls(
    session: AsyncSession, *, principal: Principal, org_ref: str
) -> tuple[str, DataControlsRow | None]:
    """Anyone in the organisation may read its controls (they say what is kept of them)."""
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.READ)
    return org.id, await find_controls(session, org_id=org.id)


async def set_controls(
    session: AsyncSession, *, principal: Principal, org_ref: str, request: DataControlsRequest
) -> DataControlsRow:
    """Replace the organisation's controls (owners, operators); audited with the values."""
    org = await orgs.get_org(session, principal=principal, ref=org_ref)
    check_org(principal, org.id, Scope.OWN)
    row = await find_controls(session, org_id=org.id)
    if request.zero_retention and not (row and row.zero_retention):
        await check_no_stored_work(session, org_id=org.id)
    if row is None:
        row = DataControlsRow(org_id=org.id)
        session.add(row)
    row.zero_retention = request.zero_retention
    for name, days in request.retention.model_dump().items():
        setattr(row, name, days)
    row.updated_by, row.updated_at = principal.user_id, utcnow()
    await record(
        session, actor=actor_of(principal), action="data_controls.set", org_id=org.id,
        target_type="organisation", target_id=org.id, details=request.model_dump(mode="json"),
    )  # fmt: skip
    await session.flush()
    return row


async def check_no_stored_work(
    session: AsyncSession, *, org_id: str, project_id: str | None = None
) -> None:
    """Zero retention cannot start under work that is storing content now: a batch that has
    not ended writes its results, a fine-tuning job its checkpoints. Refused (409) naming
    them; the tenant cancels them or lets them end, then turns it on. Nothing is changed."""
    batches = select(BatchRow.id).where(
        BatchRow.org_id == org_id, BatchRow.status.in_(BATCH_ACTIVE)
    )
    jobs = select(FineTuningJobRow.id).where(
        FineTuningJobRow.org_id == org_id, FineTuningJobRow.status.in_(FINE_TUNING_ACTIVE)
    )
    if project_id is not None:
        batches = batches.where(BatchRow.project_id == project_id)
        jobs = jobs.where(FineTuningJobRow.project_id == project_id)
    running = [*(await session.execute(batches.limit(5))).scalars(),
               *(await session.execute(jobs.limit(5))).scalars()]  # fmt: skip
    if running:
        raise ConflictError(
            "zero retention cannot be turned on while work that stores content runs: "
            f"{', '.join(running)}; cancel it or let it end, then turn zero retention on",
            param="zero_retention",
        )
