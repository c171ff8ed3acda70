"""/v1/fine_tuning/jobs objects in OpenAI's and Mistral's shapes, and evaluations.

`Job` is a job read once; `openai()` and `mistral()` draw each API's object from it. A job
is shown in the shape it was created in; `souverain` carries what neither API has (the
one status behind both shapes, progress, where it runs, what it used).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

MISTRAL_STATUS = {
    "validating_files": "VALIDATING", "validated": "VALIDATED", "queued": "QUEUED",
    "running": "RUNNING", "paused": "QUEUED", "succeeded": "SUCCESS", "failed": "FAILED",
    "cancelled": "CANCELLED",
}  # fmt: skip


class JobExtras(BaseModel):
    state: str  # the one status set behind both shapes
    status_reason: str
    wanted: str
    step: int
    total_steps: int
    tokens: int
    tokens_per_s: float | None
    train_loss: float | None
    datacenter: str | None
    attempt: int
    cpu_seconds: float
    energy_j: float
    energy_source: str | None
    model_id: str | None


class JobError(BaseModel):
    code: str
    message: str | None
    param: str | None = None


class Hyperparameters(BaseModel):
    """OpenAI's three, as resolved."""

    n_epochs: int | None
    batch_size: int | None
    learning_rate_multiplier: float


class Supervised(BaseModel):
    hyperparameters: Hyperparameters


class Reinforcement(BaseModel):
    grader: dict[str, Any] | None
    hyperparameters: dict[str, Any]  # OpenAI's, and souverain's GRPO settings, resolved


class Evaluation(BaseModel):
    grader: dict[str, Any] | None


class Method(BaseModel):
    type: Literal["supervised", "reinforcement", "evaluation"]
    supervised: Supervised | None = None
    reinforcement: Reinforcement | None = None
    evaluation: Evaluation | None = None  # souverain: an evaluation job


class OpenAIJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None
    fine_tuned_model: str | None
    finished_at: int | None
    hyperparameters: Hyperparameters
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None
    training_file: str
    validation_file: str | None
    estimated_finish: int | None
    integrations: list[Any] = []
    metadata: dict[str, Any] | None
    method: Method
    souverain: JobExtras


class MistralHyperparameters(BaseModel):
    training_steps: int | None
    learning_rate: float | None
    weight_decay: float | None
    warmup_fraction: float | None
    epochs: float | None
    seq_len: int | None


class MistralJobMetadata(BaseModel):
    expected_duration_seconds: int | None = None
    cost: float | None = None
    cost_currency: str | None = None
    train_tokens_per_step: int | None = None
    train_tokens: int | None
    data_tokens: int | None = None
    estimated_start_time: int | None = None


class MistralEvent(BaseModel):
    name: str
    data: dict[str, Any] | None
    created_at: int


class MistralCheckpointMetrics(BaseModel):
    train_loss: float | None
    valid_loss: float | None


class MistralCheckpoint(BaseModel):
    metrics: MistralCheckpointMetrics
    step_number: int
    created_at: int


class MistralJob(BaseModel):
    id: str
    object: Literal["job"] = "job"
    auto_start: bool
    model: str
    status: str
    job_type: Literal["completion"] = "completion"
    created_at: int
    modified_at: int
    training_files: list[str]
    validation_files: list[str]
    hyperparameters: MistralHyperparameters
    fine_tuned_model: str | None
    suffix: str | None
    integrations: list[Any] = []
    trained_tokens: int
    metadata: MistralJobMetadata
    repositories: list[Any] = []
    events: list[MistralEvent] | None = None  # retrieving one job: its events
    checkpoints: list[MistralCheckpoint] | None = None  # and its checkpoints
    souverain: JobExtras


class Job(BaseModel):
    """A job as stored, its times in Unix seconds: the one source of both shapes."""

    id: str
    status: str
    created_at: int
    finished_at: int | None
    modified_at: int
    base_model: str
    org_id: str
    training_files: list[str]
    validation_file: str | None
    fine_tuned_model: str | None
    suffix: str | None
    seed: int
    auto_start: bool
    metadata: dict[str, Any] | None
    error: JobError | None
    trained_tokens: int
    result_files: list[str]
    resolved: dict[str, Any]  # what the recipe runs with
    hyperparameters: Hyperparameters
    method: Method
    estimated_finish: int | None
    extras: JobExtras

    def openai(self) -> OpenAIJob:
        return OpenAIJob(
            id=self.id,
            created_at=self.created_at,
            error=self.error,
            fine_tuned_model=self.fine_tuned_model,
            finished_at=self.finished_at,
            hyperparameters=self.hyperparameters,
            model=self.base_model,
            organization_id=self.org_id,
            result_files=self.result_files,
            seed=self.seed,
            status="queued" if self.status == "validated" else self.status,
            trained_tokens=self.trained_tokens if self.status == "succeeded" else None,
            training_file=self.training_files[0],
            validation_file=self.validation_file,
            estimated_finish=self.estimated_finish,
            metadata=self.metadata,
            method=self.method,
            souverain=self.extras,
        )

    def mistral(
        self,
        events: list[MistralEvent] | None = None,
        checkpoints: list[MistralCheckpoint] | None = None,
    ) -> MistralJob:
        resolved = self.resolved
        return MistralJob(
            id=self.id,
            auto_start=self.auto_start,
            model=self.base_model,
            status=MISTRAL_STATUS[self.status],
            created_at=self.created_at,
            modified_at=self.modified_at,
            training_files=self.training_files,
            validation_files=[self.validation_file] if self.validation_file else [],
            hyperparameters=MistralHyperparameters(
                training_steps=resolved.get("max_steps"),
                learning_rate=resolved.get("learning_rate"),
                weight_decay=resolved.get("weight_decay"),
                warmup_fraction=resolved.get("warmup_fraction"),
                epochs=resolved.get("n_epochs"),
                seq_len=resolved.get("seq_len"),
            ),
            fine_tuned_model=self.fine_tuned_model,
            suffix=self.suffix,
            trained_tokens=self.trained_tokens,
            metadata=MistralJobMetadata(train_tokens=self.trained_tokens),
            events=events,
            checkpoints=checkpoints,
            souverain=self.extras,
        )


class OpenAIEvent(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    data: dict[str, Any] | None
    type: str


class OpenAICheckpoint(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class EvaluationObject(BaseModel):
    """An evaluation of a model on a held-out file, and its result once it has one."""

    id: str
    object: Literal["evaluation"] = "evaluation"
    model: str
    file_id: str
    grader: dict[str, Any] | None
    max_tokens: int | None
    status: str
    created_at: int
    finished_at: int | None
    error: JobError | None
    result: dict[str, Any] | None
    souverain: JobExtras


class EvaluationList(BaseModel):
    object: Literal["list"] = "list"
    data: list[EvaluationObject]
