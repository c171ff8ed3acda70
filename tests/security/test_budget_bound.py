"""Budgets attacked with requests shaped to cost more than admission reserves: tiny or
empty messages (the chat template's default system prompt is not free), many of them at
once, multibyte text. On a real llama.cpp engine whose template overhead the supervisor
measured, no shape and no amount of concurrency spends more than the budget."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import select

from souverain.core.roles import Role
from souverain.db.metering import BudgetLedgerRow, BudgetRow
from tests.llamacpp_target import LlamaTarget, llamacpp_target

pytestmark = [pytest.mark.engine, pytest.mark.slow]

BUDGET = 400


@pytest.fixture(scope="module")
async def target(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LlamaTarget]:
    async with llamacpp_target(tmp_path_factory.mktemp("budget-bound")) as found:
        yield found


def shapes() -> dict[str, list[dict[str, Any]]]:
    return {
        "empty": [{"role": "user", "content": ""}],
        "many-empty": [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}] * 8
        + [{"role": "user", "content": ""}],
        "emoji": [{"role": "user", "content": "🌍" * 20}],
        "accents": [{"role": "user", "content": "é" * 40}],
        "named": [{"role": "user", "content": "", "name": "x" * 30}],
        "system-only": [{"role": "system", "content": ""}, {"role": "user", "content": "a"}],
    }


@pytest.mark.parametrize("shape", list(shapes()))
async def test_concurrent_crafted_requests_never_overspend(target: LlamaTarget, shape: str) -> None:
    tenant = await target.factory.tenant(roles={"x": Role.OWNER})
    key = (await target.factory.member_key(tenant, "x", Role.OWNER)).key
    async with target.client(key) as client:
        assert (
            await client.put(f"/api/orgs/{tenant.org_name}/budget", json={"tokens": BUDGET})
        ).status_code == 200
        await asyncio.sleep(0.6)  # the route table learns the budget

        async def one() -> int:
            body = {"model": target.model, "messages": shapes()[shape], "max_tokens": 1}
            return (await client.post("/v1/chat/completions", json=body)).status_code

        statuses = await asyncio.gather(*(one() for _ in range(30)))
    assert set(statuses) <= {200, 429}
    await asyncio.sleep(0.5)
    async with target.factory.sessions() as session:
        query = (
            select(BudgetLedgerRow)
            .join(BudgetRow, BudgetRow.id == BudgetLedgerRow.budget_id)
            .where(BudgetRow.org_id == tenant.org_id)
        )
        [ledger] = (await session.execute(query)).scalars().all()
    print(f"[budget] {shape}: {statuses.count(200)} answered, {statuses.count(429)} refused, "
          f"used {ledger.used_tokens} of {BUDGET}")  # fmt: skip
    assert ledger.used_tokens + ledger.reserved_tokens <= BUDGET
    assert (
        statuses.count(200) >= 1
    )  # the budget is not refused outright: it is spent, not overspent
