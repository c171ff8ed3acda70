"""The Ray actor that owns one engine replica on one node.

It is created detached and named (`souverain-replica-<id>`), with a `label_selector`
naming its datacenter, so Ray itself refuses to run it anywhere else; a node whose own
certificate binds it to another datacenter (a label declared by hand) refuses it before
anything of the tenant is fetched. It binds the engine to the node's private address, and
reports the engine's URL and health to the controller.
"""

from __future__ import annotations

import ray

from souverain.cluster import ray_tls
from souverain.core.fleet import AdapterChange, HostedAdapter, ReplicaSpec, ReplicaStatus
from souverain.node.engines.registry import launcher_for
from souverain.node.supervisor import EngineSupervisor


class ReplicaActor:
    def __init__(self, spec: ReplicaSpec) -> None:
        ray_tls.check_this_node_serves(spec.datacenter_id)
        host = spec.bind_host or ray.util.get_node_ip_address()
        node_id = ray.get_runtime_context().get_node_id()
        gpus = [int(i) for i in ray.get_gpu_ids()] if spec.gpus else []
        self._supervisor = EngineSupervisor(
            spec,
            launcher_for(spec.engine, spec.engine_args),
            host=host,
            node_id=node_id,
            gpu_indices=gpus,
        )

        self._supervisor.start()

    def status(self) -> ReplicaStatus:
        return self._supervisor.status()

    def watch(self, version: int, timeout_s: float) -> ReplicaStatus:
        """A long poll: answers as soon as the status is newer than `version`."""
        return self._supervisor.watch(version, timeout_s)

    def change_adapters(self, wanted: tuple[HostedAdapter, ...]) -> AdapterChange:
        """A shared replica holds `wanted` from now on, loaded while its engine serves."""
        return self._supervisor.change_adapters(wanted)

    def engine_pid(self) -> int | None:
        return self._supervisor.pid

    def stop(self) -> bool:
        self._supervisor.stop()
        return True
