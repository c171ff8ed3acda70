"""First start: the operator, its first key, the local datacenter and the built-in models;
for a newcomer's `souverain up`, a default organisation with its owner's key.

Idempotent: a second start on the same database finds everything and creates nothing;
the operator key is created (and returned, to be shown once) only when no operator key
has ever existed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog import models
from souverain.core.ids import hash_secret, new_api_key, new_id
from souverain.core.jurisdictions import is_country
from souverain.core.roles import Role, scopes_of
from souverain.core.schemas.deployments import DeploymentCreateRequest
from souverain.core.schemas.fleet import DatacenterCreateRequest
from souverain.core.schemas.models import Capability, Engine, Format, ModelRegisterRequest
from souverain.db.tables import (
    ApiKeyRow,
    DeploymentRow,
    MembershipRow,
    OrganisationRow,
    ProjectRow,
    UserRow,
)
from souverain.evidence import audit
from souverain.fleet import datacenters
from souverain.jobs.deployments import service as deployments
from souverain.tenancy import orgs, users
from souverain.tenancy.orgs import DEFAULT_PROJECT

OPERATOR_USER = "operator"
DEFAULT_ORG = "default"
DEFAULT_OWNER = "owner"


@dataclass(frozen=True)
class LocalDatacenter:
    id: str
    country: str
    carbon_intensity: float | None


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    uri: str
    sha256: str | None
    size_bytes: int | None
    license: str
    context_length: int
    engine: Engine = "llamacpp"
    format: Format = "gguf"
    capabilities: tuple[Capability, ...] = ("chat", "completions")
    description: str = "SmolLM2-135M-Instruct (Q4_1 GGUF), shipped with souverain."
    cpus: float = 1.0


async def ensure_operator_key(session: AsyncSession) -> str | None:
    """Return a new operator key on the very first start, else None."""
    operator = await users.ensure_user(session, name=OPERATOR_USER, is_operator=True)
    existing = await session.execute(
        select(ApiKeyRow.id).where(ApiKeyRow.role == Role.OPERATOR).limit(1)
    )
    if existing.first() is not None:
        return None
    return await _root_key(
        session, user=operator, org_id=None, role=Role.OPERATOR, name="first operator key"
    )


async def ensure_default_org(session: AsyncSession) -> str | None:
    """For a newcomer (`souverain up`'s first start): the organisation `default`, its owner
    `owner` and that owner's key, returned once. Files, batches and fine-tuning belong to an
    organisation, so the operator's key alone cannot try them. None when it exists."""
    if await orgs.find_org(session, ref=DEFAULT_ORG) is not None:
        return None
    org = OrganisationRow(id=new_id("org"), name=DEFAULT_ORG, display_name="Default organisation")
    session.add(org)
    await session.flush()
    session.add(ProjectRow(id=new_id("prj"), org_id=org.id, name=DEFAULT_PROJECT))
    owner = await users.ensure_user(session, name=DEFAULT_OWNER)
    session.add(MembershipRow(id=new_id("mem"), org_id=org.id, user_id=owner.id, role=Role.OWNER))
    await session.flush()
    await audit.record(
        session, actor=audit.Actor("system", "bootstrap"), action="org.create", org_id=org.id,
        target_type="organisation", target_id=org.id,
        details={"name": org.name, "owner": owner.name, "first_start": True},
    )  # fmt: skip
    return await _root_key(
        session, user=owner, org_id=org.id, role=Role.OWNER, name="first owner key"
    )


async def _root_key(
    session: AsyncSession, *, user: UserRow, org_id: str | None, role: Role, name: str
) -> str:
    key_id, secret, full = new_api_key()
    session.add(
        ApiKeyRow(
            id=key_id,
            secret_hash=hash_secret(secret),
            name=name,
            user_id=user.id,
            created_by=user.id,
            org_id=org_id,
            project_id=None,
            role=role,
            scopes=sorted(scopes_of(role)),
        )
    )
    await session.flush()
    await audit.record(
        session, actor=audit.Actor("system", "bootstrap"), action="key.create", org_id=org_id,
        target_type="key", target_id=key_id,
        details={"user": user.name, "role": role, "first_start": True},
    )  # fmt: skip
    return full


async def ensure_local_datacenter(session: AsyncSession, *, local: LocalDatacenter) -> None:
    country = local.country.upper()
    if not is_country(country):
        raise ValueError(f"SOUVERAIN_LOCAL_COUNTRY={local.country!r} is not an ISO country code")
    await datacenters.put_datacenter(
        session,
        request=DatacenterCreateRequest(
            id=local.id,
            name=f"Local datacenter ({local.id})",
            country=country,
            operator_name="self-hosted",
            operator_country=country,
            certifications=[],
            carbon_intensity=local.carbon_intensity,
        ),
    )


async def ensure_builtin_model(
    session: AsyncSession, *, builtin: BuiltinModel, deploy: bool
) -> None:
    """Register the built-in model (refreshing its artifact) and deploy it the first time."""
    model = await models.put_model(
        session,
        request=ModelRegisterRequest(
            name=builtin.name,
            uri=builtin.uri,
            sha256=builtin.sha256,
            size_bytes=builtin.size_bytes,
            format=builtin.format,
            engine=builtin.engine,
            capabilities=list(builtin.capabilities),
            context_length=builtin.context_length,
            license=builtin.license,
            description=builtin.description,
        ),
        owner_org_id=None,
        source="builtin",
        replace=True,
    )
    if not deploy:
        return
    any_deployment = await session.execute(
        select(DeploymentRow.id).where(DeploymentRow.model_id == model.id)
    )
    if any_deployment.first() is None:
        await deployments.put_deployment(
            session,
            request=DeploymentCreateRequest(
                name=builtin.name, model=builtin.name, replicas=1, cpus=builtin.cpus
            ),
            model=model,
            org_id=None,
        )
