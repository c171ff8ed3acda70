"""The batch runner: every server process runs one; batches are claimed with a lease.

Invariant: every line of a batch is answered exactly once in its output. A line goes
through the gateway's one `execute` (gateway/pipeline.py), as a live request does: the
same admission, sovereignty routing, fair queue (behind live requests), metering and
settlement, with a usage record whose id is the same on every attempt; the record's
settlement and the line's result are written in one transaction. A runner killed at any
point leaves each line answered or pending: the next runner to take the lease answers
the pending ones, taking over an open record instead of opening a second. The lease is
renewed by a heartbeat; a runner that loses it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import statistics
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select

from souverain.core.errors import (
    InvalidRequestError,
    QuotaExceededError,
    RateLimitedError,
    ServiceUnavailableError,
    SouverainError,
    UpstreamError,
    answer_of,
    validation_message,
)
from souverain.core.principal import Principal
from souverain.db.jobs import BatchRow, FileRow
from souverain.db.tables import CarbonIntensityRow, DatacenterRow, UsageRecordRow, utcnow
from souverain.energy.carbon import cleanest_start, hour_of
from souverain.evidence import audit
from souverain.files import service as files
from souverain.files.uploads import Checked, Owner, store_plaintext
from souverain.gateway import calls, pipeline
from souverain.gateway.admission import AlreadySettled
from souverain.gateway.schemas import ENDPOINTS
from souverain.gateway.state import AppState
from souverain.jobs.batches import service as batches
from souverain.jobs.lease import LeaseLost
from souverain.tenancy.auth import principal_for_key

log = logging.getLogger(__name__)

RUNNER = audit.Actor("system", "batch-runner")
MAX_ERRORS = 100


@dataclass(frozen=True)
class Line:
    number: int  # from 1, across the batch's files
    custom_id: str
    body: dict[str, Any]


class BatchRunner:
    def __init__(
        self, state: AppState, *, lease_s: float, poll_s: float = 1.0, concurrency: int = 16
    ) -> None:
        self._state = state
        self._lease_s = lease_s
        self._lease = batches.batch_lease(lease_s)
        self._poll_s = poll_s
        self._concurrency = concurrency

    async def run(self) -> None:
        while True:
            try:
                claimed = await batches.claim(self._state.sessions, lease_s=self._lease_s)
            except Exception:
                log.exception("claiming a batch failed")
                claimed = None
            if claimed is None:
                await asyncio.sleep(self._poll_s)
                continue
            await self._hold(*claimed)

    async def _hold(self, batch_id: str, token: str) -> None:
        """Work on the batch while its lease's heartbeat runs; stop at once if it is lost."""
        work = asyncio.create_task(self._process(batch_id, token))
        try:
            if not await self._lease.heartbeat(self._state.sessions, batch_id, token, work):
                log.warning("lost the lease on batch %s; stopping", batch_id)
            with contextlib.suppress(asyncio.CancelledError, LeaseLost):
                await work
        except Exception:
            log.exception("batch %s failed in this runner; another will take it up", batch_id)
        finally:
            if not work.done():
                work.cancel()
            with contextlib.suppress(Exception):
                await batches.release(self._state.sessions, batch_id=batch_id, token=token)

    async def _process(self, batch_id: str, token: str) -> None:
        async with self._state.sessions() as session:
            batch = await batches.held(session, batch_id=batch_id, token=token)
            try:
                principal = await principal_for_key(session, key_id=batch.key_id)
            except SouverainError as error:
                principal = None
                reason = f"the key that created this batch can no longer act: {error.message}"
        if principal is None:
            await self._fail(batch_id, token, [{"code": "key_revoked", "message": reason}])
        elif batch.status == "validating":
            await self._validate(batch, token, principal)
        elif batch.status == "in_progress":
            await self._execute(batch, token, principal)
        elif batch.status in ("finalizing", "cancelling"):
            await self._finalize(batch_id, token, principal)

    # validating

    async def _validate(self, batch: BatchRow, token: str, principal: Principal) -> None:
        errors: list[dict[str, Any]] = []
        items: list[tuple[int, str]] = []
        seen: set[str] = set()
        first_model: str | None = batch.model
        async for line in self._lines(batch, principal, errors):
            first_model = first_model or str(line.body.get("model") or "") or None
            problem = self._check(batch, principal, line, seen)
            if problem is not None:
                errors.append({"code": "invalid_request", "message": problem, "line": line.number})
            else:
                items.append((line.number, line.custom_id))
            if len(errors) >= MAX_ERRORS:
                break
        if not items and not errors:
            errors.append({"code": "empty_file", "message": "The input has no lines."})
        if errors:
            await self._fail(batch.id, token, errors)
            return
        not_before, saved = await self._carbon_plan(batch, principal, first_model, len(items))
        async with self._state.sessions.begin() as session:
            row = await batches.held(session, batch_id=batch.id, token=token)
            for start in range(0, len(items), 500):
                await batches.add_items(session, batch_id=row.id, items=items[start : start + 500])
            row.total, row.not_before, row.co2e_saved_g = len(items), not_before, saved
            batches.set_times(row, "in_progress")
            if not_before is not None:
                row.lock_token, row.lock_expires_at = None, None  # claimable again at not_before
            await audit.record(
                session, actor=RUNNER, action="batch.validated", org_id=row.org_id,
                target_type="batch", target_id=row.id,
                details={"lines": len(items), "not_before": not_before.isoformat()
                         if not_before else None, "co2e_saved_g": saved},
            )  # fmt: skip

    def _check(
        self, batch: BatchRow, principal: Principal, line: Line, seen: set[str]
    ) -> str | None:
        if line.custom_id in seen:
            return f"custom_id {line.custom_id!r} is used twice"
        seen.add(line.custom_id)
        name = line.body.get("model") or batch.model
        if not name:
            return "the body names no model (and the batch gives none)"
        if self._state.routes.visible_model(principal, str(name)) is None:
            return f"the model {name!r} does not exist or you do not have access to it"
        try:
            parsed = ENDPOINTS[batch.endpoint][1].model_validate({**line.body, "model": name})
            calls.check_body(parsed, self._state.settings)  # a live request's bounds
        except ValidationError as error:
            return validation_message(list(error.errors(include_url=False)))[0]
        except InvalidRequestError as error:
            return error.message
        return None

    async def _lines(
        self, batch: BatchRow, principal: Principal, errors: list[dict[str, Any]]
    ) -> AsyncIterator[Line]:
        """The batch's input lines in order, numbered across its files."""
        number = 0
        for file_id in batch.input_file_ids:
            async with self._state.sessions() as session:
                row = await session.get(FileRow, file_id)
                if row is None or row.status != "processed":
                    errors.append({"code": "file_gone", "message": f"file {file_id} is gone"})
                    return
                plaintext = await files.open_file(
                    session, row=row, master_key=self._state.master_key
                )
            async for raw in _split_lines(plaintext):
                number += 1
                try:
                    value = json.loads(raw)
                except ValueError:
                    errors.append({"code": "invalid_json", "message": "not JSON", "line": number})
                    continue
                if not isinstance(value, dict) or not isinstance(value.get("body"), dict):
                    errors.append({"code": "invalid_request", "message": "no body object",
                                   "line": number})  # fmt: skip
                    continue
                url = value.get("url")
                if url is not None and url != batch.endpoint:
                    errors.append({"code": "invalid_request", "line": number,
                                   "message": f"the line is for {url}, the batch for {batch.endpoint}"})  # fmt: skip
                    continue
                yield Line(number, str(value.get("custom_id") or number), value["body"])

    async def _carbon_plan(
        self, batch: BatchRow, principal: Principal, name: str | None, lines: int
    ) -> tuple[datetime | None, float]:
        """Start later when the grid of the datacenters the lines may run in will be
        cleaner and the deadline still holds with room to spare; the CO2e that saves."""
        model = self._state.routes.visible_model(principal, name) if name else None
        if model is None:
            return None, 0.0
        routes, _ = self._state.routes.compliant_routes(principal, model)
        if not routes:
            return None, 0.0
        now = utcnow()
        dcs = sorted({route.datacenter_id for route in routes})
        async with self._state.sessions() as session:
            rows = (
                await session.execute(
                    select(CarbonIntensityRow).where(
                        CarbonIntensityRow.datacenter_id.in_(dcs),
                        CarbonIntensityRow.hour >= hour_of(now),
                    )
                )
            ).scalars()
            by_hour: dict[datetime, list[float]] = {}
            for row in rows:
                by_hour.setdefault(row.hour, []).append(row.g_per_kwh)
            static = statistics.mean(
                (await session.execute(
                    select(DatacenterRow.carbon_intensity).where(DatacenterRow.id.in_(dcs))
                )).scalars()
            )  # fmt: skip
            per_line_s, per_line_j = await _line_costs(session, model.name)
        if not by_hour:
            return None, 0.0
        series = {hour: statistics.mean(values) for hour, values in by_hour.items()}
        slots = max(1, sum(route.slots for route in routes))
        duration_h = lines * per_line_s / min(slots, self._concurrency) / 3600
        start, then, at_once = cleanest_start(
            series, now=now, deadline=batch.deadline, duration_h=duration_h, static=static
        )
        if start <= now:
            return None, 0.0
        return start, round((at_once - then) * lines * per_line_j / 3.6e6, 6)

    # in progress

    async def _execute(self, batch: BatchRow, token: str, principal: Principal) -> None:
        async with self._state.sessions() as session:
            pending = await batches.pending_lines(session, batch_id=batch.id)
            key = await batches.result_key(session, row=batch, master_key=self._state.master_key)
        gate = asyncio.Semaphore(self._concurrency)
        tasks: set[asyncio.Task[None]] = set()
        stop = asyncio.Event()
        watcher = asyncio.create_task(self._watch(batch.id, token, stop))
        try:
            async for line in self._lines(batch, principal, []):
                if stop.is_set():
                    break
                if line.number not in pending:
                    continue
                await gate.acquire()
                task = asyncio.create_task(self._run_line(batch, token, principal, key, line))
                tasks.add(task)
                task.add_done_callback(_done(tasks, gate))
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("a line of batch %s failed: %r", batch.id, outcome)
        finally:
            watcher.cancel()
            for task in tasks:
                task.cancel()
        async with self._state.sessions.begin() as session:
            row = await batches.held(session, batch_id=batch.id, token=token)
            if row.status == "in_progress":
                if not await batches.pending_lines(session, batch_id=row.id):
                    batches.set_times(row, "finalizing")
                elif utcnow() > row.deadline:
                    batches.set_times(row, "finalizing")
                    row.errors = [*row.errors, {"code": "expired", "message": "the window ended"}]
            status = row.status
        if status in ("finalizing", "cancelling"):
            await self._finalize(batch.id, token, principal)
        # else: lines are left (a line failed unexpectedly): the next claim resumes them

    async def _watch(self, batch_id: str, token: str, stop: asyncio.Event) -> None:
        """Stop scheduling lines when the batch is cancelled or its window ends."""
        while not stop.is_set():
            await asyncio.sleep(1.0)
            async with self._state.sessions() as session:
                row = await batches.held(session, batch_id=batch_id, token=token)
                if row.status != "in_progress" or utcnow() > row.deadline:
                    stop.set()

    async def _run_line(
        self, batch: BatchRow, token: str, principal: Principal, key: bytes, line: Line
    ) -> None:
        ticket = calls.Line(batch.id, batches.line_record_id(batch.id, line.number))
        while True:
            try:
                status, body = 200, await self._call(batch, principal, line, ticket)
                break
            except AlreadySettled:
                return  # answered by an earlier attempt (its result is kept)
            except (ServiceUnavailableError, RateLimitedError) as error:
                if (
                    ticket.exchange is not None  # admitted: it was processed, it is answered
                    or isinstance(error, QuotaExceededError)
                    or utcnow() > batch.deadline
                ):
                    status, body = _error_answer(error)
                    break
                wait = error.retry_after_s if isinstance(error, RateLimitedError) else 2.0
                await asyncio.sleep(min(30.0, max(0.5, wait)))
            except (SouverainError, ValidationError) as error:
                status, body = _error_answer(error)
                break
        result = _result_line(line, ticket.record_id, status, body)
        sealed = batches.seal_result(key, batch.id, line.number, result)
        async with self._state.sessions.begin() as session:
            await batches.held(session, batch_id=batch.id, token=token)
            if ticket.exchange is not None:
                await ticket.exchange.settle_in(session)
            answered = await batches.answer_line(
                session, batch_id=batch.id, line=line.number, ok=status == 200, sealed=sealed
            )
        if answered:
            self._state.metrics.batch_lines.labels("ok" if status == 200 else "failed").inc()

    async def _call(
        self, batch: BatchRow, principal: Principal, line: Line, ticket: calls.Line
    ) -> Any:
        """One line through the gateway's own `execute`, exactly as a live request goes,
        with its own record id and its batch's priority: the answer's JSON, or the
        refusal raised (`ticket.exchange` says whether it was admitted)."""
        name = str(line.body.get("model") or batch.model)
        endpoint, schema = ENDPOINTS[batch.endpoint]
        stream = {} if endpoint == "embeddings" else {"stream": False}
        parsed = schema.model_validate({**line.body, "model": name, **stream})
        call = await calls.prepare(
            self._state, principal, endpoint, parsed,
            mistral_client=batch.shape == "mistral", line=ticket,
        )  # fmt: skip
        answer = await pipeline.execute(call)
        return json.loads(answer.content)

    # finalizing

    async def _finalize(self, batch_id: str, token: str, principal: Principal) -> None:
        async with self._state.sessions.begin() as session:
            row = await batches.held(session, batch_id=batch_id, token=token)
            cancelled = row.status == "cancelling"
            expired = any(error.get("code") == "expired" for error in row.errors)
            key = await batches.result_key(session, row=row, master_key=self._state.master_key)
            for line in await batches.pending_lines(session, batch_id=row.id):
                code = "batch_cancelled" if cancelled else "batch_expired"
                answer = {"error": {"code": code, "message": f"the batch ended: {code}"}}
                sealed = batches.seal_result(key, row.id, line, json.dumps(answer).encode())
                await batches.answer_line(
                    session, batch_id=row.id, line=line, ok=False, sealed=sealed
                )
        owner = Owner(row.org_id, row.project_id, row.key_id,
                      self._state.routes.policy_for(principal), RUNNER)  # fmt: skip
        output = await self._write_results(row, key, owner, ok=True)
        errors = await self._write_results(row, key, owner, ok=False)
        async with self._state.sessions.begin() as session:
            row = await batches.held(session, batch_id=batch_id, token=token)
            row.output_file_id = output.id if output else None
            row.error_file_id = errors.id if errors else None
            final = "cancelled" if cancelled else "expired" if expired else "completed"
            batches.set_times(row, final)
            self._state.metrics.batches.labels(final).inc()
            row.lock_token, row.lock_expires_at = None, None
            await audit.record(
                session, actor=RUNNER, action=f"batch.{final}", org_id=row.org_id,
                target_type="batch", target_id=row.id,
                details={"completed": row.completed, "failed": row.failed},
            )  # fmt: skip

    async def _write_results(
        self, row: BatchRow, key: bytes, owner: Owner, *, ok: bool
    ) -> FileRow | None:
        if (row.completed if ok else row.failed) == 0:
            return None
        wanted = "done" if ok else "failed"
        count = 0

        async def lines() -> AsyncIterator[bytes]:
            nonlocal count
            after = 0
            while True:
                async with self._state.sessions() as session:
                    page = await batches.results(
                        session, batch_id=row.id, after_line=after, limit=500
                    )
                if not page:
                    return
                for item in page:
                    after = item.line
                    if item.status == wanted and item.result is not None:
                        count += 1
                        yield batches.open_result(key, row.id, item.line, item.result) + b"\n"

        async def finish(*_: object) -> Checked:
            suffix = "output" if ok else "errors"
            return Checked(
                f"{row.id}_{suffix}.jsonl", "batch_output" if ok else "batch_error", count
            )

        return await store_plaintext(self._state, owner=owner, plaintext=lines(), finish=finish)

    async def _fail(self, batch_id: str, token: str, errors: list[dict[str, Any]]) -> None:
        async with self._state.sessions.begin() as session:
            row = await batches.held(session, batch_id=batch_id, token=token)
            row.errors = errors[:MAX_ERRORS]
            batches.set_times(row, "failed")
            row.lock_token, row.lock_expires_at = None, None
            await audit.record(
                session, actor=RUNNER, action="batch.failed", org_id=row.org_id,
                target_type="batch", target_id=row.id, details={"errors": len(errors)},
            )  # fmt: skip


