"""Autoscaling limits through the API: a deployment shows its minimum, maximum, target and
idle period (by default a fixed count, as before), impossible limits are a 400 naming the
field, and the controller's last decision is on the deployment."""

from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from souverain.core.roles import Role
from souverain.db.tables import DeploymentRow, utcnow
from souverain.testing.factories import unique
from tests.conftest import Platform, on_one_database
from tests.server.test_cli_coverage import SOUVERAIN


async def create(platform: Platform, **fields: object) -> httpx.Response:
    model = await platform.served_model()
    async with platform.client(await platform.operator_key()) as client:
        return await client.post(
            "/api/deployments", json={"name": unique("d"), "model": model, **fields}
        )


async def cli(platform: Platform, key: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it, on a wide terminal (the list is a table)."""
    env = {**os.environ, "SOUVERAIN_URL": platform.url, "SOUVERAIN_API_KEY": key,
           "COLUMNS": "400"}  # fmt: skip
    return await asyncio.to_thread(
        subprocess.run, [SOUVERAIN, *args], env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip


def refusal(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 400, response.text
    error: dict[str, Any] = response.json()["error"]
    return error


class TestLimits:
    async def test_by_default_the_count_is_fixed(self, platform: Platform) -> None:
        response = await create(platform, replicas=2)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["autoscaling"] is False
        assert (body["replicas"], body["min_replicas"], body["max_replicas"]) == (2, 2, 2)

    async def test_limits_are_kept_and_the_first_count_is_inside_them(
        self, platform: Platform
    ) -> None:
        response = await create(
            platform, min_replicas=2, max_replicas=5, target_busy_per_replica=8,
            scale_down_idle_s=120,
        )  # fmt: skip
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["autoscaling"] is True
        assert (body["replicas"], body["min_replicas"], body["max_replicas"]) == (2, 2, 5)
        assert (body["target_busy_per_replica"], body["scale_down_idle_s"]) == (8, 120)

    @pytest.mark.parametrize(
        ("fields", "param", "words"),
        [
            ({"min_replicas": 3, "max_replicas": 2}, "min_replicas", "above max_replicas"),
            ({"min_replicas": 0, "max_replicas": 65}, "max_replicas", "between 0 and 64"),
            ({"min_replicas": -1, "max_replicas": 2}, "min_replicas", "between 0 and 64"),
            ({"target_busy_per_replica": 0}, "target_busy_per_replica", "above 0"),
            ({"scale_down_idle_s": -5}, "scale_down_idle_s", "between 0 and"),
        ],
    )
    async def test_impossible_limits_are_a_400_naming_the_field(
        self, platform: Platform, fields: dict[str, object], param: str, words: str
    ) -> None:
        error = refusal(await create(platform, **fields))
        assert error["param"] == param
        assert words in error["message"]

    async def test_a_count_outside_the_limits_is_refused_and_limits_move_the_count(
        self, platform: Platform
    ) -> None:
        created = (await create(platform, min_replicas=0, max_replicas=3)).json()
        async with platform.client(await platform.operator_key()) as client:
            path = f"/api/deployments/{created['name']}"
            error = refusal(await client.patch(path, json={"replicas": 4}))
            assert error["param"] == "replicas"
            raised = await client.patch(path, json={"min_replicas": 2})
            assert raised.status_code == 200, raised.text
            assert (raised.json()["replicas"], raised.json()["min_replicas"]) == (2, 2)
            error = refusal(await client.patch(path, json={"max_replicas": 1}))
            assert error["param"] == "min_replicas"

    async def test_the_last_decision_is_shown_in_the_deployment_and_the_list(
        self, platform: Platform
    ) -> None:
        created = (await create(platform, min_replicas=0, max_replicas=3)).json()
        async with platform.sessions.begin() as session:
            await session.execute(
                update(DeploymentRow)
                .where(DeploymentRow.id == created["id"])
                .values(replicas=3, scaled_at=utcnow(), scaling_reason="12 requests outstanding")
            )
        async with platform.client(await platform.operator_key()) as client:
            one = (await client.get(f"/api/deployments/{created['name']}")).json()
            listed = (await client.get("/api/deployments")).json()
        assert one["replicas"] == 3
        assert one["scaling_reason"] == "12 requests outstanding"
        assert one["scaled_at"] is not None
        [row] = [d for d in listed if d["id"] == created["id"]]
        assert row["scaling_reason"] == "12 requests outstanding"
        tenant = await platform.factory.tenant(roles={"t": Role.MEMBER})
        member = await platform.factory.member_key(tenant, "t", Role.MEMBER)
        async with platform.client(member.key) as client:
            seen = (await client.get(f"/api/deployments/{created['name']}")).json()
        # a platform deployment's reason counts every tenant's requests: not a tenant's to read
        assert seen["replicas"] == 3 and seen["scaling_reason"] == ""


@on_one_database()
class TestCommands:
    async def test_deployments_create_takes_limits_and_list_shows_them(
        self, platform: Platform
    ) -> None:
        model, name = await platform.served_model(), unique("cli-auto")
        operator = await platform.operator_key()
        created = await cli(
            platform, operator, "deployments", "create", name, "--model", model,
            "--min-replicas", "0", "--max-replicas", "2", "--scale-down-idle", "60",
        )  # fmt: skip
        assert created.returncode == 0, created.stderr
        async with platform.client(operator) as client:
            found = (await client.get(f"/api/deployments/{name}")).json()
        assert (found["min_replicas"], found["max_replicas"]) == (0, 2)
        assert found["scale_down_idle_s"] == 60
        listed = await cli(platform, operator, "deployments", "list")
        assert listed.returncode == 0, listed.stderr
        assert "(0–2)" in listed.stdout
