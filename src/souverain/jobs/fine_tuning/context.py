"""What every state of a fine-tuning job is handled with: the cluster, the master key and
the installation's training defaults; and the Ray effects left for after a commit."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from souverain.jobs.facade import ClusterFacade


@dataclass
class TrainingDefaults:
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


class Effect(NamedTuple):
    """`stop`, or a signal (`pause`, `cancel`) to an actor, sent once the apply has committed
    the facts it follows from."""

    what: str
    actor_name: str
    energy_limit_j: float | None = None  # a pause's: its worker is stopped at once there


Effects = list[Effect]
