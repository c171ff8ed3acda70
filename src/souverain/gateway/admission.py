"""Admission: bound what a request may cost before any engine sees it.

estimate  an upper bound of its tokens (UTF-8 bytes of the prompt + per-message
          overhead, plus max_tokens or the model's context) and of its cost and energy
limits    requests and tokens per minute, per key and per project (429)
budgets   reserve the estimate on every monthly ledger that applies, atomically, in
          the transaction that opens the usage record (429 insufficient_quota)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.principal import Principal
from souverain.db.tables import utcnow
from souverain.energy.attribution import Served, weight
from souverain.gateway.ratelimit import Limit
from souverain.gateway.state import AppState
from souverain.services import budgets, usage
from souverain.services.budgets import Amounts, Budget
from souverain.services.prices import Price
from souverain.services.routes import ModelInfo

MESSAGE_OVERHEAD = 16  # chat template tokens per message, generously


@dataclass
class Admission:
    record_id: str
    project_id: str | None
    price: Price | None
    reserved: Amounts = field(default_factory=Amounts)
    ledger_ids: list[str] = field(default_factory=list)
    rate_headers: dict[str, str] = field(default_factory=dict)
    journaled: bool = False  # opened through the usage journal, not the database


def prompt_bound(body: dict[str, Any]) -> int:
    """No tokenizer produces more tokens than UTF-8 bytes, plus special tokens."""
    if "messages" in body:
        return sum(
            len(str(m.get("content") or "").encode()) + MESSAGE_OVERHEAD for m in body["messages"]
        )
    text = body.get("prompt", body.get("input", ""))
    pieces = text if isinstance(text, list) else [text]
    return sum(len(str(piece).encode()) + MESSAGE_OVERHEAD for piece in pieces)


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
    project_rpm, project_tpm = state.routes.project_limits.get(project_id or "", (None, None))
    if project_rpm:
        limits.append(Limit("project", project_id or "", "requests", project_rpm))
    if project_tpm:
        limits.append(Limit("project", project_id or "", "tokens", project_tpm))
    return limits


def energy_per_token(state: AppState, j_per_token: float | None) -> float:
    return state.settings.energy_j_per_token_prior if j_per_token is None else j_per_token


def estimate(
    state: AppState, *, prompt: int, completion: int, price: Price | None, j_per_token: float
) -> Amounts:
    settings = state.settings
    weighted = weight(
        Served("", prompt, completion),
        prompt_weight=settings.energy_prompt_weight,
        completion_weight=settings.energy_completion_weight,
    )
    return Amounts(
        tokens=prompt + completion,
        cost=price.cost(prompt, completion) if price else 0.0,
        energy_j=weighted * j_per_token,
    )


async def admit(
    state: AppState,
    *,
    principal: Principal,
    record: dict[str, Any],
    project_id: str | None,
    amounts: Amounts,
    rate_tokens: int,
    price: Price | None,
) -> Admission:
    """Rate limits, then the usage record and budget reservations in one transaction."""
    rate_headers = await state.limiter.admit(
        limits_for(state, principal, project_id), tokens=rate_tokens
    )
    admission = Admission(
        record_id=record["id"], project_id=project_id, price=price, rate_headers=rate_headers
    )
    applicable = state.routes.budgets_for(principal.org_id, project_id)
    if not applicable:
        state.journal.open(record)  # reaches the database in the next batch
        admission.journaled = True
        return admission
    async with state.sessions.begin() as session:
        now = utcnow()
        ledger_ids = await _ledgers(state, session, applicable, budgets.period_of(now))
        await budgets.reserve(session, ledger_ids=ledger_ids, amounts=amounts, now=now)
        admission.reserved, admission.ledger_ids = amounts, ledger_ids
        record = record | {
            "ledger_ids": ledger_ids,
            "reserved_tokens": amounts.tokens,
            "reserved_cost": amounts.cost,
            "reserved_energy_j": amounts.energy_j,
        }
        await usage.open_record(session, values=record)
    return admission


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
