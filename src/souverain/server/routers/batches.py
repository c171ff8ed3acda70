"""/v1/batches (OpenAI) and /v1/batch/jobs (Mistral): one implementation, two shapes.

A batch runs without a client waiting: every line through the same admission, routing,
metering and audit as a live request, behind live traffic; results come back as files.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from souverain.core.errors import InvalidRequestError
from souverain.core.schemas.common import Metadata, StrictRequest
from souverain.db.jobs import BatchRow
from souverain.evidence import audit
from souverain.files.uploads import Checked, Owner, principal_org, store_plaintext
from souverain.gateway.file_lines import LineChecker
from souverain.jobs.batches import service as batches
from souverain.server.deps import PrincipalDep, SessionDep, StateDep

router = APIRouter(tags=["batches"])

MISTRAL_STATUS = {
    "validating": "QUEUED", "in_progress": "RUNNING", "finalizing": "RUNNING",
    "completed": "SUCCESS", "failed": "FAILED", "expired": "TIMEOUT_EXCEEDED",
    "cancelling": "CANCELLATION_REQUESTED", "cancelled": "CANCELLED",
}  # fmt: skip


class BatchCreateRequest(StrictRequest):
    input_file_id: str = Field(max_length=64)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    completion_window: Literal["24h"] = "24h"
    metadata: Metadata = None


class MistralRequest(StrictRequest):
    custom_id: str | None = Field(default=None, max_length=512)
    body: dict[str, Any]


class MistralBatchCreateRequest(StrictRequest):
    input_files: list[str] | None = Field(default=None, max_length=64)
    requests: list[MistralRequest] | None = Field(default=None, max_length=10_000)
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]
    model: str | None = Field(default=None, max_length=128)
    agent_id: None = None
    metadata: Metadata = None
    timeout_hours: int = Field(default=24, ge=1, le=batches.MAX_WINDOW_H)


def _ts(moment: Any) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def openai_batch(row: BatchRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": {"object": "list", "data": row.errors} if row.errors else None,
        "input_file_id": row.input_file_ids[0] if row.input_file_ids else None,
        "completion_window": "24h",
        "status": row.status,
        "output_file_id": row.output_file_id,
        "error_file_id": row.error_file_id,
        "created_at": _ts(row.created_at),
        "in_progress_at": _ts(row.in_progress_at),
        "expires_at": _ts(row.deadline),
        "finalizing_at": _ts(row.finalizing_at),
        "completed_at": _ts(row.completed_at),
        "failed_at": _ts(row.failed_at),
        "expired_at": _ts(row.expired_at),
        "cancelling_at": _ts(row.cancelling_at),
        "cancelled_at": _ts(row.cancelled_at),
        "request_counts": {"total": row.total, "completed": row.completed, "failed": row.failed},
        "metadata": row.metadata_,
        "souverain": _extras(row),
    }


def mistral_batch(row: BatchRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "batch",
        "input_files": list(row.input_file_ids),
        "endpoint": row.endpoint,
        "model": row.model,
        "metadata": row.metadata_,
        "errors": [{"message": e.get("message", ""), "count": 1} for e in row.errors],
        "status": MISTRAL_STATUS[row.status],
        "created_at": _ts(row.created_at),
        "started_at": _ts(row.in_progress_at),
        "completed_at": _ts(
            row.completed_at or row.failed_at or row.cancelled_at or row.expired_at
        ),
        "total_requests": row.total,
        "completed_requests": row.completed + row.failed,
        "succeeded_requests": row.completed,
        "failed_requests": row.failed,
        "output_file": row.output_file_id,
        "error_file": row.error_file_id,
        "souverain": _extras(row),
    }


def _extras(row: BatchRow) -> dict[str, Any]:
    return {"not_before": _ts(row.not_before), "co2e_saved_g": row.co2e_saved_g}


@router.post("/v1/batches", summary="Create a batch")
async def create_batch(
    body: BatchCreateRequest, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    """Run every line of a `batch` file (OpenAI's line format) within 24 h, possibly later
    than now if the grid will be cleaner and the window allows it."""
    row = await batches.create_batch(
        session, principal=principal, shape="openai", endpoint=body.endpoint,
        input_file_ids=[body.input_file_id], model=None, metadata=body.metadata,
        window_h=24, master_key=state.master_key, project_id=state.routes.project_of(principal),
    )  # fmt: skip
    await session.commit()
    return openai_batch(row)


@router.get("/v1/batches", summary="List batches")
async def list_batches(
    principal: PrincipalDep,
    session: SessionDep,
    limit: int = Query(default=20, ge=1, le=100),
    after: str | None = Query(default=None, max_length=64),
) -> dict[str, Any]:
    rows = await batches.list_batches(session, principal=principal, limit=limit, after=after)
    data = [openai_batch(row) for row in rows]
    return {"object": "list", "data": data, "has_more": len(data) == limit,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}  # fmt: skip


@router.get("/v1/batches/{batch_id}", summary="Retrieve a batch")
async def retrieve_batch(
    batch_id: str, principal: PrincipalDep, session: SessionDep
) -> dict[str, Any]:
    return openai_batch(await batches.get_batch(session, principal=principal, batch_id=batch_id))


@router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch")
async def cancel_batch(
    batch_id: str, principal: PrincipalDep, session: SessionDep
) -> dict[str, Any]:
    """Lines in flight finish; the others are not run. The output keeps what was done."""
    row = await batches.cancel_batch(session, principal=principal, batch_id=batch_id)
    await session.commit()
    return openai_batch(row)


@router.post("/v1/batch/jobs", summary="Create a batch job (Mistral)")
async def create_batch_job(
    body: MistralBatchCreateRequest, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> dict[str, Any]:
    """Mistral's shape: `input_files`, or inline `requests`, for `endpoint` with `model`."""
    if bool(body.input_files) == bool(body.requests):
        raise InvalidRequestError("Give either input_files or requests.", param="input_files")
    file_ids = list(body.input_files or [])
    if body.requests:
        file_ids = [await _inline_file(state, principal, body.requests)]
    row = await batches.create_batch(
        session, principal=principal, shape="mistral", endpoint=body.endpoint,
        input_file_ids=file_ids, model=body.model, metadata=body.metadata,
        window_h=body.timeout_hours, master_key=state.master_key,
        project_id=state.routes.project_of(principal),
    )  # fmt: skip
    await session.commit()
    return mistral_batch(row)


async def _inline_file(state: Any, principal: Any, requests: list[MistralRequest]) -> str:
    """Inline requests become an input file like any other (encrypted, under the policy)."""
    checker = LineChecker("batch")

    async def lines() -> AsyncIterator[bytes]:
        for number, request in enumerate(requests, start=1):
            line = {"custom_id": request.custom_id or str(number), "body": request.body}
            raw = json.dumps(line).encode() + b"\n"
            checker.feed(raw)
            yield raw

    async def finish(*_: object) -> Checked:
        return Checked("inline-requests.jsonl", "batch", checker.finish())

    owner = Owner(principal_org(principal), state.routes.project_of(principal), principal.key_id,
                  state.routes.policy_for(principal), audit.actor_of(principal))  # fmt: skip
    row = await store_plaintext(state, owner=owner, plaintext=lines(), finish=finish)
    return row.id


@router.get("/v1/batch/jobs", summary="List batch jobs (Mistral)")
async def list_batch_jobs(
    principal: PrincipalDep,
    session: SessionDep,
    page: int = Query(default=0, ge=0, le=0),
    page_size: int = Query(default=100, ge=1, le=100),
) -> dict[str, Any]:
    rows = await batches.list_batches(session, principal=principal, limit=page_size, after=None)
    return {"object": "list", "data": [mistral_batch(row) for row in rows], "total": len(rows)}


@router.get("/v1/batch/jobs/{job_id}", summary="Get a batch job (Mistral)")
async def get_batch_job(
    job_id: str, principal: PrincipalDep, session: SessionDep
) -> dict[str, Any]:
    return mistral_batch(await batches.get_batch(session, principal=principal, batch_id=job_id))


@router.post("/v1/batch/jobs/{job_id}/cancel", summary="Cancel a batch job (Mistral)")
async def cancel_batch_job(
    job_id: str, principal: PrincipalDep, session: SessionDep
) -> dict[str, Any]:
    row = await batches.cancel_batch(session, principal=principal, batch_id=job_id)
    await session.commit()
    return mistral_batch(row)
