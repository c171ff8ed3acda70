"""Where inference can go: ready replicas and what the gateway needs to reach them."""

from __future__ import annotations

from dataclasses import dataclass, replace

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog.constraints import constraints_of
from souverain.catalog.hosting import SHARED, Owner, adapter_hosts
from souverain.core.policy import Site, exclusion
from souverain.db.metering import CarbonIntensityRow
from souverain.db.tables import (
    DatacenterRow,
    DeploymentRow,
    ModelAdapterRow,
    ModelRow,
    ProjectRow,
    ReplicaRow,
    utcnow,
)
from souverain.energy.carbon import hour_of

# When a replica does not say how many requests it decodes at once: llama-cpp-python's
# server decodes one at a time; vLLM batches many. llama-server says (its --parallel).
ENGINE_SLOTS = {"llamacpp": 1, "embeddings": 1, "vllm": 256, "stand-in": 1024}
SLOTTED_RUNTIMES = frozenset({"llama-server"})  # the gateway assigns each request its slot


@dataclass(frozen=True)
class ModelInfo:
    id: str
    name: str
    owner_org_id: str | None
    capabilities: tuple[str, ...]
    context_length: int
    created: int
    reasoning_default: bool = False  # one of its deployments answers in reasoning mode
    reasoning_tags: str | None = None  # a reasoning model's opening tag; None: either


@dataclass(frozen=True)
class ReplicaRoute:
    replica_id: str
    deployment_id: str
    deployment_org_id: str | None
    model_id: str
    model_name: str

    url: str
    node_id: str | None
    datacenter_id: str
    country: str
    operator_country: str
    certifications: frozenset[str]
    carbon_intensity: float = 0.0  # gCO2e/kWh now (the hourly series if loaded, else static)
    energy_j_per_token: float | None = None  # per weighted token, from the last interval
    energy_source: str | None = None
    prompt_overhead: tuple[int, int] | None = None  # the chat template's, measured
    engine: str = "llamacpp"
    runtime: str | None = None  # what serves the engine on its node, as the replica says
    engine_slots: int | None = None  # as the replica says
    gpus: int = 0  # the deployment's GPUs per replica; 0: a CPU engine (gateway/shares.py)
    lora_id: int | None = None  # a shared replica's adapter for this model (the engine's number)
    # a fine-tuned model's route to a shared replica: the base deployment the replica is of
    host_deployment_id: str | None = None

    @property
    def serving_deployment_id(self) -> str:
        """The deployment whose replica this is, which scales with the load on it: the base's
        for a fine-tuned model on a shared replica (its own deployment has no replica; the
        usage record names that one, `deployment_id`)."""
        return self.host_deployment_id or self.deployment_id

    @property
    def slots(self) -> int:
        """Requests the engine serves at once; more would only wait inside it, unfairly."""
        return self.engine_slots or ENGINE_SLOTS.get(self.engine, 1)

    @property
    def slotted(self) -> bool:
        """Whether each request is sent to a slot the gateway chose (llama-server), where
        its cache scope's prefix is likely cached (gateway/slots.py)."""
        return self.runtime in SLOTTED_RUNTIMES

    @property
    def site(self) -> Site:
        return Site(self.datacenter_id, self.country, self.operator_country, self.certifications)


async def load_models(session: AsyncSession) -> list[ModelInfo]:
    """Models that can be served: not a fine-tuned model whose adapter was erased."""
    erased = (ModelRow.base_model_id.is_not(None)) & ~select(ModelAdapterRow.model_id).where(
        ModelAdapterRow.model_id == ModelRow.id
    ).exists()
    query = select(ModelRow).where(~erased).order_by(ModelRow.name)
    rows = (await session.execute(query)).scalars()
    reasoning = set(
        (
            await session.execute(
                select(DeploymentRow.model_id).where(
                    DeploymentRow.reasoning_default.is_(True), DeploymentRow.deleted.is_(False)
                )
            )
        ).scalars()
    )
    return [
        ModelInfo(
            id=row.id,
            name=row.name,
            owner_org_id=row.owner_org_id,
            capabilities=tuple(row.capabilities),
            context_length=row.context_length,
            created=int(row.created_at.timestamp()),
            reasoning_default=row.id in reasoning and "reasoning" in row.capabilities,
            reasoning_tags=row.reasoning_tags,
        )
        for row in rows
    ]


