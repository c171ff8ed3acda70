"""Routing obeys the caller's effective policy: 451 when no compliant replica exists, and
never a fallback across jurisdictions, not even when the compliant replica is down."""

from __future__ import annotations

import httpx
from sqlalchemy import select

from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.tables import UsageRecordRow
from souverain.testing.factories import Tenant
from souverain.testing.live import free_port
from tests.conftest import Platform, usage_records, wait_until


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "bonjour"}], "max_tokens": 3}


async def tenant_with_ceiling(platform: Platform, ceiling: dict[str, object]) -> tuple[Tenant, str]:
    tenant = await platform.factory.tenant(roles={"u": Role.ADMIN})
    key = await platform.factory.member_key(tenant, "u", Role.ADMIN)
    async with platform.client(await platform.operator_key()) as op:
        assert (
            await op.put(f"/api/orgs/{tenant.org_name}/policy", json=ceiling)
        ).status_code == 200
    return tenant, key.key


async def refused(platform: Platform, key: str, model: str) -> httpx.Response:
    """Wait until the new policy reaches the route table (the model leaves the caller's
    /v1/models, without any inference request), then return the refusal of a request."""
    async with platform.client(key) as client:

        async def unlisted() -> bool:
            listed = (await client.get("/v1/models")).json()["data"]
            return model not in {m["id"] for m in listed}

        await wait_until(unlisted, timeout_s=5)
        response = await client.post("/v1/chat/completions", json=chat(model))
    assert response.status_code == 451, response.text
    return response


async def second_replica(
    platform: Platform, model_name: str, datacenter: str, url: str | None = None
) -> str:
    """Add a replica of an existing model's deployment in another datacenter."""
    from souverain.db.tables import DeploymentRow, ModelRow, ReplicaRow

    replica_id = new_id("rep")
    async with platform.sessions.begin() as session:
        model = (
            await session.execute(select(ModelRow).where(ModelRow.name == model_name))
        ).scalar_one()
        deployment = (
            await session.execute(select(DeploymentRow).where(DeploymentRow.model_id == model.id))
        ).scalar_one()
        session.add(
            ReplicaRow(
                id=replica_id,
                deployment_id=deployment.id,
                actor_name=f"test-{replica_id}",
                datacenter_id=datacenter,
                node_id="node-us",
                url=url or f"{platform.stand_in_url}/r/{replica_id}",
                state="ready",
                reason="",
                engine_restarts=0,
            )
        )
    return replica_id


