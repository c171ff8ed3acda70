"""An in-memory cluster: what the controller's loops use from `cluster/`, without Ray.

State tests of long work (deployments, fine-tuning) run against it in milliseconds; the
same loops run against a real Ray cluster in the integration tests. Nodes are declared
with their datacenter label and resources; a started replica is `ready` at once unless
told otherwise; a training actor reports whatever status the test sets. `hold_training`
makes training starts block (in their worker thread, as a slow Ray call does) until
released.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field, replace

from souverain.core.fleet import (
    ADAPTER_UNAVAILABLE,
    DATACENTER_LABEL,
    AdapterChange,
    AdapterState,
    HostedAdapter,
    ObservedNode,
    ReplicaSpec,
    ReplicaStatus,
    TrainingSpec,
    TrainingStatus,
)


@dataclass
class MemoryCluster:
    nodes: list[ObservedNode] = field(default_factory=list)
    replicas: dict[str, ReplicaStatus] = field(default_factory=dict)
    replica_specs: dict[str, ReplicaSpec] = field(default_factory=dict)
    trainings: dict[str, TrainingStatus] = field(default_factory=dict)
    training_specs: dict[str, TrainingSpec] = field(default_factory=dict)
    signals: list[tuple[str, str]] = field(default_factory=list)
    energy_limits: dict[str, float] = field(default_factory=dict)  # a pause's, per actor
    stopped: list[str] = field(default_factory=list)
    # replicas whose engine loads adapters at start only (by actor name), and every
    # change of adapters asked of a running one: (actor name, models wanted)
    start_only: set[str] = field(default_factory=set)
    changes: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    busy_adapters: set[str] = field(default_factory=set)  # models a running request uses
    _next_lora: dict[str, int] = field(default_factory=dict)
    training_starting: threading.Event = field(default_factory=threading.Event)
    _training_gate: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._training_gate.set()

    def add_node(self, node_id: str, datacenter_id: str, *, cpus: float = 8.0) -> None:
        resources = {"CPU": cpus, "memory": 16 * 2**30}
        self.nodes.append(
            ObservedNode(
                node_id,
                "10.0.0.1",
                True,
                resources,
                dict(resources),
                {DATACENTER_LABEL: datacenter_id},
            )
        )

    def hold_training(self) -> None:
        """Training starts block from now on; `training_starting` is set when one does."""
        self._training_gate.clear()

    def release_training(self) -> None:
        self._training_gate.set()

    # What the loops call (`jobs.facade.ClusterFacade`).

    def observe_nodes(self) -> list[ObservedNode]:
        return list(self.nodes)

    def start_replica(self, spec: ReplicaSpec) -> None:
        self.replica_specs[spec.actor_name] = spec
        node = next((n.id for n in self.nodes if n.datacenter_id == spec.datacenter_id), None)
        self.replicas[spec.actor_name] = ReplicaStatus(
            "ready", f"http://127.0.0.1:1/{spec.replica_id}", node, 0, version=1,
            adapters=tuple(
                AdapterState(a.model_id, lora_id=i) for i, a in enumerate(spec.adapters)
            ),
        )  # fmt: skip

    def replica_status(self, actor_name: str, timeout_s: float = 5.0) -> ReplicaStatus | None:
        return self.replicas.get(actor_name)

    async def watch_replica(
        self, actor_name: str, version: int, timeout_s: float
    ) -> ReplicaStatus | None:
        status = self.replicas.get(actor_name)
        if status is not None and status.version == version:
            await asyncio.sleep(min(timeout_s, 0.05))
        return status

    def change_adapters(
        self, actor_name: str, wanted: tuple[HostedAdapter, ...]
    ) -> AdapterChange | None:
        """As a patched llama-server's node does: a new adapter gets the next id, an
        unloaded one's id is not given again, one in use by a request stays (`kept`)."""
        status = self.replicas.get(actor_name)
        if status is None:
            return None
        if actor_name in self.start_only:
            return AdapterChange(runtime_load=False)
        self.changes.append((actor_name, tuple(a.model_id for a in wanted)))
        names = {a.model_id for a in wanted}
        held = {s.model_id: s for s in status.adapters}
        kept = tuple(m for m in held if m not in names and m in self.busy_adapters)
        states = {  # one its store could not serve is tried again, as a node does
            m: s for m, s in held.items()
            if (m in names or m in kept) and s.error != ADAPTER_UNAVAILABLE
        }  # fmt: skip
        following = self._next_lora.get(actor_name, len(status.adapters))
        for adapter in wanted:
            if adapter.model_id not in states:
                states[adapter.model_id] = AdapterState(adapter.model_id, lora_id=following)
                following += 1
        self._next_lora[actor_name] = following
        adapters = tuple(sorted(states.values(), key=lambda s: s.model_id))
        self.replicas[actor_name] = replace(status, adapters=adapters, version=status.version + 1)
        return AdapterChange(True, adapters, kept)

    def stop_replica(self, actor_name: str) -> None:
        self.stopped.append(actor_name)
        self.replicas.pop(actor_name, None)

    def replica_actor_names(self) -> list[str]:
        return list(self.replicas)

    def start_training(self, spec: TrainingSpec) -> None:
        if not self._training_gate.is_set():
            self.training_starting.set()
            self._training_gate.wait(timeout=60)
        self.training_specs[spec.actor_name] = spec
        node = next((n.id for n in self.nodes if n.datacenter_id == spec.datacenter_id), None)
        self.trainings[spec.actor_name] = TrainingStatus("running", node, attempt=spec.attempt)

    def training_status(
        self, actor_name: str, after_seq: int, timeout_s: float = 10.0
    ) -> TrainingStatus | None:
        return self.trainings.get(actor_name)

    def signal_training(
        self, actor_name: str, what: str, energy_limit_j: float | None = None
    ) -> None:
        self.signals.append((actor_name, what))
        if energy_limit_j is not None:
            self.energy_limits[actor_name] = energy_limit_j

    def stop_training(self, actor_name: str) -> None:
        self.stopped.append(actor_name)
        self.trainings.pop(actor_name, None)

    def training_actor_names(self) -> list[str]:
        return list(self.trainings)

    def set_training(self, actor_name: str, **changes: object) -> None:
        """Change what a training actor reports (its state, step, sealed objects…)."""
        self.trainings[actor_name] = replace(self.trainings[actor_name], **changes)  # type: ignore[arg-type]
