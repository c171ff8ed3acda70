from __future__ import annotations

from datetime import UTC

from fastapi import APIRouter

from souverain.core.schemas.billing import CarbonSeriesRequest, RateLimitsRequest
from souverain.metering import energy
from souverain.server.deps import PrincipalDep, SessionDep
from souverain.tenancy import keys, projects

router = APIRouter(prefix="/api", tags=["quotas"])


@router.put("/keys/{key_id}/limits", response_model=RateLimitsRequest)
async def set_key_limits(
    key_id: str, body: RateLimitsRequest, principal: PrincipalDep, session: SessionDep
) -> RateLimitsRequest:
    """Requests and tokens per minute for one key (admins of its organisation)."""
    row = await keys.set_limits(
        session, principal=principal, key_id=key_id, rpm=body.rpm, tpm=body.tpm
    )
    await session.commit()
    return RateLimitsRequest(rpm=row.rpm, tpm=row.tpm)


@router.put("/orgs/{org}/projects/{project}/limits", response_model=RateLimitsRequest)
async def set_project_limits(
    org: str, project: str, body: RateLimitsRequest, principal: PrincipalDep, session: SessionDep
) -> RateLimitsRequest:
    """Requests and tokens per minute shared by every key of a project (admins)."""
    row = await projects.set_limits(
        session, principal=principal, org_ref=org, project_ref=project, rpm=body.rpm, tpm=body.tpm
    )
    await session.commit()
    return RateLimitsRequest(rpm=row.rpm, tpm=row.tpm)


@router.put("/datacenters/{datacenter_id}/carbon")
async def load_carbon_series(
    datacenter_id: str, body: CarbonSeriesRequest, principal: PrincipalDep, session: SessionDep
) -> dict[str, int]:
    """Load (or replace) hours of a datacenter's grid carbon-intensity series, gCO2e/kWh
    (operators). Hours without a value use the datacenter's static intensity."""
    series = {}
    for point in body.points:
        moment = point.hour if point.hour.tzinfo else point.hour.replace(tzinfo=UTC)
        series[moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)] = point.g_per_kwh
    loaded = await energy.load_series(
        session, principal=principal, datacenter_id=datacenter_id, series=series
    )
    await session.commit()
    return {"hours": loaded}