class TestSovereignRouting:
    async def test_no_compliant_replica_is_451_naming_the_exclusion(
        self, platform: Platform
    ) -> None:
        model = await platform.served_model()  # served in fr-test (FR)
        tenant, key = await tenant_with_ceiling(platform, {"jurisdictions": ["US"]})
        before = len(platform.stand_in.requests)
        response = await refused(platform, key, model)
        error = response.json()["error"]
        assert error["type"] == "policy_error" and error["code"] == "unavailable_for_legal_reasons"
        assert "fr-test: outside US (FR)" in error["message"]
        assert len(platform.stand_in.requests) == before
        async with platform.client(key) as client:
            listed = {m["id"] for m in (await client.get("/v1/models")).json()["data"]}
        assert model not in listed
        async with platform.sessions() as session:
            rows = (
                await session.execute(
                    select(UsageRecordRow).where(UsageRecordRow.org_id == tenant.org_id)
                )
            ).all()
        assert rows == []  # refused before admission: nothing was processed

    async def test_a_ceiling_is_in_force_for_the_next_request_to_the_server_that_set_it(
        self, platform: Platform
    ) -> None:
        """No window in which a narrowed policy still routes the old way: the server that
        answers the change has it in force before it answers (others within a refresh)."""
        model = await platform.served_model()  # served in fr-test (FR)
        tenant = await platform.factory.tenant(roles={"u": Role.ADMIN})
        key = (await platform.factory.member_key(tenant, "u", Role.ADMIN)).key
        async with platform.client(key) as client:
            assert (await client.post("/v1/chat/completions", json=chat(model))).status_code == 200
        async with platform.client(await platform.operator_key()) as op:
            ceiling = await op.put(
                f"/api/orgs/{tenant.org_name}/policy", json={"jurisdictions": ["US"]}
            )
            assert ceiling.status_code == 200
        async with platform.client(key) as client:
            response = await client.post("/v1/chat/completions", json=chat(model))
        assert response.status_code == 451, response.text

    async def test_compliant_tenant_is_served_and_the_record_says_where(
        self, platform: Platform
    ) -> None:
        model = await platform.served_model()
        tenant, key = await tenant_with_ceiling(
            platform, {"jurisdictions": ["EU"], "operator_jurisdictions": ["EU"]}
        )
        async with platform.client(key) as client:
            response = await client.post("/v1/chat/completions", json=chat(model))
        assert response.status_code == 200
        [record] = await usage_records(platform.sessions, 1, org_id=tenant.org_id)
        assert (record.datacenter_id, record.country, record.operator_country) == (
            "fr-test",
            "FR",
            "FR",
        )
        assert record.jurisdictions == ["FR", "EEA", "EU"]

    async def test_project_policy_narrows_for_project_keys_only(self, platform: Platform) -> None:
        model = await platform.served_model()
        tenant, admin_key = await tenant_with_ceiling(platform, {"jurisdictions": ["EU"]})
        async with platform.client(admin_key) as client:
            await client.post(f"/api/orgs/{tenant.org_name}/projects", json={"name": "german-only"})
            policy = await client.put(
                f"/api/orgs/{tenant.org_name}/projects/german-only/policy",
                json={"jurisdictions": ["DE"]},
            )
            assert policy.status_code == 200
            scoped = (
                await client.post("/api/keys", json={"project": "german-only", "role": "member"})
            ).json()["key"]
            assert (await client.post("/v1/chat/completions", json=chat(model))).status_code == 200
        response = await refused(platform, scoped, model)
        assert "outside DE (FR)" in response.json()["error"]["message"]

    async def test_never_falls_back_across_jurisdictions(self, platform: Platform) -> None:
        model = await platform.served_model()  # FR replica, working
        await platform.factory.datacenter("us-test", country="US")
        dead = f"http://127.0.0.1:{free_port()}"
        # Break the FR replica: point the model's only EU replica at a closed port, and add
        # a healthy US replica. An EU tenant must get an error, never the US replica.
        async with platform.sessions.begin() as session:
            from sqlalchemy import update

            from souverain.db.tables import DeploymentRow, ModelRow, ReplicaRow

            model_row = (
                await session.execute(select(ModelRow).where(ModelRow.name == model))
            ).scalar_one()
            deployment = (
                await session.execute(
                    select(DeploymentRow).where(DeploymentRow.model_id == model_row.id)
                )
            ).scalar_one()
            await session.execute(
                update(ReplicaRow).where(ReplicaRow.deployment_id == deployment.id).values(url=dead)
            )
        us_replica = await second_replica(platform, model, "us-test")
        _, eu_key = await tenant_with_ceiling(platform, {"jurisdictions": ["EU"]})
        _, us_key = await tenant_with_ceiling(platform, {"jurisdictions": ["US"]})

        async def us_served() -> bool:
            async with platform.client(us_key) as client:
                response = await client.post("/v1/chat/completions", json=chat(model))
            return (
                response.status_code == 200
                and response.headers["x-souverain-datacenter"] == "us-test"
            )

        await wait_until(us_served, timeout_s=5)
        before = len(platform.stand_in.requests)
        async with platform.client(eu_key) as client:
            for _ in range(5):
                response = await client.post("/v1/chat/completions", json=chat(model))
                assert response.status_code == 503, response.text
                assert response.headers.get("x-souverain-datacenter") != "us-test"
        assert len(platform.stand_in.requests) == before, "an EU request reached the US replica"
        assert us_replica