async def load_ready_routes(session: AsyncSession) -> list[ReplicaRoute]:
    hour = hour_of(utcnow())
    series = select(CarbonIntensityRow).where(CarbonIntensityRow.hour == hour)
    intensities = {
        row.datacenter_id: row.g_per_kwh for row in (await session.execute(series)).scalars()
    }

    query = (
        select(ReplicaRow, DeploymentRow, ModelRow, DatacenterRow)
        .join(DeploymentRow, DeploymentRow.id == ReplicaRow.deployment_id)
        .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
        .join(DatacenterRow, DatacenterRow.id == ReplicaRow.datacenter_id)
        .where(
            ReplicaRow.state == "ready",
            ReplicaRow.url.is_not(None),
            ReplicaRow.draining_since.is_(None),  # no new request for a draining replica
            DeploymentRow.deleted.is_(False),
        )
    )
    rows = (await session.execute(query)).all()
    routes = [_route(replica, deployment, model, datacenter, intensities)
              for replica, deployment, model, datacenter in rows]  # fmt: skip
    held = [(row[0], route) for row, route in zip(rows, routes, strict=True)]
    return routes + await _adapter_routes(session, held)


def _route(
    replica: ReplicaRow, deployment: DeploymentRow, model: ModelRow, datacenter: DatacenterRow,
    intensities: dict[str, float],
) -> ReplicaRoute:  # fmt: skip
    return ReplicaRoute(
        replica_id=replica.id,
        deployment_id=deployment.id,
        deployment_org_id=deployment.org_id,
        model_id=model.id,
        model_name=model.name,
        url=replica.url or "",
        node_id=replica.node_id,
        datacenter_id=replica.datacenter_id,
        country=datacenter.country,
        operator_country=datacenter.operator_country,
        certifications=frozenset(datacenter.certifications),
        carbon_intensity=intensities.get(datacenter.id, datacenter.carbon_intensity),
        energy_j_per_token=replica.energy_j_per_token,
        energy_source=replica.energy_source,
        engine=deployment.engine,
        runtime=replica.runtime,
        engine_slots=replica.slots,
        gpus=deployment.gpus,
        prompt_overhead=(
            None
            if replica.prompt_overhead_fixed is None
            else (replica.prompt_overhead_fixed, replica.prompt_overhead_per_message or 0)
        ),
    )


async def _adapter_routes(
    session: AsyncSession, replicas: list[tuple[ReplicaRow, ReplicaRoute]]
) -> list[ReplicaRoute]:
    """The fine-tuned models that shared replicas serve, each a route of its own to the
    same replica (the same slots and load), under the model's shared deployment, with the
    engine's number for its adapter as the node reported it for this run of the engine
    (jobs/deployments/sharing.py). A model is served at a replica's site only where its
    shared deployment's own constraints allow that site (the gateway checks the caller's
    organisation and project policies); of two shared deployments of one model, the oldest
    that allows the site owns the route."""
    if not any(replica.adapters for replica, _ in replicas):
        return []
    query = (
        select(DeploymentRow, ModelRow)
        .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
        .where(DeploymentRow.sharing == SHARED, DeploymentRow.deleted.is_(False))
        .order_by(DeploymentRow.created_at, DeploymentRow.id)
    )
    shared: dict[str, list[tuple[DeploymentRow, ModelRow]]] = {}
    for deployment, model in (await session.execute(query)).all():
        shared.setdefault(model.id, []).append((deployment, model))
    routes = []
    for replica, route in replicas:
        for entry in replica.adapters or ():
            lora_id, owners = entry.get("lora"), shared.get(str(entry.get("model")), [])
            if entry.get("error") != "" or not isinstance(lora_id, int):
                continue  # refused, or not reported by the node for this run
            owner = next(
                (pair for pair in owners if exclusion(constraints_of(pair[0]), route.site) is None),
                None,
            )
            if owner is None:  # its deployment deleted, or it excludes this site
                continue
            deployment, model = owner
            routes.append(replace(
                route, model_id=model.id, model_name=model.name, deployment_id=deployment.id,
                deployment_org_id=deployment.org_id, lora_id=lora_id,
                host_deployment_id=route.deployment_id,
            ))  # fmt: skip
    return routes


async def load_default_projects(session: AsyncSession) -> dict[str, str]:
    """Organisation id -> its `default` project id (where org-wide keys' usage goes)."""
    query = select(ProjectRow.org_id, ProjectRow.id).where(ProjectRow.name == "default")
    return {org_id: project_id for org_id, project_id in (await session.execute(query)).all()}


