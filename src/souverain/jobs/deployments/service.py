"""Deployments: the desired state (model, replicas, where). The controller makes it so.

Tenants see their own organisation's deployments and the platform's (read-only);
changing a deployment needs `manage` in its organisation, or the operator for platform
deployments.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog import models
from souverain.catalog.constraints import constraints_of
from souverain.core.access import Holding, check_operator, check_org, check_scope, reach
from souverain.core.engine_args import EngineArgError, check_engine_args
from souverain.core.errors import (
    ConflictError,
    GoneError,
    InvalidRequestError,
    NotFoundError,
    UnprocessableError,
)
from souverain.core.ids import new_id
from souverain.core.policy import UNRESTRICTED, Policy, intersect
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.schemas.deployments import DeploymentCreateRequest, DeploymentUpdateRequest
from souverain.db.tables import (
    DatacenterRow,
    DeploymentRow,
    ModelAdapterRow,
    ModelRow,
    ReplicaRow,
    utcnow,
)
from souverain.db.visibility import visible
from souverain.evidence.audit import Actor, actor_of, record
from souverain.jobs.deployments import autoscaling, idle_adapters
from souverain.sovereignty import policies
from souverain.tenancy import orgs


async def find_deployment(
    session: AsyncSession, *, principal: Principal, ref: str
) -> DeploymentRow | None:
    """By id or name among the deployments the caller may see: its organisation's and the
    platform's (operators: all, using an id when a name is ambiguous)."""
    query = select(DeploymentRow).where(
        or_(DeploymentRow.id == ref, DeploymentRow.name == ref),
        DeploymentRow.deleted.is_(False),
        _visible(principal),
    )
    rows = list((await session.execute(query)).scalars())
    exact = [row for row in rows if row.id == ref]
    if exact:
        return exact[0]
    if len(rows) > 1:
        raise ConflictError(f"several deployments are named '{ref}'; use the deployment's id")
    return rows[0] if rows else None


async def platform_status(session: AsyncSession, *, name: str) -> tuple[str, str] | None:
    """(status, reason) of the platform's deployment called `name`, if there is one."""
    row = (
        await session.execute(
            select(DeploymentRow.status, DeploymentRow.status_reason).where(
                DeploymentRow.name == name,
                DeploymentRow.org_id.is_(None),
                DeploymentRow.deleted.is_(False),
            )
        )
    ).first()
    return None if row is None else (row[0], row[1])


async def _name_taken(session: AsyncSession, *, name: str, org_id: str | None) -> bool:
    owner = DeploymentRow.org_id.is_(None) if org_id is None else DeploymentRow.org_id == org_id
    query = select(DeploymentRow.id).where(
        DeploymentRow.name == name, owner, DeploymentRow.deleted.is_(False)
    )
    return (await session.execute(query.limit(1))).first() is not None


def _visible(principal: Principal) -> ColumnElement[bool]:
    """Deployments are shared: the platform's and the caller's organisation's (all, for
    operators; the one rule, `core.access`)."""
    return visible(reach(principal, Holding.SHARED), org=DeploymentRow.org_id)


async def get_deployment(session: AsyncSession, *, principal: Principal, ref: str) -> DeploymentRow:
    check_scope(principal, Scope.READ)
    deployment = await find_deployment(session, principal=principal, ref=ref)
    if deployment is None:
        raise NotFoundError("deployment not found")
    return deployment


def _check_manage(principal: Principal, deployment: DeploymentRow) -> None:
    if deployment.org_id is None:
        check_operator(principal)
    else:
        check_org(principal, deployment.org_id, Scope.MANAGE, what="deployment")


async def list_deployments(session: AsyncSession, *, principal: Principal) -> list[DeploymentRow]:
    check_scope(principal, Scope.READ)
    query = (
        select(DeploymentRow)
        .where(DeploymentRow.deleted.is_(False), _visible(principal))
        .order_by(DeploymentRow.name)
    )
    return list((await session.execute(query)).scalars())


