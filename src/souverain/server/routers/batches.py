"""/v1/batches (OpenAI) and /v1/batch/jobs (Mistral): one implementation, two shapes.

A batch runs without a client waiting: every line through the same admission, routing,
metering and audit as a live request, behind live traffic; results come back as files.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import Field

from souverain.core.errors import InvalidRequestError
from souverain.core.policy import check_may_keep
from souverain.core.principal import Principal
from souverain.core.schemas.batches import (
    Batch,
    BatchError,
    BatchExtras,
    MistralBatch,
    OpenAIBatch,
    RequestCounts,
)
from souverain.core.schemas.common import ListPage, Metadata, MistralList, StrictRequest
from souverain.db.jobs import BatchRow
from souverain.files.uploads import Checked, store_plaintext
from souverain.gateway.file_lines import LineChecker
from souverain.gateway.state import AppState
from souverain.jobs.batches import service as batches
from souverain.server.deps import PrincipalDep, SessionDep, StateDep, storing_owner
from souverain.server.pagination import OBJECTS, Cursor, cursor, list_page, mistral_list

router = APIRouter(tags=["batches"])


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


def _ts(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def batch_of(row: BatchRow) -> Batch:
    """The batch read once: both shapes are drawn from it."""
    times = {
        name: _ts(getattr(row, name))
        for name in ("in_progress_at", "finalizing_at", "completed_at", "failed_at",
                     "expired_at", "cancelling_at", "cancelled_at")
    }  # fmt: skip
    return Batch(
        id=row.id,
        endpoint=row.endpoint,
        status=row.status,
        model=row.model,
        input_file_ids=list(row.input_file_ids),
        metadata=row.metadata_,
        errors=[BatchError.model_validate(error) for error in row.errors],
        output_file_id=row.output_file_id,
        error_file_id=row.error_file_id,
        counts=RequestCounts(total=row.total, completed=row.completed, failed=row.failed),
        created_at=int(row.created_at.timestamp()),
        deadline=int(row.deadline.timestamp()),
        times=times,
        extras=BatchExtras(not_before=_ts(row.not_before), co2e_saved_g=row.co2e_saved_g),
    )


def openai_batch(row: BatchRow) -> OpenAIBatch:
    return batch_of(row).openai()


def mistral_batch(row: BatchRow) -> MistralBatch:
    return batch_of(row).mistral()


@router.post("/v1/batches", summary="Create a batch")
async def create_batch(
    body: BatchCreateRequest, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> OpenAIBatch:
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
    principal: PrincipalDep, session: SessionDep, page: Annotated[Cursor, cursor(OBJECTS)]
) -> ListPage[OpenAIBatch]:
    """Your batches (all of your organisation's, for its managers), newest first."""
    found = await batches.list_batches(
        session, principal=principal, limit=page.limit, after=page.after
    )
    return list_page([openai_batch(row) for row in found.rows], has_more=found.has_more)


@router.get("/v1/batches/{batch_id}", summary="Retrieve a batch")
async def retrieve_batch(
    batch_id: str, principal: PrincipalDep, session: SessionDep
) -> OpenAIBatch:
    return openai_batch(await batches.get_batch(session, principal=principal, batch_id=batch_id))


@router.post("/v1/batches/{batch_id}/cancel", summary="Cancel a batch")
async def cancel_batch(batch_id: str, principal: PrincipalDep, session: SessionDep) -> OpenAIBatch:
    """Lines in flight finish; the others are not run. The output keeps what was done."""
    row = await batches.cancel_batch(session, principal=principal, batch_id=batch_id)
    await session.commit()
    return openai_batch(row)


@router.post("/v1/batch/jobs", summary="Create a batch job (Mistral)")
async def create_batch_job(
    body: MistralBatchCreateRequest, principal: PrincipalDep, session: SessionDep, state: StateDep
) -> MistralBatch:
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


async def _inline_file(
    state: AppState, principal: Principal, requests: list[MistralRequest]
) -> str:
    """Inline requests become an input file like any other (encrypted, under the policy)."""
    owner = await storing_owner(state, principal)
    check_may_keep(owner.policy, "a batch", param="requests")
    checker = LineChecker("batch")

    async def lines() -> AsyncIterator[bytes]:
        for number, request in enumerate(requests, start=1):
            line = {"custom_id": request.custom_id or str(number), "body": request.body}
            raw = json.dumps(line).encode() + b"\n"
            checker.feed(raw)
            yield raw

    async def finish(*_: object) -> Checked:
        return Checked("inline-requests.jsonl", "batch", checker.finish())

    row = await store_plaintext(state, owner=owner, plaintext=lines(), finish=finish)
    return row.id


@router.get("/v1/batch/jobs", summary="List batch jobs (Mistral)")
async def list_batch_jobs(
    principal: PrincipalDep,
    session: SessionDep,
    page: int = Query(default=0, ge=0, le=0),
    page_size: int = Query(default=OBJECTS.maximum, ge=1, le=OBJECTS.maximum),
) -> MistralList[MistralBatch]:
    found = await batches.list_batches(session, principal=principal, limit=page_size, after=None)
    return mistral_list(found.rows, mistral_batch)


@router.get("/v1/batch/jobs/{job_id}", summary="Get a batch job (Mistral)")
async def get_batch_job(job_id: str, principal: PrincipalDep, session: SessionDep) -> MistralBatch:
    return mistral_batch(await batches.get_batch(session, principal=principal, batch_id=job_id))


@router.post("/v1/batch/jobs/{job_id}/cancel", summary="Cancel a batch job (Mistral)")
async def cancel_batch_job(
    job_id: str, principal: PrincipalDep, session: SessionDep
) -> MistralBatch:
    row = await batches.cancel_batch(session, principal=principal, batch_id=job_id)
    await session.commit()
    return mistral_batch(row)