async def load_project_limits(session: AsyncSession) -> dict[str, tuple[int | None, int | None]]:
    """Project id -> (requests/min, tokens/min), for projects that have limits."""
    query = select(ProjectRow.id, ProjectRow.rpm, ProjectRow.tpm).where(
        (ProjectRow.rpm.is_not(None)) | (ProjectRow.tpm.is_not(None))
    )
    return {project_id: (rpm, tpm) for project_id, rpm, tpm in (await session.execute(query)).all()}


async def replica_states(session: AsyncSession) -> dict[str, int]:
    """How many replicas are in each state (for /metrics)."""
    query = select(ReplicaRow.state, func.count()).group_by(ReplicaRow.state)
    return {state: int(count) for state, count in (await session.execute(query)).all()}


@dataclass(frozen=True)
class Wakeable:
    """A deployment a request for its model waits for rather than being refused: one
    that scales to zero (minimum 0, maximum ≥ 1) starts a replica (for a fine-tuned model
    served by shared replicas, `model_id` is that model and the deployment is its base's);
    a shared one (`shared`) has its adapter loaded by a replica of its base (a job's model
    just succeeded, or a replica with the adapter replacing one without it)."""

    deployment_id: str
    org_id: str | None
    model_id: str
    status: str
    status_reason: str
    shared: bool = False


async def load_wakeable(session: AsyncSession) -> list[Wakeable]:
    """Deployments at minimum 0, under their own model and under each fine-tuned model
    whose shared deployment their replicas would serve (`jobs/deployments/sharing.py`):
    a request for such a model wakes its base; and shared deployments whose adapter is
    being loaded."""
    query = select(DeploymentRow).where(
        DeploymentRow.deleted.is_(False),
        DeploymentRow.min_replicas == 0,
        DeploymentRow.max_replicas > 0,
        DeploymentRow.sharing != SHARED,  # its base's replicas serve it: none to wake
    )
    at_zero = list((await session.execute(query)).scalars())
    own = [_wakeable(row, row.model_id, row.org_id) for row in at_zero]
    return own + await _hosts_to_wake(session, at_zero) + await _loading(session)


async def _loading(session: AsyncSession) -> list[Wakeable]:
    """Shared deployments whose adapter is wanted loaded (jobs/deployments/sharing.is_active)
    or was unloaded while idle (maximum 1: jobs/deployments/idle_adapters.py): a request
    waits while a replica of the base loads it (again)."""
    query = select(
        DeploymentRow.id, DeploymentRow.org_id, DeploymentRow.model_id,
        DeploymentRow.status, DeploymentRow.status_reason,
    ).where(
        DeploymentRow.deleted.is_(False),
        DeploymentRow.sharing == SHARED,
        or_(DeploymentRow.replicas > 0, DeploymentRow.max_replicas > 0),
    )  # fmt: skip
    return [Wakeable(*row, shared=True) for row in (await session.execute(query)).all()]


async def _hosts_to_wake(session: AsyncSession, at_zero: list[DeploymentRow]) -> list[Wakeable]:
    """For each active shared deployment of a fine-tuned model of these deployments' models,
    those of them that may hold its adapter (`hosting.adapter_hosts`: the platform's, or
    its own organisation's, on an engine that holds adapters)."""
    if not at_zero:
        return []
    query = (
        select(DeploymentRow.model_id, ModelRow.base_model_id, DeploymentRow.org_id)
        .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
        .where(
            DeploymentRow.sharing == SHARED,
            DeploymentRow.deleted.is_(False),
            (DeploymentRow.replicas > 0) | (DeploymentRow.max_replicas > 0),
            ModelRow.base_model_id.in_({row.model_id for row in at_zero}),
        )
    )
    shared = [
        (model_id, Owner(base, org_id))
        for model_id, base, org_id in (await session.execute(query)).all()
        if base is not None
    ]
    hosts = await adapter_hosts(session, [owner for _, owner in shared])
    waking = {row.id for row in at_zero}
    found: dict[tuple[str, str], Wakeable] = {}
    for model_id, owner in shared:
        for host in hosts[owner]:
            if host.id in waking:
                found[(host.id, model_id)] = _wakeable(host, model_id, owner.org_id)
    return list(found.values())


def _wakeable(row: DeploymentRow, model_id: str, org_id: str | None) -> Wakeable:
    return Wakeable(row.id, org_id, model_id, row.status, row.status_reason)
