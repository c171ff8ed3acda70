"""First start: the operator, its first key, the local datacenter and the built-in model.

Idempotent: a second start on the same database finds everything and creates nothing;
the operator key is created (and returned, to be shown once) only when no operator key
has ever existed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog import models
from souverain.core.ids import hash_secret, new_api_key
from souverain.core.jurisdictions import is_country
from souverain.core.roles import Role, scopes_of
from souverain.core.schemas.deployments import DeploymentCreateRequest
from souverain.core.schemas.fleet import DatacenterCreateRequest
from souverain.core.schemas.models import Capability, Engine, Format, ModelRegisterRequest
from souverain.db.tables import ApiKeyRow, DeploymentRow
from souverain.evidence import audit
from souverain.fleet import datacenters
from souverain.jobs.deployments import service as deployments
from souverain.tenancy import users

OPERATOR_USER = "operator"


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
    key_id, secret, full = new_api_key()
    session.add(
        ApiKeyRow(
            id=key_id,
            secret_hash=hash_secret(secret),
            name="first operator key",
            user_id=operator.id,
            created_by=operator.id,
            org_id=None,
            project_id=None,
            role=Role.OPERATOR,
            scopes=sorted(scopes_of(Role.OPERATOR)),
        )
    )
    await session.flush()
    await audit.record(
        session, actor=audit.Actor("system", "bootstrap"), action="key.create", target_type="key", target_id=key_id,
        details={"user": OPERATOR_USER, "role": Role.OPERATOR, "first_start": True},
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
