"""Budgets that concurrent requests cannot overspend, rate limits (in memory and shared
through Redis), prices, invoices, energy headers, metrics and usage exports."""

from __future__ import annotations

import asyncio
import csv
import io
from datetime import UTC, datetime

import httpx
import pytest
from sqlalchemy import select

from souverain.core.roles import Role
from souverain.db.metering import BudgetLedgerRow
from souverain.db.tables import UsageRecordRow
from souverain.server.app import create_app
from souverain.testing.factories import Tenant
from souverain.testing.live import LiveServer, free_port
from tests.conftest import Platform, usage_records, wait_until


def chat(model: str, text: str = "hi", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


async def tenant_key(platform: Platform, role: Role = Role.ADMIN) -> tuple[Tenant, str, str]:
    tenant = await platform.factory.tenant(roles={"u": role})
    key = await platform.factory.member_key(tenant, "u", role)
    return tenant, key.key, key.id


async def ledgers(platform: Platform, org_id: str) -> list[BudgetLedgerRow]:
    from souverain.db.metering import BudgetRow

    async with platform.sessions() as session:
        query = (
            select(BudgetLedgerRow)
            .join(BudgetRow, BudgetRow.id == BudgetLedgerRow.budget_id)
            .where(BudgetRow.org_id == org_id)
        )
        return list((await session.execute(query)).scalars())


class TestBudgets:
    async def test_fifty_concurrent_requests_never_overspend_room_for_ten(
        self, platform: Platform
    ) -> None:
        model = await platform.served_model()
        tenant, key, _ = await tenant_key(platform)
        # A replica that has not measured its chat template reserves the generous default:
        # 256 fixed + (5 bytes of "#slow" + 1) + 16 per message + 4 slack = 282, plus
        # max_tokens 4 → 286 reserved per request; room for ten.
        async with platform.client(await platform.operator_key()) as op:
            budget = await op.put(f"/api/orgs/{tenant.org_name}/budget", json={"tokens": 2860})
            assert budget.status_code == 200, budget.text

        async with platform.client(key) as client:
            await wait_until(lambda: _budget_known(platform, tenant.org_id), timeout_s=5)
            body = chat(model, "#slow", max_tokens=4, stream=True)
            platform.stand_in.peak_in_flight = platform.stand_in.in_flight
            results = await asyncio.gather(
                *(client.post("/v1/chat/completions", json=body) for _ in range(50))
            )
        statuses = [r.status_code for r in results]
        # Never more than ten at once reached the engine; the rest were refused (a few more may
        # be admitted late, once earlier ones have settled and freed their reservation).
        assert platform.stand_in.peak_in_flight <= 10
        assert statuses.count(200) >= 10 and statuses.count(200) + statuses.count(429) == 50
        refused = [r for r in results if r.status_code == 429]
        assert len(refused) >= 30

        assert all(r.json()["error"]["code"] == "insufficient_quota" for r in refused)
        assert all(int(r.headers["retry-after"]) > 0 for r in refused)

        async def released() -> bool:
            [ledger] = await ledgers(platform, tenant.org_id)
            return ledger.reserved_tokens == 0

        await wait_until(released, timeout_s=5)  # settlement follows the last byte
        [ledger] = await ledgers(platform, tenant.org_id)
        assert 0 < ledger.used_tokens <= 2860

        async with platform.sessions() as session:
            rows = (
                await session.execute(
                    select(UsageRecordRow).where(UsageRecordRow.org_id == tenant.org_id)
                )
            ).scalars()
            assert sum(1 for _ in rows) == statuses.count(200)  # refused ones were never admitted

    async def test_project_budget_applies_with_the_org_budget(self, platform: Platform) -> None:
        model = await platform.served_model()
        tenant, key, _ = await tenant_key(platform)
        async with platform.client(key) as client:
            await client.post(f"/api/orgs/{tenant.org_name}/projects", json={"name": "small"})
            assert (
                await client.put(
                    f"/api/orgs/{tenant.org_name}/projects/small/budget", json={"tokens": 300}
                )
            ).status_code == 200
            # an admin may not set the organisation's own budget (owners and operators do)
            assert (
                await client.put(f"/api/orgs/{tenant.org_name}/budget", json={"tokens": 1})
            ).status_code == 403
            small = (
                await client.post("/api/keys", json={"project": "small", "role": "member"})
            ).json()["key"]
        async with platform.client(small) as client:
            # Reserved: 256 (unmeasured template) + 26 for "hello" + max_tokens.
            await wait_until(lambda: _budget_known(platform, tenant.org_id), timeout_s=5)
            first = await client.post("/v1/chat/completions", json=chat(model, max_tokens=4))
            assert first.status_code == 200
            too_much = await client.post("/v1/chat/completions", json=chat(model, max_tokens=20))
            assert too_much.status_code == 429
        async with platform.client(key) as client:  # the default project has no budget
            assert (
                await client.post("/v1/chat/completions", json=chat(model, max_tokens=20))
            ).status_code == 200

            async def settled() -> bool:  # settlement is written beside the answer
                listed = (await client.get(f"/api/orgs/{tenant.org_name}/budgets")).json()
                return bool(listed[0]["used_tokens"] > 0 and listed[0]["reserved_tokens"] == 0)

            await wait_until(settled, timeout_s=5)


async def _budget_known(platform: Platform, org_id: str) -> bool:
    # The route table learns within a refresh that this organisation has budgets.
    await asyncio.sleep(platform.settings.replica_refresh_s * 2)
    return True


class TestRateLimits:
    async def test_requests_per_minute_per_key(self, platform: Platform) -> None:
        model = await platform.served_model()
        _, admin, _ = await tenant_key(platform)
        async with platform.client(admin) as client:
            limited = (await client.post("/api/keys", json={"role": "member"})).json()
            assert (
                await client.put(f"/api/keys/{limited['id']}/limits", json={"rpm": 3})
            ).status_code == 200
        await asyncio.sleep(platform.settings.key_cache_ttl_s + 0.1)
        async with platform.client(limited["key"]) as client:
            answers = [
                await client.post("/v1/chat/completions", json=chat(model)) for _ in range(4)
            ]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert [a.headers["x-ratelimit-remaining-requests"] for a in answers[:3]] == ["2", "1", "0"]
        assert answers[0].headers["x-ratelimit-limit-requests"] == "3"
        refused = answers[3]
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert 1 <= int(refused.headers["retry-after"]) <= 60

    async def test_members_cannot_lift_their_own_limits(self, platform: Platform) -> None:
        member = await platform.factory.tenant(roles={"m": Role.MEMBER})
        key = await platform.factory.member_key(member, "m", Role.MEMBER)
        async with platform.client(key.key) as client:
            assert (
                await client.put(f"/api/keys/{key.id}/limits", json={"rpm": None})
            ).status_code == 403

    async def test_tokens_per_minute_per_project(self, platform: Platform) -> None:
        model = await platform.served_model()
        tenant, admin, _ = await tenant_key(platform)
        async with platform.client(admin) as client:
            set_limits = await client.put(
                f"/api/orgs/{tenant.org_name}/projects/default/limits", json={"tpm": 100}
            )
            assert set_limits.status_code == 200
            huge = await client.post("/v1/chat/completions", json=chat(model, max_tokens=500))
            for _ in range(50):  # the new limit reaches the gateway with its next refresh
                if huge.status_code == 429:
                    break
                await asyncio.sleep(platform.settings.replica_refresh_s)
                huge = await client.post("/v1/chat/completions", json=chat(model, max_tokens=500))
            assert huge.status_code == 429
            assert "lower max_tokens" in huge.json()["error"]["message"]
            answers = [
                await client.post("/v1/chat/completions", json=chat(model, max_tokens=40))
                for _ in range(3)
            ]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[0].headers["x-ratelimit-limit-tokens"] == "100"

    async def test_limits_are_shared_by_server_processes_through_redis(
        self, platform: Platform
    ) -> None:
        redis = pytest.importorskip("redis")
        try:
            redis.Redis(host="127.0.0.1", port=6379).ping()
        except Exception:
            pytest.skip("no Redis on 127.0.0.1:6379")
        model = await platform.served_model()
        _, admin, _ = await tenant_key(platform)
        async with platform.client(admin) as client:
            limited = (await client.post("/api/keys", json={"role": "member"})).json()
            assert (
                await client.put(f"/api/keys/{limited['id']}/limits", json={"rpm": 4})
            ).status_code == 200
        shared = platform.settings.model_copy(
            update={"rate_limit_storage": "redis://127.0.0.1:6379/0"}
        )
        first, second = (shared.model_copy(update={"port": free_port()}) for _ in range(2))
        with (  # each server process has its own port, hence its own usage journal
            LiveServer(create_app(first), port=first.port) as one,
            LiveServer(create_app(second), port=second.port) as two,
        ):
            statuses = []
            async with httpx.AsyncClient(
                headers={"Authorization": f"Bearer {limited['key']}"}
            ) as client:
                for server in (one, two, one, two, one, two):
                    response = await client.post(
                        f"{server.url}/v1/chat/completions", json=chat(model)
                    )
                    statuses.append(response.status_code)
        assert statuses == [200, 200, 200, 200, 429, 429]


class TestPricesAndInvoices:
    async def test_cost_per_record_and_monthly_invoice(self, platform: Platform) -> None:
        model = await platform.served_model()
        tenant, key, _ = await tenant_key(platform, Role.OWNER)
        async with platform.client(await platform.operator_key()) as op:
            price = await op.put(
                f"/api/models/{model}/price",
                json={"currency": "EUR", "input_per_million": 1000, "output_per_million": 2000},
            )
            assert price.status_code == 200, price.text
        await asyncio.sleep(platform.settings.replica_refresh_s * 2)
        async with platform.client(key) as client:
            # "one two three": 3 prompt tokens; the stand-in answers max_tokens tokens
            for _ in range(2):
                ok = await client.post(
                    "/v1/chat/completions", json=chat(model, "one two three", max_tokens=5)
                )
                assert ok.status_code == 200
                assert float(ok.headers["x-souverain-energy-joules"]) > 0
                assert float(ok.headers["x-souverain-co2e-grams"]) > 0
            await usage_records(platform.sessions, 2, org_id=tenant.org_id)
            period = datetime.now(UTC).strftime("%Y-%m")
            invoice = (await client.get(f"/api/orgs/{tenant.org_name}/invoices/{period}")).json()
            csv_text = (
                await client.get(
                    f"/api/orgs/{tenant.org_name}/invoices/{period}", params={"format": "csv"}
                )
            ).text
            prices = (await client.get("/api/prices")).json()
        expected = 2 * (3 * 1000 + 5 * 2000) / 1e6
        [line] = invoice["lines"]
        assert (line["model"], line["requests"], line["input_tokens"], line["output_tokens"]) == (
            model,
            2,
            6,
            10,
        )
        assert line["amount"] == pytest.approx(expected) and invoice["total"] == pytest.approx(
            expected
        )
        assert invoice["currency"] == "EUR"
        rows = list(csv.reader(io.StringIO(csv_text)))
        assert rows[0][:3] == ["line", "model", "requests"] and any(r[0] == "co2e_kg" for r in rows)
        assert {p["model"] for p in prices} >= {model}

    async def test_members_cannot_read_invoices(self, platform: Platform) -> None:
        tenant, key, _ = await tenant_key(platform, Role.MEMBER)
        async with platform.client(key) as client:
            assert (
                await client.get(f"/api/orgs/{tenant.org_name}/invoices/2026-11")
            ).status_code == 403


class TestUsageApiAndMetrics:
    async def test_usage_groups_filters_and_csv(self, platform: Platform) -> None:
        model = await platform.served_model()
        other = await platform.served_model()
        _, key, key_id = await tenant_key(platform)
        async with platform.client(key) as client:
            for name in (model, model, other):
                assert (
                    await client.post("/v1/chat/completions", json=chat(name, stream=True))
                ).status_code == 200
            await usage_records(platform.sessions, 3, key_id=key_id)

            by_model = (await client.get("/api/usage", params={"group_by": "model"})).json()
            by_day = (await client.get("/api/usage", params={"group_by": "day"})).json()
            only = (await client.get("/api/usage", params={"model": other, "key": key_id})).json()
            exported = (
                await client.get("/api/usage", params={"format": "csv", "model": model})
            ).text
        counts = {g["key"]: g["requests"] for g in by_model["groups"]}
        assert counts == {model: 2, other: 1}
        assert [g["requests"] for g in by_day["groups"]] == [3]
        assert by_day["groups"][0]["key"] == datetime.now(UTC).date().isoformat()
        assert [r["model"] for r in only["records"]] == [other]
        rows = list(csv.DictReader(io.StringIO(exported)))
        assert (
            len(rows) == 2 and {r["model"] for r in rows} == {model} and rows[0]["status"] == "ok"
        )
        assert all(float(r["energy_estimate_j"]) > 0 for r in rows)

    async def test_stream_usage_chunk_carries_energy(self, platform: Platform) -> None:
        model = await platform.served_model()
        _, key, _ = await tenant_key(platform)
        import json

        async with platform.client(key) as client:
            response = await client.post(
                "/v1/chat/completions",
                json=chat(model, stream=True, stream_options={"include_usage": True}),
            )
        chunks = [
            json.loads(line[6:])
            for line in response.text.splitlines()
            if line.startswith("data: {")
        ]
        assert chunks[-1]["souverain"]["energy_joules"] > 0
        assert chunks[-1]["souverain"]["datacenter"] == "fr-test"

    async def test_metrics_need_an_operator_key(self, platform: Platform) -> None:
        model = await platform.served_model()
        _, key, _ = await tenant_key(platform)
        async with platform.client(key) as client:
            await client.post("/v1/chat/completions", json=chat(model))
            assert (await client.get("/metrics")).status_code == 403
        async with platform.client() as anonymous:
            assert (await anonymous.get("/metrics")).status_code == 401
        async with platform.client(await platform.operator_key()) as op:
            text = (await op.get("/metrics")).text
        assert f'souverain_requests_total{{endpoint="chat",model="{model}",status="ok"}}' in text
        assert "souverain_request_duration_seconds_bucket" in text
        assert "souverain_time_to_first_token_seconds_count" in text
        assert 'souverain_replicas{state="ready"}' in text

    async def test_metrics_on_a_separate_private_address(self, platform: Platform) -> None:
        port, api_port = free_port(), free_port()
        settings = platform.settings.model_copy(
            update={"metrics_bind": f"127.0.0.1:{port}", "port": api_port}
        )
        with LiveServer(create_app(settings), port=api_port):
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.1:{port}/metrics")
        assert response.status_code == 200 and "souverain_replicas" in response.text
