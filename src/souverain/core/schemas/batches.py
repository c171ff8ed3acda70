"""/v1/batches (OpenAI) and /v1/batch/jobs (Mistral): one batch, two shapes.

`Batch` is the batch read once; `openai()` and `mistral()` draw each API's object from it,
so a field is computed in one place whatever the shape.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

MISTRAL_STATUS = {
    "validating": "QUEUED", "in_progress": "RUNNING", "finalizing": "RUNNING",
    "completed": "SUCCESS", "failed": "FAILED", "expired": "TIMEOUT_EXCEEDED",
    "cancelling": "CANCELLATION_REQUESTED", "cancelled": "CANCELLED",
}  # fmt: skip


class BatchExtras(BaseModel):
    """souverain's own fields: the start the runner chose for a cleaner grid, and the
    CO2e it estimates that saves."""

    not_before: int | None
    co2e_saved_g: float | None


class BatchError(BaseModel):
    code: str | None = None
    message: str | None = None
    line: int | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    total: int
    completed: int
    failed: int


class OpenAIBatch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str | None
    completion_window: Literal["24h"] = "24h"
    status: str
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: RequestCounts
    metadata: dict[str, Any] | None
    souverain: BatchExtras


class MistralBatchError(BaseModel):
    message: str
    count: int = 1


class MistralBatch(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    input_files: list[str]
    endpoint: str
    model: str | None
    metadata: dict[str, Any] | None
    errors: list[MistralBatchError]
    status: str
    created_at: int
    started_at: int | None
    completed_at: int | None
    total_requests: int
    completed_requests: int
    succeeded_requests: int
    failed_requests: int
    output_file: str | None
    error_file: str | None
    souverain: BatchExtras


class Batch(BaseModel):
    """A batch as stored, its times in Unix seconds: the one source of both shapes."""

    id: str
    endpoint: str
    status: str
    model: str | None
    input_file_ids: list[str]
    metadata: dict[str, Any] | None
    errors: list[BatchError]
    output_file_id: str | None
    error_file_id: str | None
    counts: RequestCounts
    created_at: int
    deadline: int
    times: dict[str, int | None]  # in_progress_at … cancelled_at, as OpenAI names them
    extras: BatchExtras

    def openai(self) -> OpenAIBatch:
        return OpenAIBatch(
            id=self.id,
            endpoint=self.endpoint,
            errors=BatchErrors(data=self.errors) if self.errors else None,
            input_file_id=self.input_file_ids[0] if self.input_file_ids else None,
            status=self.status,
            output_file_id=self.output_file_id,
            error_file_id=self.error_file_id,
            created_at=self.created_at,
            expires_at=self.deadline,
            request_counts=self.counts,
            metadata=self.metadata,
            souverain=self.extras,
            **self.times,
        )

    def mistral(self) -> MistralBatch:
        times, counts = self.times, self.counts
        ended = ("completed_at", "failed_at", "cancelled_at", "expired_at")
        return MistralBatch(
            id=self.id,
            input_files=self.input_file_ids,
            endpoint=self.endpoint,
            model=self.model,
            metadata=self.metadata,
            errors=[MistralBatchError(message=e.message or "") for e in self.errors],
            status=MISTRAL_STATUS[self.status],
            created_at=self.created_at,
            started_at=times.get("in_progress_at"),
            completed_at=next((times[t] for t in ended if times.get(t)), None),
            total_requests=counts.total,
            completed_requests=counts.completed + counts.failed,
            succeeded_requests=counts.completed,
            failed_requests=counts.failed,
            output_file=self.output_file_id,
            error_file=self.error_file_id,
            souverain=self.extras,
        )
