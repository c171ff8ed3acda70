"""Datacenters: where nodes live, with the attributes sovereignty is decided on."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_operator, check_scope
from souverain.core.errors import ConflictError, InvalidRequestError, NotFoundError
from souverain.core.policy import Policy, Site, exclusion
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.schemas.fleet import DatacenterCreateRequest, DatacenterUpdateRequest
from souverain.db.tables import DatacenterRow, utcnow
from souverain.energy.carbon import default_for
from souverain.evidence.audit import actor_of, record


async def list_datacenters(session: AsyncSession, *, principal: Principal) -> list[DatacenterRow]:
    """Every tenant may see where the platform can process data: that is what it chooses from."""
    check_scope(principal, Scope.READ)
    return list((await session.execute(select(DatacenterRow).order_by(DatacenterRow.id))).scalars())


async def get_datacenter(
    session: AsyncSession, *, principal: Principal, datacenter_id: str
) -> DatacenterRow:
    check_scope(principal, Scope.READ)
    row = await session.get(DatacenterRow, datacenter_id)
    if row is None:
        raise NotFoundError("datacenter not found")
    return row


async def create_datacenter(
    session: AsyncSession, *, principal: Principal, request: DatacenterCreateRequest
) -> DatacenterRow:
    check_operator(principal)
    if await session.get(DatacenterRow, request.id) is not None:
        raise ConflictError(f"datacenter '{request.id}' already exists", param="id")
    row = await put_datacenter(session, request=request)
    await record(
        session,
        actor=actor_of(principal),
        action="datacenter.create",
        target_type="datacenter",
        target_id=row.id,
        details=request.model_dump(mode="json"),
    )
    return row


async def put_datacenter(
    session: AsyncSession, *, request: DatacenterCreateRequest
) -> DatacenterRow:
    """Create, or leave alone if present (used at first start for the local datacenter)."""
    row = await session.get(DatacenterRow, request.id)
    if row is None:
        intensity = request.carbon_intensity
        if intensity is None:
            intensity = default_for(request.country)
        if intensity is None:
            raise InvalidRequestError(
                f"no default grid intensity is known for {request.country}: give carbon_intensity",
                param="carbon_intensity",
            )
        row = DatacenterRow(
            **request.model_dump(exclude={"carbon_intensity"}), carbon_intensity=intensity
        )
        session.add(row)
        await session.flush()
    return row


async def update_datacenter(
    session: AsyncSession,
    *,
    principal: Principal,
    datacenter_id: str,
    request: DatacenterUpdateRequest,
) -> DatacenterRow:
    """Operators correct or change a datacenter; the controller re-checks its replicas."""
    check_operator(principal)
    row = await get_datacenter(session, principal=principal, datacenter_id=datacenter_id)
    for name, value in request.model_dump(exclude_unset=True).items():
        if value is not None:
            setattr(row, name, value)
    row.updated_at = utcnow()
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="datacenter.update",
        target_type="datacenter",
        target_id=row.id,
        details=request.model_dump(mode="json", exclude_unset=True),
    )
    return row


def site_of(row: DatacenterRow) -> Site:
    """The facts sovereignty is decided on, from a datacenter's row."""
    return Site(row.id, row.country, row.operator_country, frozenset(row.certifications))


async def exclusion_at(session: AsyncSession, *, policy: Policy, datacenter_id: str) -> str | None:
    """Why `policy` does not allow the datacenter (None when it does, or a removed one's reason)."""
    row = await session.get(DatacenterRow, datacenter_id)
    return "the datacenter was removed" if row is None else exclusion(policy, site_of(row))
