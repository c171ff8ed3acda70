"""An organisation's data controls: zero data retention and retention windows."""

from __future__ import annotations

from fastapi import APIRouter

from souverain.core.schemas.data_controls import DataControls, DataControlsRequest
from souverain.db.data_controls import DataControlsRow
from souverain.server.deps import PrincipalDep, SessionDep
from souverain.sovereignty import policies
from souverain.tenancy import data_controls

router = APIRouter(prefix="/api/orgs/{org}", tags=["data controls"])


async def _view(session: SessionDep, org_id: str, row: DataControlsRow | None) -> DataControls:
    in_force = await policies.ceiling_in_force(session, org_id=org_id)
    return DataControls(
        org_id=org_id,
        zero_retention=bool(row and row.zero_retention),
        zero_retention_effective=in_force.zero_retention,
        retention=data_controls.windows_of(row),
        updated_at=row.updated_at if row else None,
    )


@router.get("/data-controls", response_model=DataControls)
async def get_data_controls(org: str, principal: PrincipalDep, session: SessionDep) -> DataControls:
    """What the organisation keeps, and for how long. `zero_retention_effective` is on when
    the organisation or the operator's ceiling turned zero data retention on (a project's
    policy may turn it on for that project too)."""
    org_id, row = await data_controls.get_controls(session, principal=principal, org_ref=org)
    return await _view(session, org_id, row)


@router.put("/data-controls", response_model=DataControls)
async def set_data_controls(
    org: str, body: DataControlsRequest, principal: PrincipalDep, session: SessionDep
) -> DataControls:
    """Replace the organisation's data controls (owners, operators). With zero data
    retention on, file uploads, batches and fine-tuning jobs are refused (403
    `zero_data_retention`); turning it off cannot lift the operator's ceiling. Retention
    windows are enforced by the controller within minutes, every removal audited."""
    row = await data_controls.set_controls(session, principal=principal, org_ref=org, request=body)
    view = await _view(session, row.org_id, row)
    await session.commit()
    return view
