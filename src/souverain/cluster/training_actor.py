"""The Ray actor that runs one fine-tuning job on one node.

Created detached and named (`souverain-training-<job>`), with a `label_selector` naming
the datacenter the scheduler chose, so Ray itself refuses to run it anywhere else. It is
not restarted by Ray: if it dies, the controller starts a new one from the job's last
sealed checkpoint.
"""

from __future__ import annotations

import ray

from souverain.cluster import ray_tls
from souverain.core.fleet import TrainingSpec, TrainingStatus
from souverain.node.training_job import TrainingSupervisor


class TrainingActor:
    def __init__(self, spec: TrainingSpec) -> None:
        ray_tls.check_this_node_serves(spec.datacenter_id)  # as a replica actor does
        gpus = [int(i) for i in ray.get_gpu_ids()] if spec.gpus else []
        node_id = ray.get_runtime_context().get_node_id()
        self._supervisor = TrainingSupervisor(spec, node_id=node_id, gpu_indices=gpus)
        self._supervisor.start()

    def status(self, after_seq: int) -> TrainingStatus:
        return self._supervisor.status(after_seq)

    def pause(self, energy_limit_j: float | None = None) -> bool:
        self._supervisor.pause(energy_limit_j)
        return True

    def cancel(self) -> bool:
        self._supervisor.cancel()
        return True

    def worker_pid(self) -> int | None:
        return self._supervisor.worker_pid()