async def create_deployment(
    session: AsyncSession, *, principal: Principal, request: DeploymentCreateRequest
) -> DeploymentRow:
    org_id = None
    if request.org is not None:
        org = await orgs.get_org(session, principal=principal, ref=request.org)
        check_org(principal, org.id, Scope.MANAGE)
        org_id = org.id
    else:
        check_operator(principal)
    model = await models.get_model(session, principal=principal, ref=request.model)
    if model.owner_org_id is not None and model.owner_org_id != org_id:
        raise NotFoundError("model not found", param="model")  # another tenant's private model
    if model.base_model_id is not None and await session.get(ModelAdapterRow, model.id) is None:
        raise GoneError(
            "This fine-tuned model's adapter was erased with its organisation's keys.",
            param="model",
        )

    try:
        check_engine_args(
            model.engine,
            dict(request.engine_args),
            context_length=model.context_length,
            cpus=request.cpus,
        )
    except EngineArgError as error:
        raise UnprocessableError(str(error), param=f"engine_args.{error.name}") from None
    await _check_datacenters(session, request.datacenters)
    if request.reasoning_default:
        _check_reasoning(model)
    if request.sharing == "shared":
        _check_shared(request, model)
    autoscaling.check_scaling(request, replicas=request.replicas)
    if await _name_taken(session, name=request.name, org_id=org_id):
        raise ConflictError(f"deployment '{request.name}' already exists", param="name")
    deployment = await put_deployment(session, request=request, model=model, org_id=org_id)
    await record(
        session,
        actor=actor_of(principal),
        action="deployment.create",
        org_id=org_id,
        target_type="deployment",
        target_id=deployment.id,
        details=request.model_dump(mode="json"),
    )
    return deployment


async def put_deployment(
    session: AsyncSession, *, request: DeploymentCreateRequest, model: ModelRow, org_id: str | None
) -> DeploymentRow:
    scaling = autoscaling.check_scaling(request, replicas=request.replicas)
    # the first count, inside the limits (a default of 1 under a minimum of 2 is 2)
    replicas = autoscaling.starting_count(scaling, request.replicas, replicas_given=False)
    if request.sharing == "shared":
        idle_adapters.check_limits(scaling, replicas)
    deployment = DeploymentRow(
        id=new_id("dep"),
        name=request.name,
        model_id=model.id,
        org_id=org_id,
        engine=model.engine,
        replicas=replicas,
        min_replicas=scaling.min_replicas,
        max_replicas=scaling.max_replicas,
        target_busy_per_replica=scaling.target,
        scale_down_idle_s=scaling.idle_s,
        datacenters=list(request.datacenters),
        cpus=request.cpus,
        gpus=request.gpus,
        engine_args=dict(request.engine_args),
        placement={
            "jurisdictions": request.jurisdictions,
            "certifications": sorted(set(request.certifications)),
            "operator_jurisdictions": request.operator_jurisdictions,
        },
        strategy=request.strategy,
        reasoning_default=request.reasoning_default,
        sharing=request.sharing,
        status="pending",
        status_reason="waiting for the controller",
    )
    session.add(deployment)
    await session.flush()
    return deployment


# What a shared deployment has no use for: its base's replicas serve it, with their own
# engine and resources; `replicas` only says whether its adapter is loaded (0/1), and its
# limits whether it unloads while idle (idle_adapters.check_limits, as on update).
_NOT_FOR_SHARED = ("engine_args", "cpus", "gpus", "strategy", "reasoning_default")


def _check_shared(request: DeploymentCreateRequest, model: ModelRow) -> None:
    """Refuse a shared deployment of a base model, or one given options it would ignore."""
    if model.base_model_id is None:
        raise InvalidRequestError(
            f"The model '{model.name}' is not a fine-tuned model: only an adapter can be "
            "served by shared replicas of its base.",
            param="sharing",
        )
    fields = DeploymentCreateRequest.model_fields  # a default is what every client sends
    ignored = [
        name for name in _NOT_FOR_SHARED
        if getattr(request, name) != fields[name].get_default(call_default_factory=True)
    ]  # fmt: skip
    if request.replicas > 1:
        ignored.insert(0, "replicas")
    if ignored:
        raise InvalidRequestError(
            f"A shared deployment runs on its base's replicas: {', '.join(ignored)} "
            "cannot be set (replicas: 0 unloads the adapter, 1 loads it; use "
            "sharing=dedicated for replicas of its own).",
            param=ignored[0],
        )


def _check_reasoning(model: ModelRow) -> None:
    if "reasoning" not in model.capabilities:
        raise InvalidRequestError(
            f"The model '{model.name}' is not marked reasoning: its deployments cannot "
            "answer in reasoning mode by default.",
            param="reasoning_default",
        )


async def _check_datacenters(session: AsyncSession, ids: list[str]) -> None:
    for datacenter_id in ids:
        if await session.get(DatacenterRow, datacenter_id) is None:
            raise InvalidRequestError(
                f"datacenter '{datacenter_id}' does not exist", param="datacenters"
            )


