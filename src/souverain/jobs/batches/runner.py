"""The batch runner: every server process runs one; batches are claimed with a lease.

Invariant: every line of a batch is answered exactly once in its output. A line goes
through the gateway's one `execute` (gateway/pipeline.py), as a live request does: the
same admission, sovereignty routing, fair queue (behind live requests), metering and
settlement, with a usage record whose id is the same on every attempt; the record's
settlement and the line's result are written in one transaction. A runner killed at any
point leaves each line answered or pending: the next runner to take the lease answers
the pending ones, taking over an open record instead of opening a second. The lease is
renewed by a heartbeat; a runner that loses it stops.

Shared fairly: a runner holds several batches at once (`at_once`), at most `per_org` of one
organisation across every server (`batches.claim`), so another tenant's batch starts while
a long one runs; their lines meet in the gateway's fair queue. No batch holds the database:
its items, its finalisation and its cancellation are written `batches.CHUNK` lines per
short transaction, each followed by a pause twice as long as it took, so leader leases, usage
settlements and other tenants' writes get their turn. The batch's key is checked before
each line (`KeyWatch`): a revoked key stops its batch, whose remaining lines fail with the
reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from pydantic import ValidationError

from souverain.core.errors import (
    AuthenticationError,
    InvalidRequestError,
    QuotaExceededError,
    RateLimitedError,
    ServiceUnavailableError,
    SouverainError,
    quoted,
    validation_message,
)
from souverain.core.principal import Principal
from souverain.db.jobs import BatchRow, FileRow
from souverain.db.tables import utcnow
from souverain.evidence import audit
from souverain.files.uploads import Checked, Owner, store_plaintext
from souverain.gateway import calls, pipeline
from souverain.gateway.admission import AlreadySettled
from souverain.gateway.schemas import ENDPOINTS
from souverain.gateway.state import AppState
from souverain.jobs.batches import service as batches
from souverain.jobs.batches.carbon import carbon_plan
from souverain.jobs.batches.lines import (
    KeyWatch,
    Line,
    error_answer,
    read_lines,
    result_line,
    revoked_reason,
)
from souverain.jobs.lease import LeaseLost
from souverain.tenancy.auth import principal_for_key

log = logging.getLogger(__name__)

RUNNER = audit.Actor("system", "batch-runner")
MAX_ERRORS = 20  # kept in the batch object, which lists return by the hundred


class BatchRunner:
    def __init__(
        self,
        state: AppState,
        *,
        lease_s: float,
        poll_s: float = 1.0,
        concurrency: int = 16,
        at_once: int = 8,
        per_org: int = 2,
    ) -> None:
        self._state = state
        self._lease_s = lease_s
        self._lease = batches.batch_lease(lease_s)
        self._poll_s = poll_s
        self._concurrency = concurrency
        self._at_once = at_once
        self._per_org = per_org

    async def run(self) -> None:
        held: set[asyncio.Task[None]] = set()
        try:
            while True:
                claimed = None
                if len(held) < self._at_once:
                    try:
                        claimed = await batches.claim(
                            self._state.sessions, lease_s=self._lease_s, per_org=self._per_org
                        )
                    except Exception:
                        log.exception("claiming a batch failed")
                if claimed is None:
                    await asyncio.sleep(self._poll_s)
                    continue
                task = asyncio.create_task(self._hold(*claimed))
                held.add(task)
                task.add_done_callback(held.discard)
        finally:
            for task in list(held):
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)

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
                principal, reason = None, revoked_reason(error)
        if principal is None:
            await self._fail(batch_id, token, [{"code": "key_revoked", "message": reason}])
        elif batch.status == "validating":
            if await self._validate(batch, token, principal):  # and runs now: carry on
                await self._execute(batch, token, KeyWatch(self._state, batch.key_id, principal))
        elif batch.status == "in_progress":
            await self._execute(batch, token, KeyWatch(self._state, batch.key_id, principal))
        elif batch.status in ("finalizing", "cancelling"):
            await self._finalize(batch_id, token, principal)

    # validating

    async def _validate(self, batch: BatchRow, token: str, principal: Principal) -> bool:
        """Check every line and write its item; whether the batch may run at once."""
        errors: list[dict[str, Any]] = []
        items: list[tuple[int, str]] = []
        seen: set[str] = set()
        first_model: str | None = batch.model
        async for line in read_lines(self._state, batch, errors):
            first_model = first_model or str(line.body.get("model") or "") or None
            problem = self._check(batch, principal, line, seen)
            if problem is not None:
                errors.append({"code": "invalid_request", "message": problem, "line": line.number})
            else:
                items.append((line.number, line.custom_id))
            if len(errors) >= MAX_ERRORS:
                break
            if line.number % 256 == 0:
                await asyncio.sleep(0)  # parsing is CPU work: live requests go in between
        if not items and not errors:
            errors.append({"code": "empty_file", "message": "The input has no lines."})
        if errors:
            await self._fail(batch.id, token, errors)
            return False
        not_before, saved = await carbon_plan(
            self._state, batch, principal, first_model, len(items), self._concurrency
        )
        await self._add_items(batch.id, token, items)
        async with self._state.sessions.begin() as session:
            row = await batches.held(session, batch_id=batch.id, token=token)
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
        return not_before is None

    async def _add_items(self, batch_id: str, token: str, items: list[tuple[int, str]]) -> None:
        """One pending item per line, a chunk per transaction (after those an earlier
        runner wrote before it stopped)."""
        async with self._state.sessions() as session:
            after = await batches.last_item(session, batch_id=batch_id)
        items = [item for item in items if item[0] > after]
        for start in range(0, len(items), batches.CHUNK):
            async with self._writing(), self._state.sessions.begin() as session:
                await batches.held(session, batch_id=batch_id, token=token)
                chunk = items[start : start + batches.CHUNK]
                await batches.add_items(session, batch_id=batch_id, items=chunk)

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[None]:
        """A chunk's transaction, then a pause twice as long as it took: at most a third of
        the database's write time goes to one batch's bulk work."""
        started = time.monotonic()
        yield
        await asyncio.sleep(min(1.0, 2 * (time.monotonic() - started)))

    def _check(
        self, batch: BatchRow, principal: Principal, line: Line, seen: set[str]
    ) -> str | None:
        if line.custom_id in seen:
            return f"custom_id {quoted(line.custom_id)} is used twice"
        seen.add(line.custom_id)
        name = line.body.get("model") or batch.model
        if not name:
            return "the body names no model (and the batch gives none)"
        if self._state.routes.visible_model(principal, str(name)) is None:
            return f"the model {quoted(name)} does not exist or you do not have access to it"
        try:
            parsed = ENDPOINTS[batch.endpoint][1].model_validate({**line.body, "model": name})
            calls.check_body(parsed, self._state.settings)  # a live request's bounds
        except ValidationError as error:
            return validation_message(list(error.errors(include_url=False)))[0]
        except InvalidRequestError as error:
            return error.message
        return None

    # in progress

    async def _execute(self, batch: BatchRow, token: str, keys: KeyWatch) -> None:
        async with self._state.sessions() as session:
            pending = await batches.pending_lines(session, batch_id=batch.id)
            key = await batches.result_key(session, row=batch, master_key=self._state.master_key)
        gate = asyncio.Semaphore(self._concurrency)
        tasks: set[asyncio.Task[None]] = set()
        stop = asyncio.Event()
        watcher = asyncio.create_task(self._watch(batch.id, token, stop))
        try:
            async for line in read_lines(self._state, batch, []):
                if stop.is_set():
                    break
                if line.number not in pending:
                    continue
                await gate.acquire()
                if await keys.current() is None:
                    break
                task = asyncio.create_task(self._run_line(batch, token, keys, key, line))
                tasks.add(task)
                task.add_done_callback(_done(tasks, gate))
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("a line of batch %s failed: %r", batch.id, outcome)
        finally:
            watcher.cancel()
            for task in tasks:
                task.cancel()
        if keys.principal is None:
            await self._fail(batch.id, token, [{"code": "key_revoked", "message": keys.reason}])
            return
        await self._after_lines(batch.id, token, keys.principal)

    async def _after_lines(self, batch_id: str, token: str, principal: Principal) -> None:
        async with self._state.sessions.begin() as session:
            row = await batches.held(session, batch_id=batch_id, token=token)
            if row.status == "in_progress":
                if not await batches.first_pending(session, batch_id=row.id, limit=1):
                    batches.set_times(row, "finalizing")
                elif utcnow() > row.deadline:
                    batches.set_times(row, "finalizing")
                    row.errors = [*row.errors, {"code": "expired", "message": "the window ended"}]
            status = row.status
        if status in ("finalizing", "cancelling"):
            await self._finalize(batch_id, token, principal)
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
        self, batch: BatchRow, token: str, keys: KeyWatch, key: bytes, line: Line
    ) -> None:
        ticket = calls.Line(batch.id, batches.line_record_id(batch.id, line.number))
        while True:
            try:
                principal = await keys.current()
                if principal is None:
                    raise AuthenticationError(keys.reason)
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
                    status, body = error_answer(error)
                    break
                wait = error.retry_after_s if isinstance(error, RateLimitedError) else 2.0
                await asyncio.sleep(min(30.0, max(0.5, wait)))
            except (SouverainError, ValidationError) as error:
                status, body = error_answer(error)
                break
        result = result_line(line, ticket.record_id, status, body)
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
        async with self._state.sessions() as session:
            row = await batches.held(session, batch_id=batch_id, token=token)
        cancelled = row.status == "cancelling"
        expired = any(error.get("code") == "expired" for error in row.errors)
        code = "batch_cancelled" if cancelled else "batch_expired"
        await self._answer_pending(batch_id, token, code, f"the batch ended: {code}")
        async with self._state.sessions() as session:
            row = await batches.held(session, batch_id=batch_id, token=token)
            key = await batches.result_key(session, row=row, master_key=self._state.master_key)
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

    async def _answer_pending(self, batch_id: str, token: str, code: str, message: str) -> None:
        """Answer every line not run with the error that ended the batch: a chunk at a time,
        sealed before its short transaction."""
        answer = json.dumps({"error": {"code": code, "message": message}}).encode()
        key: bytes | None = None
        while True:
            async with self._state.sessions() as session:
                row = await batches.held(session, batch_id=batch_id, token=token)
                lines = await batches.first_pending(session, batch_id=batch_id, limit=batches.CHUNK)
                if lines and key is None:
                    key = await batches.result_key(
                        session, row=row, master_key=self._state.master_key
                    )
            if key is not None and lines:
                sealed = [(n, batches.seal_result(key, batch_id, n, answer)) for n in lines]
                async with self._writing(), self._state.sessions.begin() as session:
                    await batches.held(session, batch_id=batch_id, token=token)
                    await batches.fail_lines(session, batch_id=batch_id, answers=sealed)
            if len(lines) < batches.CHUNK:
                return

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
        if errors[0]["code"] == "key_revoked":  # lines left by a batch that was running
            await self._answer_pending(batch_id, token, "key_revoked", errors[0]["message"])
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
