"""What every state of a fine-tuning job is handled with: the cluster, the master key and
the installation's training defaults; and the Ray effects left for after a commit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from souverain.jobs.facade import ClusterFacade


@dataclass
class TrainingDefaults:
    threads: int
    file_stores: Mapping[str, str]
    watts_per_core: float = 10.0
    model_roots: tuple[str, ...] = ()
    serve_cpus: float = 1.0
    cpu_hours_per_job: float = 8.0  # reserved on the energy budget at each placement


@dataclass(frozen=True)
class Context:
    cluster: ClusterFacade
    master_key: bytes
    defaults: TrainingDefaults


Effects = list[tuple[str, str]]
"""(what, actor name): `stop`, or a signal (`pause`, `cancel`), sent once the apply has
committed the facts they follow from."""
