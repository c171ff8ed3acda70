"""Where inference can go: ready replicas and what the gateway needs to reach them."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.policy import Site
from souverain.db.tables import DatacenterRow, DeploymentRow, ModelRow, ProjectRow, ReplicaRow


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str
    owner_org_id: str | None
    capabilities: tuple[str, ...]
    context_length: int
    created: int


@dataclass(frozen=True)
class ReplicaRoute:
    replica_id: str
    deployment_id: str
    deployment_org_id: str | None
    model_name: str
    url: str
    node_id: str | None
    datacenter_id: str
    country: str
    operator_country: str
    certifications: frozenset[str]

    @property
    def site(self) -> Site:
        return Site(self.datacenter_id, self.country, self.operator_country, self.certifications)


async def load_models(session: AsyncSession) -> list[ModelInfo]:
    rows = (await session.execute(select(ModelRow).order_by(ModelRow.name))).scalars()
    return [
        ModelInfo(
            id=row.id,
            name=row.name,
            owner_org_id=row.owner_org_id,
            capabilities=tuple(row.capabilities),
            context_length=row.context_length,
            created=int(row.created_at.timestamp()),
        )
        for row in rows
    ]


async def load_ready_routes(session: AsyncSession) -> list[ReplicaRoute]:
    query = (
        select(ReplicaRow, DeploymentRow, ModelRow, DatacenterRow)
        .join(DeploymentRow, DeploymentRow.id == ReplicaRow.deployment_id)
        .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
        .join(DatacenterRow, DatacenterRow.id == ReplicaRow.datacenter_id)
        .where(
            ReplicaRow.state == "ready",
            ReplicaRow.url.is_not(None),
            DeploymentRow.deleted.is_(False),
        )
    )
    return [
        ReplicaRoute(
            replica_id=replica.id,
            deployment_id=deployment.id,
            deployment_org_id=deployment.org_id,
            model_name=model.name,
            url=replica.url or "",
            node_id=replica.node_id,
            datacenter_id=replica.datacenter_id,
            country=datacenter.country,
            operator_country=datacenter.operator_country,
            certifications=frozenset(datacenter.certifications),
        )
        for replica, deployment, model, datacenter in (await session.execute(query)).all()
    ]


async def load_default_projects(session: AsyncSession) -> dict[str, str]:
    """Organisation id -> its `default` project id (where org-wide keys' usage goes)."""
    query = select(ProjectRow.org_id, ProjectRow.id).where(ProjectRow.name == "default")
    return {org_id: project_id for org_id, project_id in (await session.execute(query)).all()}
