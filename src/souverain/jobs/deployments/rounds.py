"""What one round of the deployment reconciler read (`Loaded`) and what it decided
(`Outcome`), between its load, process and apply steps (`reconciler.py`).

The steps that decide (`autoscaling.py`, `draining.py`, `sharing.py`) write into the
outcome; only the apply step, after the lease's fence, writes it to the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from souverain.core.fleet import ObjectGrant
from souverain.core.policy import Policy
from souverain.db.tables import DeploymentRow, ModelArtifactRow, ModelRow, ReplicaRow
from souverain.jobs.deployments import sharing


@dataclass
class Loaded:
    deployment: DeploymentRow
    model: ModelRow
    artifact: ModelArtifactRow | None
    replicas: list[ReplicaRow]
    policy: Policy
    adapter: ObjectGrant | None = None  # a fine-tuned model's LoRA adapter
    adapter_error: str = ""
    busy: tuple[int, int, int] = (0, 0, 0)  # (in flight, waiting, draining), as reported
    now: datetime | None = None
    hosted: list[sharing.Hosted] = field(default_factory=list)  # adapters it may hold
    hosts: list[ReplicaRow] = field(default_factory=list)  # a shared one: its base's replicas
    org_models: set[str] = field(default_factory=set)  # and its organisation's shared models
    erased: set[str] = field(default_factory=set)  # adapters held whose keys are gone
    last_asked: datetime | None = None  # a shared one: its latest request (idle_adapters.py)


@dataclass(frozen=True)
class Event:
    action: str
    target_type: str
    target_id: str
    details: dict[str, object]


@dataclass
class Outcome:
    deletes: list[str] = field(default_factory=list)
    inserts: list[ReplicaRow] = field(default_factory=list)
    status: str = "pending"
    reason: str = ""
    remove_deployment: bool = False
    org_id: str | None = None
    events: list[Event] = field(default_factory=list)  # audited with the write-back
    scaling: dict[str, object] = field(default_factory=dict)  # the row's new scaling values
    drains: list[str] = field(default_factory=list)  # replicas that begin to drain
    undrains: list[str] = field(default_factory=list)  # draining replicas needed again
    adapters: dict[str, list[dict[str, object]]] = field(default_factory=dict)  # changed live

    def replica_event(self, action: str, replica_id: str, **details: object) -> None:
        self.events.append(Event(action, "replica", replica_id, details))
