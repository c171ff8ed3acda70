from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from souverain.core.policy import UNRESTRICTED, Policy, Site


@dataclass(frozen=True)
class DatacenterView:
    id: str
    country: str
    operator_country: str
    certifications: frozenset[str]
    carbon_intensity: float

    @property
    def site(self) -> Site:
        return Site(self.id, self.country, self.operator_country, self.certifications)


@dataclass(frozen=True)
class NodeView:
    id: str
    datacenter_id: str | None
    alive: bool
    cpus_free: float
    gpus_free: float
    gpu_memory_gib: float = 0.0  # per GPU
    memory_free_gib: float = 0.0
    engines: frozenset[str] = frozenset({"llamacpp", "vllm", "embeddings"})
    models_on_disk: frozenset[str] = frozenset()
    refusal: str | None = None  # alive but given no work (its identity failed a check)


@dataclass(frozen=True)
class Snapshot:
    nodes: tuple[NodeView, ...]
    datacenters: dict[str, DatacenterView]


@dataclass(frozen=True)
class PlacementRequest:
    engine: str
    cpus: float
    gpus: int = 0
    gpu_memory_gib: float = 0.0  # per GPU; 0: any
    memory_gib: float = 0.0
    policy: Policy = field(
        default=UNRESTRICTED
    )  # the deployment's constraints ∩ its owner's ceiling
    strategy: Literal["spread", "binpack"] = "spread"
    model_name: str = ""


@dataclass(frozen=True)
class Placement:
    node_id: str
    datacenter_id: str


@dataclass(frozen=True)
class Unschedulable:
    reasons: dict[str, str] = field(default_factory=dict)  # node id -> why it was dropped
    summary: str = ""
