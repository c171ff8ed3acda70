"""Budgets, attacked by the tenant they bind: what the operator set on an organisation is
its ceiling; owners may lower it, never raise or remove it, and no project budget may go
above it. Every variant is a 403 that changes nothing."""

from __future__ import annotations

import pytest

from souverain.core.roles import Role
from tests.conftest import Platform
from tests.security.helpers import assert_openai_error

CEILING = {"tokens": 10_000, "cost": 5.0, "energy_kwh": 1.0}


@pytest.fixture
async def capped(platform: Platform) -> tuple[str, str]:
    tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
    owner = (await platform.factory.member_key(tenant, "o", Role.OWNER)).key
    async with platform.client(await platform.operator_key()) as client:
        set_ = await client.put(f"/api/orgs/{tenant.org_name}/budget", json=CEILING)
        assert set_.status_code == 200, set_.text
    return tenant.org_name, owner


async def _budget(platform: Platform, key: str, org: str) -> dict[str, object]:
    async with platform.client(key) as client:
        found = (await client.get(f"/api/orgs/{org}/budgets")).json()
    return next(b for b in found if b.get("project_id") is None)


@pytest.mark.parametrize(
    "raised",
    [
        {**CEILING, "tokens": 10_001},
        {**CEILING, "cost": 1e9},
        {**CEILING, "energy_kwh": 2.0},
        {"cost": 5.0, "energy_kwh": 1.0},  # tokens omitted: unlimited
        {"tokens": None, "cost": None, "energy_kwh": None},
    ],
    ids=["tokens", "cost", "energy", "omitted", "all-unlimited"],
)
async def test_an_owner_cannot_raise_or_remove_the_ceiling(
    platform: Platform, capped: tuple[str, str], raised: dict[str, object]
) -> None:
    org, owner = capped
    async with platform.client(owner) as client:
        refused = await client.put(f"/api/orgs/{org}/budget", json=raised)
    assert_openai_error(refused, 403)
    budget = await _budget(platform, owner, org)
    assert (budget["tokens"], budget["cost"], budget["energy_kwh"]) == (10_000, 5.0, 1.0)


async def test_an_owner_may_lower_and_raise_back_to_the_ceiling(
    platform: Platform, capped: tuple[str, str]
) -> None:
    org, owner = capped
    async with platform.client(owner) as client:
        lowered = await client.put(f"/api/orgs/{org}/budget", json={**CEILING, "tokens": 500})
        assert lowered.status_code == 200, lowered.text
        back = await client.put(f"/api/orgs/{org}/budget", json=CEILING)
        assert back.status_code == 200, back.text


async def test_a_project_budget_stays_under_the_ceiling(
    platform: Platform, capped: tuple[str, str]
) -> None:
    org, owner = capped
    async with platform.client(owner) as client:
        over = await client.put(
            f"/api/orgs/{org}/projects/default/budget", json={**CEILING, "tokens": 20_000}
        )
        assert_openai_error(over, 403)
        under = await client.put(
            f"/api/orgs/{org}/projects/default/budget", json={**CEILING, "tokens": 2_000}
        )
        assert under.status_code == 200, under.text


async def test_without_a_ceiling_owners_set_what_they_like(platform: Platform) -> None:
    tenant = await platform.factory.tenant(roles={"o": Role.OWNER})
    owner = (await platform.factory.member_key(tenant, "o", Role.OWNER)).key
    async with platform.client(owner) as client:
        assert (
            await client.put(f"/api/orgs/{tenant.org_name}/budget", json={"tokens": 10**9})
        ).status_code == 200
