from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator

from souverain.core.schemas.common import Out, StrictRequest
from souverain.core.schemas.policies import _jurisdictions
from souverain.core.schemas.tenancy import Slug
from souverain.core.schemas.usage import DeploymentStartup

Strategy = Literal["spread", "binpack"]
Sharing = Literal["dedicated", "shared"]
MAX_REPLICAS = 64  # a deployment's hard bound, autoscaled or not


class ScalingFields(StrictRequest):
    """Autoscaling, checked by the service (a clear 400 naming the field). Without a minimum
    and a maximum the count is fixed at `replicas`."""

    min_replicas: int | None = Field(
        default=None, description="Fewest replicas (0: scale to zero when idle)."
    )
    max_replicas: int | None = Field(default=None, description=f"Most replicas (≤ {MAX_REPLICAS}).")
    target_busy_per_replica: float | None = Field(
        default=None,
        description="Outstanding requests (answering or waiting) per replica the controller "
        "aims at; above it for two readings, it adds replicas. Default 4.",
    )
    scale_down_idle_s: int | None = Field(
        default=None,
        description="Seconds the load must stay below target before replicas are removed "
        "(the last one, at minimum 0). Default 300.",
    )


class DeploymentCreateRequest(ScalingFields):
    name: Slug
    model: str = Field(max_length=128)
    replicas: int = Field(default=1, ge=0, le=64)
    datacenters: list[Slug] = Field(default_factory=list, max_length=64, description="Empty: any.")
    cpus: float = Field(default=1.0, gt=0, le=512)
    gpus: int = Field(default=0, ge=0, le=16)
    engine_args: dict[str, str | int | float | bool] = Field(default_factory=dict, max_length=32)
    org: str | None = Field(default=None, max_length=64)
    jurisdictions: list[str] | None = Field(
        default=None, max_length=300, description="Countries or EU/EEA."
    )
    certifications: list[str] = Field(
        default_factory=list, max_length=32, description="All required."
    )
    operator_jurisdictions: list[str] | None = Field(default=None, max_length=300)
    strategy: Strategy = "spread"
    reasoning_default: bool = Field(
        default=False,
        description="Answer in reasoning mode unless the client asks otherwise (models "
        "marked reasoning only).",
    )
    sharing: Sharing = Field(
        default="dedicated",
        description="A fine-tuned model's: `dedicated` starts replicas of its own; `shared` "
        "loads its adapter on the replicas of its base model's deployments (the "
        "platform's or your organisation's), beside other adapters, where your placement "
        "policy allows.",
    )

    _check = field_validator("jurisdictions", "operator_jurisdictions")(_jurisdictions)


class DeploymentUpdateRequest(ScalingFields):
    """Change what is given; replicas that no longer comply are drained and re-placed."""

    replicas: int | None = Field(default=None, ge=0, le=64)
    datacenters: list[Slug] | None = Field(default=None, max_length=64)
    jurisdictions: list[str] | None = Field(default=None, max_length=300)
    certifications: list[str] | None = Field(default=None, max_length=32)
    operator_jurisdictions: list[str] | None = Field(default=None, max_length=300)
    strategy: Strategy | None = None
    reasoning_default: bool | None = None

    _check = field_validator("jurisdictions", "operator_jurisdictions")(_jurisdictions)


class ReplicaAdapter(Out):
    model_id: str
    state: str  # loading | loaded | refused
    error: str = ""


class Replica(Out):
    id: str
    state: str
    datacenter_id: str
    node_id: str | None
    reason: str
    engine_restarts: int
    runtime: str | None = None  # what serves the engine on its node (llamacpp: llama-server…)
    slots: int | None = None  # requests it decodes at once, as it says
    # chosen for release: takes no new request, stops once its requests are finished
    draining_since: datetime | None = None
    # a shared replica's adapters the caller may see (its organisation's): the model id and,
    # if the node refused it, why
    adapters: list[ReplicaAdapter] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime


class Deployment(Out):
    id: str
    name: str
    model: str
    org_id: str | None
    engine: str
    replicas: int  # the count wanted now (the controller's, when autoscaled)
    ready_replicas: int
    autoscaling: bool = False
    min_replicas: int
    max_replicas: int
    target_busy_per_replica: float
    scale_down_idle_s: int
    scaled_at: datetime | None = None  # the last scaling decision
    scaling_reason: str = ""
    datacenters: list[str]
    jurisdictions: list[str] | None
    certifications: list[str]
    operator_jurisdictions: list[str] | None
    strategy: str
    reasoning_default: bool = False
    sharing: str = "dedicated"  # dedicated | shared (its adapter on its base's replicas)
    adapters: int = 0  # adapters its replicas hold (for you: your organisation's only)
    cpus: float
    gpus: int
    engine_args: dict[str, Any]
    status: str
    status_reason: str
    replica_details: list[Replica]
    # Its replicas' starts (wall time, CPU seconds, energy): for its own organisation and
    # operators only, null for anyone else (a tenant whose request woke a platform replica)
    startup: DeploymentStartup | None = None
    created_at: datetime
    updated_at: datetime


class UsageSums(Out):
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    energy_j: float  # attributed where the replica's energy interval has closed, else estimated
    energy_wh: float
    co2e_g: float
    energy_estimated: int  # of `requests`, those whose energy is still the estimate


class AdapterUsage(UsageSums):
    model_id: str  # a fine-tuned model of yours on this shared replica
    deployment_id: str  # its shared deployment


class ReplicaUsage(Out):
    replica_id: str
    model: UsageSums  # requests for the deployment's own model (yours, for a tenant)
    adapters: list[AdapterUsage]  # your fine-tuned models' requests on this replica


class DeploymentUsage(UsageSums):
    """The deployment's own requests over the window, in all and per replica."""

    deployment_id: str
    since: datetime
    until: datetime
    replicas: list[ReplicaUsage]
