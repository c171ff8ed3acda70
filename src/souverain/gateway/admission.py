"""Admission: bound what a request may cost before any engine sees it.

estimate  an upper bound of its tokens (UTF-8 bytes of the prompt + per-message
          overhead, plus max_tokens or the model's context) and of its cost and energy
limits    requests and tokens per minute, per key and per project (429)
budgets   reserve the estimate on every monthly ledger that applies, atomically, in
          the transaction that opens the usage record (429 insufficient_quota)
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog.routes import ModelInfo
from souverain.core.principal import Principal
from souverain.db.tables import UsageRecordRow, utcnow
from souverain.gateway.ratelimit import Limit
from souverain.gateway.state import AppState
from souverain.metering import budgets, usage
from souverain.metering.budgets import Amounts, Budget
from souverain.metering.prices import Price
from souverain.metering.usage import OpenRecord

# A chat template's cost when the replica has not measured its own: generous defaults.
UNMEASURED_OVERHEAD = (256, 16)
SLACK_PER_MESSAGE = 4  # roles and names the measurement's empty messages did not have


@dataclass(frozen=True)
class Admitted:
    """A request let in: its usage record is open, its budgets hold a reservation, and it
    must be settled exactly once (`gateway.exchange.Exchange` sees to it)."""

    record: OpenRecord
    price: Price | None
    reserved: Amounts
    rate_headers: Mapping[str, str]
    journaled: bool  # opened through the usage journal, not the database
    started: float  # perf_counter() at admission

    @property
    def record_id(self) -> str:
        return self.record.id

    @property
    def ledger_ids(self) -> list[str]:
        return list(self.record.ledger_ids)


def prompt_bound(body: dict[str, Any], overhead: tuple[int, int] | None = None) -> int:
    """An upper bound of the prompt tokens the engine will count, whatever the input.

    A byte-level tokenizer yields at most one token per UTF-8 byte of what it reads (plus
    one for a leading space); the chat template adds a fixed part (a default system
    prompt, often) and a part per message, which each replica measures when it becomes
    ready (`overhead`). Everything a message carries that the template may render (content,
    name, tool calls) counts by its bytes, and so do tool definitions."""
    fixed, per_message = overhead or UNMEASURED_OVERHEAD
    if "messages" in body:
        messages = body["messages"]
        rendered = sum(_bytes_of(m) + per_message + SLACK_PER_MESSAGE for m in messages)
        tools = len(json.dumps(body["tools"]).encode()) if body.get("tools") else 0
        return fixed + rendered + tools
    text = body.get("prompt", body.get("input", ""))
    pieces = text if isinstance(text, list) else [text]
    return sum(len(str(piece).encode()) + SLACK_PER_MESSAGE for piece in pieces)


def _bytes_of(message: dict[str, Any]) -> int:
    content = message.get("content")
    size = len(content.encode()) if isinstance(content, str) else len(json.dumps(content).encode())
    for extra in ("name", "tool_calls", "tool_call_id"):
        if message.get(extra):
            size += len(json.dumps(message[extra]).encode())
    return size + 1


def completion_bound(endpoint: str, body: dict[str, Any], model: ModelInfo) -> int:
    if endpoint == "embeddings":
        return 0
    if body.get("max_tokens"):
        return int(body["max_tokens"])
    return 16 if endpoint == "completions" else model.context_length  # OpenAI's defaults


def limits_for(state: AppState, principal: Principal, project_id: str | None) -> list[Limit]:
    limits = []
    key_rpm = principal.rpm or state.settings.default_key_rpm
    key_tpm = principal.tpm or state.settings.default_key_tpm
    if key_rpm:
        limits.append(Limit("key", principal.key_id, "requests", key_rpm))
    if key_tpm:
        limits.append(Limit("key", principal.key_id, "tokens", key_tpm))
    for key_id, rpm, tpm in principal.lineage_limits:
        if key_id == principal.key_id:
            continue  # the key's own, above
        if rpm:  # the keys that minted this one: their buckets are shared with it
            limits.append(Limit("key", key_id, "requests", rpm))
        if tpm:
            limits.append(Limit("key", key_id, "tokens", tpm))
    project_rpm, project_tpm = state.routes.project_limits.get(project_id or "", (None, None))
    if project_rpm:
        limits.append(Limit("project", project_id or "", "requests", project_rpm))
    if project_tpm:
        limits.append(Limit("project", project_id or "", "tokens", project_tpm))
    return limits


async def admit(
    state: AppState,
    *,
    principal: Principal,
    record: OpenRecord,
    amounts: Amounts,
    rate_tokens: int,
    price: Price | None,
) -> Admitted:
    """Rate limits, then the usage record and budget reservations in one transaction.
    Raises (429, 503) without opening anything when the request may not go in."""
    rate_headers = await state.limiter.admit(
        limits_for(state, principal, record.project_id), tokens=rate_tokens
    )
    applicable = state.routes.budgets_for(principal.org_id, record.project_id)
    if record.batch_id is not None:
        return await _admit_line(state, record, applicable, amounts, price, rate_headers)
    if not applicable:
        state.journal.open(record)  # reaches the database in the next batch
        return Admitted(record, price, Amounts(), rate_headers, True, time.perf_counter())
    async with state.sessions.begin() as session:
        now = utcnow()
        ledger_ids = await _ledgers(state, session, applicable, budgets.period_of(now))
        await budgets.reserve(session, ledger_ids=ledger_ids, amounts=amounts, now=now)
        record = replace(
            record,
            ledger_ids=tuple(ledger_ids),
            reserved_tokens=amounts.tokens,
            reserved_cost=amounts.cost,
            reserved_energy_j=amounts.energy_j,
        )
        await usage.open_record(session, record=record)
    return Admitted(record, price, amounts, rate_headers, False, time.perf_counter())


class AlreadySettled(Exception):
    """A batch line whose usage record is settled: it was answered already."""


async def _admit_line(
    state: AppState,
    record: OpenRecord,
    applicable: list[Budget],
    amounts: Amounts,
    price: Price | None,
    rate_headers: Mapping[str, str],
) -> Admitted:
    """A batch line's record, opened once whatever the attempts: a previous attempt cut
    short (its runner killed) left it open with its reservation, which this one takes over
    instead of reserving again."""
    async with state.sessions.begin() as session:
        existing = await session.get(UsageRecordRow, record.id)
        if existing is not None:
            if existing.status != usage.OPEN:
                raise AlreadySettled(record.id)
            held = Amounts(
                existing.reserved_tokens, existing.reserved_cost, existing.reserved_energy_j
            )
            kept = replace(record, ledger_ids=tuple(existing.ledger_ids or ()))
            return Admitted(kept, price, held, rate_headers, False, time.perf_counter())
        if applicable:
            now = utcnow()
            ledger_ids = await _ledgers(state, session, applicable, budgets.period_of(now))
            await budgets.reserve(session, ledger_ids=ledger_ids, amounts=amounts, now=now)
            record = replace(
                record, ledger_ids=tuple(ledger_ids), reserved_tokens=amounts.tokens,
                reserved_cost=amounts.cost, reserved_energy_j=amounts.energy_j,
            )  # fmt: skip
        else:
            amounts = Amounts()
        await usage.open_record(session, record=record)
    return Admitted(record, price, amounts, rate_headers, False, time.perf_counter())


async def _ledgers(
    state: AppState, session: AsyncSession, applicable: list[Budget], period: str
) -> list[str]:
    """Ledger ids per (budget, month) never change once created: remember them."""
    missing = [budget for budget in applicable if (budget.id, period) not in state.ledger_ids]
    if missing:
        created = await budgets.ensure_ledgers(session, budgets=missing, period=period)
        state.ledger_ids.update(
            {(b.id, period): ledger for b, ledger in zip(missing, created, strict=True)}
        )
    return [state.ledger_ids[(budget.id, period)] for budget in applicable]
