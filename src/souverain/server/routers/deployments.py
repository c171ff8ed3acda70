from __future__ import annotations

from fastapi import APIRouter, Query, status
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.principal import Principal
from souverain.core.schemas.deployments import (
    AdapterUsage,
    Deployment,
    DeploymentCreateRequest,
    DeploymentUpdateRequest,
    DeploymentUsage,
    Replica,
    ReplicaAdapter,
    ReplicaUsage,
    UsageSums,
)
from souverain.core.schemas.usage import DeploymentStartup
from souverain.db.tables import DeploymentRow, ModelRow, ReplicaRow
from souverain.jobs.deployments import autoscaling, usage
from souverain.jobs.deployments import service as deployments
from souverain.metering import startups
from souverain.metering.usage_reports import seen_by
from souverain.server.deps import PrincipalDep, SessionDep

router = APIRouter(prefix="/api/deployments", tags=["deployments"])


async def _out(
    session: AsyncSession, rows: list[DeploymentRow], principal: Principal
) -> list[Deployment]:
    replicas = await deployments.replicas_of(session, deployment_ids=[r.id for r in rows])
    owners = await deployments.adapter_owners(session, replicas)
    own = [r.id for r in rows if _sees_starts(principal, r)]
    starts = await startups.of_deployments(session, deployment_ids=own)
    result = []
    for row in rows:
        model = await session.get(ModelRow, row.model_id)
        reps = replicas[row.id]
        limits = autoscaling.limits_of(row)
        result.append(
            Deployment(
                id=row.id,
                name=row.name,
                model=model.name if model else "?",
                org_id=row.org_id,
                engine=row.engine,
                replicas=row.replicas,
                ready_replicas=sum(1 for r in reps if r.state == "ready"),
                autoscaling=autoscaling.is_autoscaled(row),
                min_replicas=limits.min_replicas,
                max_replicas=limits.max_replicas,
                target_busy_per_replica=limits.target,
                scale_down_idle_s=int(limits.scale_down_idle_s),
                scaled_at=row.scaled_at,
                # its reason counts every tenant's requests: the deployment's own only
                scaling_reason=row.scaling_reason if _owns(principal, row) else "",
                datacenters=list(row.datacenters),
                jurisdictions=(row.placement or {}).get("jurisdictions"),
                certifications=list((row.placement or {}).get("certifications") or []),
                operator_jurisdictions=(row.placement or {}).get("operator_jurisdictions"),
                strategy=row.strategy,
                reasoning_default=row.reasoning_default,
                sharing=row.sharing,
                adapters=max((len(_adapters(principal, r, owners)) for r in reps), default=0),
                cpus=row.cpus,
                gpus=row.gpus,
                engine_args=dict(row.engine_args),
                status=row.status,
                status_reason=row.status_reason,
                replica_details=[_replica(principal, r, owners) for r in reps],
                startup=(
                    DeploymentStartup.model_validate(starts.get(row.id, startups.Starts()))
                    if row.id in own
                    else None
                ),
                created_at=row.created_at,
                updated_at=row.updated_at,
            )
        )
    return result


def _replica(principal: Principal, replica: ReplicaRow, owners: dict[str, str | None]) -> Replica:
    fields = {name: getattr(replica, name) for name in Replica.model_fields if name != "adapters"}
    return Replica(**fields, adapters=_adapters(principal, replica, owners))


def _adapters(
    principal: Principal, replica: ReplicaRow, owners: dict[str, str | None]
) -> list[ReplicaAdapter]:
    """The adapters a shared replica holds that the caller may know of: every one for an
    operator, its organisation's own for a tenant (another's model id is theirs to keep)."""
    shown = []
    for entry in replica.adapters or ():
        model_id, error = str(entry.get("model")), entry.get("error")
        if not principal.is_operator and owners.get(model_id) != principal.org_id:
            continue
        state = "loading" if error is None else ("refused" if error else "loaded")
        shown.append(ReplicaAdapter(model_id=model_id, state=state, error=error or ""))
    return shown


def _owns(principal: Principal, row: DeploymentRow) -> bool:
    return principal.is_operator or (row.org_id is not None and row.org_id == principal.org_id)


def _sees_starts(principal: Principal, row: DeploymentRow) -> bool:
    """A start is its owning organisation's to know, as its usage report says it: an
    operator, or a key of that organisation that sees its whole usage (the manage or
    audit scope, no project). A member sees only its own usage, and when a colleague's
    request woke a deployment is not its own."""
    whole = [("org_id", principal.org_id)]
    return principal.is_operator or (_owns(principal, row) and seen_by(principal) == whole)