def _done(tasks: set[asyncio.Task[None]], gate: asyncio.Semaphore) -> Any:
    def callback(task: asyncio.Task[None]) -> None:
        tasks.discard(task)
        gate.release()

    return callback


async def _split_lines(plaintext: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    buffer = bytearray()
    async for piece in plaintext:
        buffer += piece
        while (end := buffer.find(b"\n")) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            if line.strip():
                yield line
    if buffer.strip():
        yield bytes(buffer)


def _error_answer(error: Exception) -> tuple[int, Any]:
    """The status and body a refused or failed line is answered with: the API's own."""
    if isinstance(error, ValidationError):
        message, param = validation_message(list(error.errors(include_url=False)))
        error = InvalidRequestError(message, param=param)
    if not isinstance(error, SouverainError):
        error = UpstreamError(str(error)[:300])
    return answer_of(error)


def _result_line(line: Line, record_id: str, status: int, body: Any) -> bytes:
    """OpenAI's output line (Mistral's has the same fields)."""
    answer: dict[str, Any] = {
        "id": f"batch_req_{record_id.removeprefix('req_')}",
        "custom_id": line.custom_id,
        "response": {"status_code": status, "request_id": record_id, "body": body},
        "error": None,
    }
    if status != 200 and isinstance(body, dict) and "error" in body:
        answer["error"] = {"code": body["error"].get("code"), "message": body["error"]["message"]}
    return json.dumps(answer, ensure_ascii=False).encode()


async def _line_costs(session: Any, model: str) -> tuple[float, float]:
    """Seconds and joules a request of this model took lately (defaults before any)."""
    query = (
        select(UsageRecordRow.latency_ms, UsageRecordRow.energy_estimate_j)
        .where(UsageRecordRow.model == model, UsageRecordRow.status == "ok")
        .order_by(UsageRecordRow.created_at.desc())
        .limit(200)
    )
    rows = (await session.execute(query)).all()
    latencies = [r[0] / 1000 for r in rows if r[0]]
    energies = [r[1] for r in rows if r[1]]
    return (statistics.median(latencies) if latencies else 2.0,
            statistics.median(energies) if energies else 30.0)  # fmt: skip
