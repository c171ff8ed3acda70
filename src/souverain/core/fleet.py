"""Plain records passed between the controller, `cluster/` and the engine actors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DATACENTER_LABEL = "souverain.io/datacenter"
RAY_NAMESPACE = "souverain"


@dataclass(frozen=True)
class ObservedNode:
    """A node as Ray reports it."""

    id: str
    address: str
    alive: bool
    resources: dict[str, float]
    available: dict[str, float]
    labels: dict[str, str]

    @property
    def datacenter_id(self) -> str | None:
        return self.labels.get(DATACENTER_LABEL)


@dataclass(frozen=True)
class ReplicaSpec:
    """Everything an engine actor needs to start serving; travels through Ray."""

    replica_id: str
    deployment_id: str
    model_name: str
    engine: str
    artifact_uri: str
    artifact_sha256: str | None
    secret: str
    datacenter_id: str
    cpus: float
    gpus: int
    threads: int
    context_length: int
    bind_host: str | None = None
    engine_args: dict[str, Any] = field(default_factory=dict)
    watts_per_core: float = 10.0  # for the CPU-time energy estimate, when nothing measures
    model_roots: tuple[str, ...] = ()  # where file:// artifacts may resolve to, on the node

    @property
    def actor_name(self) -> str:
        return actor_name_for(self.replica_id)


def actor_name_for(replica_id: str) -> str:
    return f"souverain-replica-{replica_id}"


@dataclass(frozen=True)
class ReplicaStatus:
    """What an engine actor reports about its engine process."""

    state: str  # starting | ready | failed | stopped
    url: str | None
    node_id: str | None
    restarts: int
    error: str = ""
    energy_j: float = 0.0  # cumulative since the actor started, across engine restarts
    energy_source: str = "estimate"
    version: int = 0  # grows with every change of state, url or error (for long polls)
    # What the engine's chat template adds to a prompt, measured once it is ready:
    # (tokens for a conversation of one empty message, tokens per further message).
    prompt_overhead: tuple[int, int] | None = None
