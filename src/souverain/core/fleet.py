"""Plain records passed between the controller, `cluster/` and the engine actors."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

DATACENTER_LABEL = "souverain.io/datacenter"
RAY_NAMESPACE = "souverain"
REPLICA_NAME_DOMAIN = "replicas.souverain.internal"  # never resolved: a name in certificates


def replica_server_name(replica_id: str) -> str:
    """The one name a replica's certificate carries, and the one the gateway demands of the
    engine it calls: an engine holding another replica's certificate is refused."""
    return f"{replica_id.replace('_', '-').lower()}.{REPLICA_NAME_DOMAIN}"


@dataclass(frozen=True)
class ObservedNode:
    """A node as Ray reports it."""

    id: str
    address: str
    alive: bool
    resources: dict[str, float]
    available: dict[str, float]
    labels: dict[str, str]
    refusal: str | None = None  # why it gets no work though alive (core/node_identity.py)

    @property
    def datacenter_id(self) -> str | None:
        return self.labels.get(DATACENTER_LABEL)


@dataclass(frozen=True)
class ObjectGrant:
    """One encrypted object a node may read (or write): where it is and its data key.
    The key travels inside the cluster only, like a replica secret; it is never logged."""

    store_uri: str
    object_key: str
    object_id: str  # authenticated with every segment (the file id, or the job's object id)
    data_key: bytes = field(repr=False)
    sha256: str | None = None


@dataclass(frozen=True)
class EngineCredential:
    """A replica's TLS certificate and key, issued by the installation's authority when the
    replica is placed. The key travels inside the cluster only, like the replica secret,
    and reaches the engine as a 0600 file in memory-backed storage (node/scratch.py)."""

    certificate: bytes  # PEM: the replica's certificate
    key: bytes = field(repr=False)  # PEM, PKCS#8
    authority: bytes = b""  # PEM: the installation's CA, for the node's own probes


@dataclass(frozen=True)
class HostedAdapter:
    """A fine-tuned model's LoRA adapter that a shared base replica holds beside others:
    the engine applies it only to requests the gateway routes to that model."""

    model_id: str
    grant: ObjectGrant  # the sealed adapter, with the sha256 its plaintext must match
    path: str | None = None  # where the node decrypted it (set on the node)


# A node's reason for an adapter it could not fetch from its store (a brief store or
# network error): unlike a file that is not for the base or does not match its checksum,
# it is tried again, at most once per change of the replica's adapters.
ADAPTER_UNAVAILABLE = "the adapter could not be fetched from its store; it is tried again"


@dataclass(frozen=True)
class AdapterState:
    """What became of one hosted adapter on the node: loaded (`error` empty), with the
    number this run of the engine gave it (`lora_id`, what requests name), or refused."""

    model_id: str
    error: str = ""
    lora_id: int | None = None


@dataclass(frozen=True)
class AdapterChange:
    """What a running shared replica did when asked to hold another set of adapters
    (`ReplicaActor.change_adapters`): loaded and unloaded them while its engine serves, or
    not at all (`runtime_load` False: its engine loads adapters at start only, so the
    controller replaces the replica instead)."""

    runtime_load: bool
    adapters: tuple[AdapterState, ...] = ()  # what it holds now, loaded or refused
    kept: tuple[str, ...] = ()  # models it could not unload yet: a running request uses them


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
    adapter: ObjectGrant | None = None  # a fine-tuned model's sealed LoRA adapter
    adapter_path: str | None = None  # where the node decrypted it (set on the node)
    # A shared base replica's adapters, in the order the engine numbers them (llama-server)
    adapters: tuple[HostedAdapter, ...] = ()
    avoid_nodes: tuple[str, ...] = ()  # nodes with the label that may not hold it (refused)
    tls: EngineCredential | None = None  # None only for engines tests start by hand

    @property
    def actor_name(self) -> str:
        return actor_name_for(self.replica_id)

    @property
    def server_name(self) -> str:
        return replica_server_name(self.replica_id)


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
    runtime: str | None = None  # the program serving the engine (llamacpp: llama-server…)
    slots: int | None = None  # requests it decodes at once, when it says
    # When `energy_j` was read, on the node: the energy interval ends there, not when the
    # status reached the controller (a request settled in between was not in the reading).
    measured_at: datetime | None = None
    # When each step of the engine's last start happened (name, wall-clock seconds on the
    # node): how long a cold start took, and where (`node/supervisor.py` names the steps).
    start_marks: tuple[tuple[str, float], ...] = ()
    adapters: tuple[AdapterState, ...] = ()  # a shared replica's, in the spec's order
    # CPU seconds the engine process (and its children) spent from its spawn to `ready` in
    # its last start; None until it is ready, or where the node cannot read it.
    start_cpu_s: float | None = None

    @property
    def start_wall_s(self) -> float | None:
        """Wall-clock seconds of the engine's last start, from `spawned` to `ready` (the
        span `start_cpu_s` covers); None until it is ready."""
        marks = dict(self.start_marks)
        if "spawned" not in marks or "ready" not in marks:
            return None
        return max(0.0, marks["ready"] - marks["spawned"])


