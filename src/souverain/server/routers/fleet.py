from __future__ import annotations

from fastapi import APIRouter, status

from souverain.core.jurisdictions import jurisdictions_of
from souverain.core.schemas.fleet import (
    Datacenter,
    DatacenterCreateRequest,
    DatacenterUpdateRequest,
    Node,
)
from souverain.db.tables import DatacenterRow, utcnow
from souverain.fleet import datacenters, nodes
from souverain.metering.energy import intensity_at
from souverain.server.deps import PrincipalDep, SessionDep

router = APIRouter(prefix="/api", tags=["fleet"])


def _datacenter(row: DatacenterRow) -> Datacenter:
    return Datacenter(
        id=row.id,
        name=row.name,
        country=row.country,
        jurisdictions=jurisdictions_of(row.country),
        operator_name=row.operator_name,
        operator_country=row.operator_country,
        certifications=list(row.certifications),
        carbon_intensity=row.carbon_intensity,
        created_at=row.created_at,
    )


@router.get("/datacenters", response_model=list[Datacenter])
async def list_datacenters(principal: PrincipalDep, session: SessionDep) -> list[Datacenter]:
    """Where the platform can process data, with country, jurisdictions, operator and grid
    carbon intensity: declared, and this hour's value of the loaded hourly series."""
    now = utcnow()
    return [
        _datacenter(row).model_copy(
            update={
                "carbon_intensity_now": await intensity_at(
                    session, datacenter_id=row.id, moment=now
                )
            }
        )
        for row in await datacenters.list_datacenters(session, principal=principal)
    ]


@router.post("/datacenters", response_model=Datacenter, status_code=status.HTTP_201_CREATED)
async def create_datacenter(
    body: DatacenterCreateRequest, principal: PrincipalDep, session: SessionDep
) -> Datacenter:
    """Declare a datacenter (operators). Nodes join it with the Ray label souverain.io/datacenter=<id>."""
    row = await datacenters.create_datacenter(session, principal=principal, request=body)
    await session.commit()
    return _datacenter(row)


@router.get("/datacenters/{datacenter_id}", response_model=Datacenter)
async def get_datacenter(
    datacenter_id: str, principal: PrincipalDep, session: SessionDep
) -> Datacenter:
    return _datacenter(
        await datacenters.get_datacenter(session, principal=principal, datacenter_id=datacenter_id)
    )


@router.patch("/datacenters/{datacenter_id}", response_model=Datacenter)
async def update_datacenter(
    datacenter_id: str, body: DatacenterUpdateRequest, principal: PrincipalDep, session: SessionDep
) -> Datacenter:
    """Change a datacenter's attributes (operators). Replicas there that no longer satisfy
    their deployment's constraints are drained and re-placed."""
    row = await datacenters.update_datacenter(
        session, principal=principal, datacenter_id=datacenter_id, request=body
    )
    await session.commit()
    return _datacenter(row)


@router.get("/nodes", response_model=list[Node])
async def list_nodes(principal: PrincipalDep, session: SessionDep) -> list[Node]:
    """Nodes as Ray last reported them (operators)."""
    return [
        Node.model_validate(row) for row in await nodes.list_nodes(session, principal=principal)
    ]
