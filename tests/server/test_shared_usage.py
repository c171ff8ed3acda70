"""Requests and energy of fine-tuned models on a shared replica, through the API: the
replica's measured energy is split over every request it served by weighted tokens, each
request's share going to its caller (an adapter's owner); a shared deployment's usage
shows its owner its requests, tokens and energy; a base deployment's replicas show each
tenant its own adapters one by one and nothing of other organisations' use (not even a
total), and an operator every adapter."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from souverain.core.fleet import ReplicaStatus
from souverain.core.roles import Role
from souverain.db.tables import ReplicaRow, UsageRecordRow
from souverain.jobs.energy import EnergyAccountant
from tests.conftest import Platform, usage_records, wait_until
from tests.gateway.test_shared_replicas import answered, base_replica, holds, shared_model
from tests.server.test_autoscaling_api import cli

MEASURED_J = 360.0


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now


def reading(joules: float) -> ReplicaStatus:
    return ReplicaStatus(
        state="ready", url="x", node_id="n", restarts=0, energy_j=joules, energy_source="rapl"
    )


async def measure(platform: Platform, replica_id: str) -> None:
    """The controller's accountant closes one interval of the replica: 360 J measured."""
    clock = Clock()
    accountant = EnergyAccountant(
        platform.sessions, interval_s=10, prompt_weight=1, completion_weight=3, clock=clock
    )
    async with platform.sessions() as session:
        replica = await session.get(ReplicaRow, replica_id)
    assert replica is not None
    accountant.observe(replica, reading(1000.0))
    clock.now += timedelta(seconds=11)
    accountant.observe(replica, reading(1000.0 + MEASURED_J))
    await accountant.close_due()


def weight(record: UsageRecordRow) -> int:
    return record.prompt_tokens + 3 * record.completion_tokens


async def usage(platform: Platform, key: str, deployment_id: str) -> Any:
    async with platform.client(key) as client:
        response = await client.get(f"/api/deployments/{deployment_id}/usage")
    assert response.status_code == 200, response.text
    return response.json()


class TestSharedReplicaUsage:
    async def test_each_owner_sees_its_adapters_requests_and_energy_and_no_one_elses(
        self, platform: Platform
    ) -> None:
        base = await platform.served_model()
        ana, bo = await shared_model(platform, base), await shared_model(platform, base)
        replica_id = await base_replica(platform, ana.base_deployment_id)
        await holds(platform, replica_id, [ana.model_id, bo.model_id])
        await wait_until(lambda: answered(ana.sdk, ana.name), timeout_s=10)  # ana: 1
        await ana.sdk.chat.completions.create(
            model=ana.name, messages=[{"role": "user", "content": "a longer question"}],
            max_tokens=6,
        )  # fmt: skip
        await wait_until(lambda: answered(bo.sdk, bo.name), timeout_s=10)  # bo: 1 + the base
        assert await answered(bo.sdk, base)
        records = await usage_records(platform.sessions, 4, replica_id=replica_id)
        await measure(platform, replica_id)
        records = await usage_records(platform.sessions, 4, replica_id=replica_id)
        assert sum(r.energy_j or 0 for r in records) == pytest.approx(MEASURED_J, rel=0.01)
        anas = [r for r in records if r.deployment_id == ana.deployment_id]
        # ana's share of the replica's energy is her requests' share of its weighted tokens
        share = sum(map(weight, anas)) / sum(map(weight, records))
        ana_j = sum(r.energy_j or 0 for r in anas)
        assert len(anas) == 2 and ana_j == pytest.approx(MEASURED_J * share, rel=0.01)

        ana_key, bo_key = ana.sdk.api_key, bo.sdk.api_key
        mine = await usage(platform, ana_key, ana.deployment_id)
        assert mine["requests"] == 2 and mine["energy_estimated"] == 0
        assert mine["completion_tokens"] == sum(r.completion_tokens for r in anas)
        assert mine["energy_j"] == pytest.approx(ana_j)
        assert mine["energy_wh"] == pytest.approx(ana_j / 3600)
        assert [(r["replica_id"], r["model"]["requests"]) for r in mine["replicas"]] == [
            (replica_id, 2)
        ]
        async with platform.client(bo_key) as client:  # another organisation's deployment
            refused = await client.get(f"/api/deployments/{ana.deployment_id}/usage")
        assert refused.status_code == 404

        [replica] = (await usage(platform, ana_key, ana.base_deployment_id))["replicas"]
        assert [(a["model_id"], a["requests"]) for a in replica["adapters"]] == [(ana.model_id, 2)]
        assert replica["adapters"][0]["energy_j"] == pytest.approx(ana_j)
        assert replica["model"]["requests"] == 0  # ana asked nothing of the base itself
        # nothing of bo's use of the replica, not even a total: polled, it would show his
        # organisation's traffic as it happens
        assert "others" not in replica
        async with platform.client(ana_key) as client:
            shown = (await client.get(f"/api/deployments/{ana.base_deployment_id}/usage")).json()
        text = json.dumps(shown)
        assert bo.model_id not in text and bo.deployment_id not in text
        figures = [shown["requests"], *(r["model"]["requests"] for r in shown["replicas"])]
        figures += [a["requests"] for r in shown["replicas"] for a in r["adapters"]]
        assert sum(figures) == 2  # ana's two, counted once: none of bo's two nor the base's

        operator = await platform.operator_key()
        [replica] = (await usage(platform, operator, ana.base_deployment_id))["replicas"]
        assert sorted((a["model_id"], a["requests"]) for a in replica["adapters"]) == sorted(
            [(ana.model_id, 2), (bo.model_id, 1)]
        )
        assert replica["model"]["requests"] == 1

        shown = await cli(platform, ana_key, "deployments", "usage", ana.base_deployment_id)
        assert shown.returncode == 0, shown.stderr + shown.stdout
        assert ana.model_id in shown.stdout and "other organisations" not in shown.stdout
        assert bo.model_id not in shown.stdout

    async def test_a_plain_replica_shows_no_others_and_a_bad_window_is_a_clear_error(
        self, platform: Platform
    ) -> None:
        base = await platform.served_model()
        tenant = await platform.factory.tenant(roles={"u": Role.MEMBER})
        key = (await platform.factory.member_key(tenant, "u", Role.MEMBER)).key
        async with platform.client(key) as client:
            found = (await client.get("/api/deployments")).json()
            [deployment] = [d for d in found if d["model"] == base]
            # a replica without adapters: nothing of other organisations' use, not even a total
            shown = (await client.get(f"/api/deployments/{deployment['id']}/usage")).json()
            assert [sorted(r) for r in shown["replicas"]] == [["adapters", "model", "replica_id"]]
            for hours in ("0", "745", "a day"):
                response = await client.get(
                    f"/api/deployments/{deployment['id']}/usage", params={"hours": hours}
                )
                assert response.status_code == 422, response.text
                assert response.json()["error"]["param"] == "query.hours"
