"""What the controller needs from the cluster; `cluster.ray_cluster.RayCluster` provides it."""

from __future__ import annotations

from typing import Protocol

from souverain.core.fleet import (
    AdapterChange,
    HostedAdapter,
    ObservedNode,
    ReplicaSpec,
    ReplicaStatus,
    TrainingSpec,
    TrainingStatus,
)


class ClusterFacade(Protocol):
    def observe_nodes(self) -> list[ObservedNode]: ...

    def start_replica(self, spec: ReplicaSpec) -> None: ...

    def replica_status(self, actor_name: str, timeout_s: float = 5.0) -> ReplicaStatus | None: ...

    async def watch_replica(
        self, actor_name: str, version: int, timeout_s: float
    ) -> ReplicaStatus | None: ...

    def change_adapters(
        self, actor_name: str, wanted: tuple[HostedAdapter, ...]
    ) -> AdapterChange | None: ...

    def stop_replica(self, actor_name: str) -> None: ...

    def replica_actor_names(self) -> list[str]: ...

    def start_training(self, spec: TrainingSpec) -> None: ...

    def training_status(
        self, actor_name: str, after_seq: int, timeout_s: float = 10.0
    ) -> TrainingStatus | None: ...

    def signal_training(
        self, actor_name: str, what: str, energy_limit_j: float | None = None
    ) -> None: ...

    def stop_training(self, actor_name: str) -> None: ...

    def training_actor_names(self) -> list[str]: ...