@router.get("", response_model=list[Deployment])
async def list_deployments(principal: PrincipalDep, session: SessionDep) -> list[Deployment]:
    """Deployments with their status and, when pending, the reasons; for your
    organisation's own deployments, what their replicas' starts cost (`startup`)."""
    return await _out(
        session, await deployments.list_deployments(session, principal=principal), principal
    )


@router.post("", response_model=Deployment, status_code=status.HTTP_201_CREATED)
async def create_deployment(
    body: DeploymentCreateRequest, principal: PrincipalDep, session: SessionDep
) -> Deployment:
    """Deploy a model. The controller places its replicas; watch `status` and `status_reason`."""
    row = await deployments.create_deployment(session, principal=principal, request=body)
    await session.commit()
    return (await _out(session, [row], principal))[0]


@router.get("/{deployment}", response_model=Deployment)
async def get_deployment(
    deployment: str, principal: PrincipalDep, session: SessionDep
) -> Deployment:
    """A deployment by id or name. `startup`, for its own organisation and operators only
    (null for anyone else): how many times its replicas started, their energy, CO2e and
    CPU seconds in all, and the last start's wall time from placement to ready
    (`wall_s`), its engine's spawn to ready (`engine_s`), CPU seconds and energy."""
    row = await deployments.get_deployment(session, principal=principal, ref=deployment)
    return (await _out(session, [row], principal))[0]


@router.get("/{deployment}/usage", response_model=DeploymentUsage)
async def get_deployment_usage(
    deployment: str,
    principal: PrincipalDep,
    session: SessionDep,
    hours: int = Query(default=24, ge=1, le=usage.MAX_HOURS, description="The window, up to now."),
) -> DeploymentUsage:
    """Requests, tokens, cost and energy (J and Wh, measured where the replica's energy
    interval has closed) over the last `hours`: the deployment's own, in all and per
    replica. For a deployment whose replicas hold fine-tuned models' adapters, each
    replica's requests per adapter, for your organisation's adapters only: nothing of
    other organisations' use of a replica, not even a total. You see the records your
    usage reports show you: members their own, admins and auditors their organisation's."""
    found = await usage.deployment_usage(session, principal=principal, ref=deployment, hours=hours)
    return DeploymentUsage(
        **_sums(found.total).model_dump(),
        deployment_id=found.deployment_id,
        since=found.since,
        until=found.until,
        replicas=[_replica_usage(r) for r in found.replicas],
    )


def _sums(sums: usage.Sums) -> UsageSums:
    return UsageSums(
        requests=sums.requests,
        prompt_tokens=sums.prompt_tokens,
        completion_tokens=sums.completion_tokens,
        cost=sums.cost,
        energy_j=sums.energy_j,
        energy_wh=sums.energy_j / 3600,
        co2e_g=sums.co2e_g,
        energy_estimated=sums.energy_estimated,
    )


def _replica_usage(replica: usage.ReplicaUsage) -> ReplicaUsage:
    return ReplicaUsage(
        replica_id=replica.replica_id,
        model=_sums(replica.model),
        adapters=[
            AdapterUsage(
                **_sums(a.sums).model_dump(), model_id=a.model_id, deployment_id=a.deployment_id
            )
            for a in replica.adapters
        ],
    )


@router.patch("/{deployment}", response_model=Deployment)
async def update_deployment(
    deployment: str, body: DeploymentUpdateRequest, principal: PrincipalDep, session: SessionDep
) -> Deployment:
    """Scale (0 stops it, keeping the deployment), set autoscaling limits (`min_replicas`,
    `max_replicas`, `target_busy_per_replica`, `scale_down_idle_s`) or change placement
    constraints; replicas that no longer comply are drained and placed again."""
    row = await deployments.update_deployment(
        session, principal=principal, ref=deployment, request=body
    )
    await session.commit()
    return (await _out(session, [row], principal))[0]


@router.delete("/{deployment}", response_model=Deployment)
async def delete_deployment(
    deployment: str, principal: PrincipalDep, session: SessionDep
) -> Deployment:
    """Delete: replicas are stopped, then the deployment disappears."""
    row = await deployments.delete_deployment(session, principal=principal, ref=deployment)
    await session.commit()
    return (await _out(session, [row], principal))[0]