UNANSWERED = "actor not answering"


def unanswered_status() -> ReplicaStatus:
    """The status the controller assumes when a replica's actor did not answer in time
    (restarting, its node lost): starting, and no meter was read (`energy_j` 0 is not a
    reading: taken as one it would look like a restarted counter, see `carries_reading`)."""
    return ReplicaStatus(state="starting", url=None, node_id=None, restarts=0, error=UNANSWERED)


def carries_reading(status: ReplicaStatus) -> bool:
    """Whether `status` came from the actor, with its energy counter; False for the one
    made up by `unanswered_status` (an actor's own statuses have a version above 0)."""
    return not (status.version == 0 and status.error == UNANSWERED)


@dataclass(frozen=True)
class TrainingSpec:
    """Everything a training actor needs; travels through Ray."""

    job_id: str
    datacenter_id: str
    base_artifact_uri: str
    base_artifact_sha256: str | None
    training: tuple[ObjectGrant, ...]
    validation: ObjectGrant | None
    hyperparameters: dict[str, Any]
    output_store_uri: str  # checkpoints and results go here, sealed with output_key
    output_key: bytes = field(repr=False)
    cpus: float = 1.0
    gpus: int = 0
    threads: int = 1
    resume: ObjectGrant | None = None  # the last checkpoint to carry on from
    resume_step: int = 0
    watts_per_core: float = 10.0
    model_roots: tuple[str, ...] = ()
    attempt: int = 1
    method: str = "supervised"  # supervised | reinforcement
    grader: dict[str, Any] | None = None  # reinforcement: a checked grader
    init_adapter: ObjectGrant | None = None  # a PEFT adapter tar to start from
    avoid_nodes: tuple[str, ...] = ()  # nodes with the label that may not hold it (refused)

    @property
    def actor_name(self) -> str:
        return training_actor_name(self.job_id)


def training_object_id(job_id: str, name: str) -> str:
    """The id a training job's sealed object is encrypted under (its AAD)."""
    return f"{job_id}/{name}"


def training_object_key(job_id: str, name: str) -> str:
    return f"ft_{job_id}_{name}"  # stores take plain names


def training_actor_name(job_id: str) -> str:
    return f"souverain-training-{job_id}"


@dataclass(frozen=True)
class SealedObject:
    """An object a training actor wrote: checkpoints and results."""

    name: str  # checkpoint-12 | adapter.gguf | adapter-peft.tar
    object_key: str
    object_id: str
    sha256: str  # of the plaintext
    size: int
    step: int
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainingStatus:
    """What a training actor reports; `events` are those after the seq the caller has."""

    state: (
        str  # starting | validating | running | pausing | paused | succeeded | failed | cancelled
    )
    node_id: str | None
    step: int = 0
    total_steps: int = 0
    tokens: int = 0
    tokens_per_s: float | None = None
    train_loss: float | None = None
    error: str = ""
    error_code: str = ""
    events: tuple[dict[str, Any], ...] = ()
    event_seq: int = 0  # the seq of the last event
    sealed: tuple[SealedObject, ...] = ()
    energy_j: float = 0.0
    energy_source: str = "estimate"
    cpu_seconds: float = 0.0
    wall_s: float = 0.0
    attempt: int = 1