async def update_deployment(
    session: AsyncSession, *, principal: Principal, ref: str, request: DeploymentUpdateRequest
) -> DeploymentRow:
    deployment = await get_deployment(session, principal=principal, ref=ref)
    _check_manage(principal, deployment)
    _rescale(deployment, request)
    if request.datacenters is not None:
        await _check_datacenters(session, request.datacenters)
        deployment.datacenters = list(request.datacenters)
    placement = dict(deployment.placement)
    for name in ("jurisdictions", "certifications", "operator_jurisdictions"):
        if name in request.model_fields_set:
            placement[name] = getattr(request, name)
    deployment.placement = placement
    if request.strategy is not None:
        deployment.strategy = request.strategy
    if request.reasoning_default is not None:
        if request.reasoning_default:
            model = await session.get(ModelRow, deployment.model_id)
            assert model is not None
            _check_reasoning(model)
        deployment.reasoning_default = request.reasoning_default
    deployment.updated_at = utcnow()
    await session.flush()
    await record(
        session,
        actor=actor_of(principal),
        action="deployment.update",
        org_id=deployment.org_id,
        target_type="deployment",
        target_id=deployment.id,
        details=request.model_dump(mode="json", exclude_unset=True),
    )
    return deployment


def _rescale(deployment: DeploymentRow, request: DeploymentUpdateRequest) -> None:
    """New limits, target or count: a fixed deployment given `replicas` stays fixed; an
    autoscaled one takes a count inside its limits (the controller moves it from there)."""
    replicas = deployment.replicas if request.replicas is None else request.replicas
    scaling = autoscaling.check_scaling(request, replicas=replicas, current=deployment)
    wanted = autoscaling.starting_count(
        scaling, replicas, replicas_given=request.replicas is not None
    )
    if deployment.sharing == "shared":
        idle_adapters.check_limits(scaling, wanted)
    if wanted != deployment.replicas:
        deployment.scale_above, deployment.scale_below_since = 0, None
    deployment.replicas = wanted
    deployment.min_replicas, deployment.max_replicas = scaling.min_replicas, scaling.max_replicas
    deployment.target_busy_per_replica = scaling.target
    deployment.scale_down_idle_s = scaling.idle_s


async def placement_policy(session: AsyncSession, *, deployment: DeploymentRow) -> Policy:
    """Where replicas may run: the deployment's constraints ∩ its organisation's ceiling."""
    ceiling = UNRESTRICTED
    if deployment.org_id is not None:
        ceiling = await policies.ceiling_of(session, org_id=deployment.org_id)
    return intersect(ceiling, constraints_of(deployment))


async def delete_deployment(
    session: AsyncSession, *, principal: Principal, ref: str
) -> DeploymentRow:
    """Mark for deletion; the controller stops the replicas, then removes the row."""
    deployment = await get_deployment(session, principal=principal, ref=ref)
    _check_manage(principal, deployment)
    await retire(session, deployment=deployment, actor=actor_of(principal))
    return deployment


async def retire(
    session: AsyncSession, *, deployment: DeploymentRow, actor: Actor, reason: str | None = None
) -> None:
    """Mark for deletion: out of the routes at once, its replicas stopped by the controller."""
    deployment.deleted = True
    deployment.replicas = 0
    deployment.status = "deleting"
    deployment.name = f"{deployment.name}~deleted~{deployment.id}"[:64]
    deployment.updated_at = utcnow()
    await session.flush()
    await record(
        session, actor=actor, action="deployment.delete", org_id=deployment.org_id,
        target_type="deployment", target_id=deployment.id,
        details={"reason": reason} if reason else None,
    )  # fmt: skip


async def adapter_owners(
    session: AsyncSession, replicas: dict[str, list[ReplicaRow]]
) -> dict[str, str | None]:
    """Model id -> its owner organisation, for the adapters these replicas hold."""
    ids = {
        str(e.get("model")) for reps in replicas.values() for r in reps for e in r.adapters or ()
    }
    if not ids:
        return {}
    query = select(ModelRow.id, ModelRow.owner_org_id).where(ModelRow.id.in_(ids))
    return {model_id: org_id for model_id, org_id in (await session.execute(query)).all()}


async def replicas_of(
    session: AsyncSession, *, deployment_ids: list[str]
) -> dict[str, list[ReplicaRow]]:
    result: dict[str, list[ReplicaRow]] = {dep_id: [] for dep_id in deployment_ids}
    if deployment_ids:
        query = select(ReplicaRow).where(ReplicaRow.deployment_id.in_(deployment_ids))
        for replica in (await session.execute(query.order_by(ReplicaRow.created_at))).scalars():
            result[replica.deployment_id].append(replica)
    return result
