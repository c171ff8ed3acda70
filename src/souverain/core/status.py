"""The states of every kind of long work, with their ended (terminal) sets, in one place.

Each enum is a `StrEnum`, so a member is the very string stored in the database and shown
by the API: `row.status == FineTuningStatus.RUNNING` and `row.status == "running"` agree.
A job in an ended state is never taken up again; the active sets are what a loop follows.

    deployments   pending → starting → ready | degraded | failed | unschedulable
                  draining (scaled to zero, its last replicas finish their requests) → stopped,
                  deleting (its replicas stop, then the row goes)
    replicas      starting → ready | failed | stopped; lost (its actor is gone: replaced);
                  a ready one may drain (`draining_since`) before it stops
    fine-tuning   validating_files → validated | queued → running ⇄ paused
                  → succeeded | failed | cancelled
    batches       validating → in_progress → finalizing → completed
                  cancelling → cancelled; failed; expired
"""

from __future__ import annotations

from enum import StrEnum


class DeploymentStatus(StrEnum):
    PENDING = "pending"
    STARTING = "starting"
    READY = "ready"
    DEGRADED = "degraded"
    FAILED = "failed"
    UNSCHEDULABLE = "unschedulable"
    DRAINING = "draining"
    STOPPED = "stopped"
    DELETING = "deleting"


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    STOPPED = "stopped"
    LOST = "lost"


class FineTuningStatus(StrEnum):
    VALIDATING_FILES = "validating_files"
    VALIDATED = "validated"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Wanted(StrEnum):
    """What the tenant (or a changed policy) asks of a fine-tuning job; the controller acts."""

    RUN = "run"
    PAUSE = "pause"
    CANCEL = "cancel"
    MOVE = "move"  # checkpoint, then carry on in a datacenter the policy allows


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"


FINE_TUNING_ENDED = (
    FineTuningStatus.SUCCEEDED,
    FineTuningStatus.FAILED,
    FineTuningStatus.CANCELLED,
)
FINE_TUNING_ACTIVE = tuple(s for s in FineTuningStatus if s not in FINE_TUNING_ENDED)
FINE_TUNING_FOLLOWED = (FineTuningStatus.QUEUED, FineTuningStatus.RUNNING)
"""Jobs the fine-tuning loop takes up (and paused ones whose worker still runs)."""

BATCH_ENDED = (
    BatchStatus.COMPLETED,
    BatchStatus.FAILED,
    BatchStatus.EXPIRED,
    BatchStatus.CANCELLED,
)
BATCH_ACTIVE = tuple(s for s in BatchStatus if s not in BATCH_ENDED)

DEPLOYMENT_FAILING = frozenset({DeploymentStatus.FAILED, DeploymentStatus.DEGRADED})
"""Entering or leaving these is audited; starting and scaling are not."""

TRAINING_ENDED = ("succeeded", "failed", "cancelled", "paused")
"""States in which a training actor has stopped working (`TrainingStatus.state`)."""
