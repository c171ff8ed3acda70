"""What a replica's start costs, as its owner sees it: the deployment's answer gives its last
start's wall time, CPU seconds and energy and the total of its starts; the organisation's
usage report gives its own deployments' starts apart from the requests; the CLI shows both.
Nobody else learns of a start: not another tenant, not even the one whose request woke a
platform replica."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from souverain.core.fleet import ReplicaStatus
from souverain.core.roles import Role
from souverain.db.tables import DeploymentRow, ModelRow, ReplicaRow
from souverain.jobs.energy import EnergyAccountant
from souverain.testing.factories import Tenant
from tests.conftest import Platform, on_one_database
from tests.server.test_autoscaling_api import cli

START_J, START_CPU_S, ENGINE_S = 7200.0, 3.5, 12.5  # 2 Wh


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now


def status(state: str, joules: float, cpu_s: float = START_CPU_S) -> ReplicaStatus:
    """What the node reports: at `ready`, the engine's CPU time and its start's marks."""
    ready = state == "ready"
    return ReplicaStatus(
        state=state, url="x", node_id="n", restarts=0, energy_j=joules, energy_source="rapl",
        version=2 if ready else 1,
        start_marks=(("actor", 1000.0), ("spawned", 1001.0), ("ready", 1001.0 + ENGINE_S))
        if ready else (("actor", 1000.0),),
        start_cpu_s=cpu_s if ready else None,
    )  # fmt: skip


async def started(platform: Platform, *, owner: Tenant | None) -> tuple[str, str]:
    """A deployment (the tenant's, or the platform's) whose replica's start the controller's
    accountant recorded: 7200 J from placement to ready. Returns (model, deployment id)."""
    model = await platform.served_model(owner_org_id=owner.org_id if owner else None)
    query = (
        select(ReplicaRow)
        .join(DeploymentRow, DeploymentRow.id == ReplicaRow.deployment_id)
        .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
        .where(ModelRow.name == model)
    )
    async with platform.sessions() as session:
        row = (await session.execute(query)).scalar_one()
    await start_again(platform, row, joules=START_J, cpu_s=START_CPU_S)
    return model, row.deployment_id


async def start_again(
    platform: Platform, row: ReplicaRow, *, joules: float, cpu_s: float, after_s: float = 0
) -> None:
    """The accountant follows `row` from starting to ready (a controller that first sees
    it starting), `after_s` later than now."""
    clock = Clock()
    clock.now += timedelta(seconds=after_s)
    accountant = EnergyAccountant(
        platform.sessions, interval_s=60, prompt_weight=1, completion_weight=1, clock=clock
    )
    accountant.observe(row, status("starting", 0.0))
    clock.now += timedelta(seconds=13)
    accountant.observe(row, status("ready", joules, cpu_s))
    await accountant.close_due()


async def get(platform: Platform, key: str, path: str) -> Any:
    async with platform.client(key) as client:
        response = await client.get(path)
    assert response.status_code == 200, response.text
    return response.json()


class TestDeploymentStartUp:
    async def test_the_owner_sees_the_last_start_and_the_total(self, platform: Platform) -> None:
        owner = await platform.factory.tenant(roles={"own": Role.OWNER})
        admin = await platform.factory.member_key(owner, "own", Role.OWNER)
        _, deployment_id = await started(platform, owner=owner)
        found = await get(platform, admin.key, f"/api/deployments/{deployment_id}")
        startup = found["startup"]
        assert startup["starts"] == 1
        assert startup["energy_j"] == START_J and startup["energy_wh"] == 2.0
        assert startup["cpu_s"] == START_CPU_S
        last = startup["last"]
        assert last["replica_id"] == found["replica_details"][0]["id"]
        assert last["cpu_s"] == START_CPU_S and last["engine_s"] == ENGINE_S
        assert last["energy_wh"] == 2.0 and last["wall_s"] > 0
        listed = await get(platform, admin.key, "/api/deployments")
        assert [d["startup"]["starts"] for d in listed if d["id"] == deployment_id] == [1]

    async def test_a_member_sees_the_deployment_but_not_its_starts(
        self, platform: Platform
    ) -> None:
        """A member sees its own usage only (as in the usage report): when a colleague's
        request woke the deployment is not its to know."""
        owner = await platform.factory.tenant(roles={"own": Role.OWNER, "mem": Role.MEMBER})
        member = await platform.factory.member_key(owner, "mem", Role.MEMBER)
        _, deployment_id = await started(platform, owner=owner)
        found = await get(platform, member.key, f"/api/deployments/{deployment_id}")
        assert found["id"] == deployment_id and found["startup"] is None

    async def test_the_last_start_is_the_latest_and_the_total_adds_them(
        self, platform: Platform
    ) -> None:
        owner = await platform.factory.tenant(roles={"own": Role.OWNER})
        admin = await platform.factory.member_key(owner, "own", Role.OWNER)
        _, deployment_id = await started(platform, owner=owner)
        async with platform.sessions() as session:
            row = (
                await session.execute(
                    select(ReplicaRow).where(ReplicaRow.deployment_id == deployment_id)
                )
            ).scalar_one()
        await start_again(platform, row, joules=3600.0, cpu_s=1.25, after_s=600)  # scaled up
        startup = (await get(platform, admin.key, f"/api/deployments/{deployment_id}"))["startup"]
        assert startup["starts"] == 2 and startup["energy_wh"] == 3.0
        assert startup["cpu_s"] == START_CPU_S + 1.25
        assert (startup["last"]["cpu_s"], startup["last"]["energy_wh"]) == (1.25, 1.0)

    async def test_a_deployment_never_started_says_so(self, platform: Platform) -> None:
        owner = await platform.factory.tenant(roles={"own": Role.OWNER})
        admin = await platform.factory.member_key(owner, "own", Role.OWNER)
        model = await platform.served_model(owner_org_id=owner.org_id)
        [found] = [
            d for d in await get(platform, admin.key, "/api/deployments") if d["model"] == model
        ]
        assert found["startup"] == {
            "starts": 0, "energy_j": 0.0, "energy_wh": 0.0, "co2e_g": 0.0, "cpu_s": 0.0,
            "last": None,
        }  # fmt: skip

    async def test_the_tenant_that_woke_a_platform_replica_sees_nothing_of_its_start(
        self, platform: Platform
    ) -> None:
        model, deployment_id = await started(platform, owner=None)
        waker = await platform.factory.tenant(roles={"own": Role.OWNER})
        key = await platform.factory.member_key(waker, "own", Role.OWNER)
        async with platform.client(key.key) as client:
            body = {"model": model, "messages": [{"role": "user", "content": "hi"}],
                    "max_tokens": 2}  # fmt: skip
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        seen = await get(platform, key.key, f"/api/deployments/{deployment_id}")
        assert seen["startup"] is None
        report = await get(platform, key.key, "/api/usage?limit=0")
        assert report["startup"]["starts"] == 0 and report["startup"]["energy_j"] == 0.0
        operator = await platform.operator_key()
        assert (await get(platform, operator, f"/api/deployments/{deployment_id}"))["startup"][
            "energy_j"
        ] == START_J

    async def test_another_tenant_does_not_see_an_organisations_start(
        self, platform: Platform
    ) -> None:
        owner = await platform.factory.tenant(roles={"own": Role.OWNER})
        _, deployment_id = await started(platform, owner=owner)
        other = await platform.factory.tenant(roles={"own": Role.OWNER})
        key = await platform.factory.member_key(other, "own", Role.OWNER)
        async with platform.client(key.key) as client:
            response = await client.get(f"/api/deployments/{deployment_id}")
        assert response.status_code == 404
        report = await get(platform, key.key, "/api/usage?limit=0")
        assert report["startup"]["energy_j"] == 0.0


@on_one_database()
class TestUsageReportStartUp:
    async def test_the_organisations_starts_are_a_line_apart_from_its_requests(
        self, platform: Platform
    ) -> None:
        owner = await platform.factory.tenant(roles={"own": Role.OWNER, "mem": Role.MEMBER})
        admin = await platform.factory.member_key(owner, "own", Role.OWNER)
        model, _ = await started(platform, owner=owner)
        report = await get(platform, admin.key, "/api/usage?limit=0")
        assert report["startup"] == {
            "starts": 1, "energy_j": START_J, "energy_wh": 2.0,
            "co2e_g": report["startup"]["co2e_g"], "cpu_s": START_CPU_S,
        }  # fmt: skip
        assert sum(g["energy_j"] for g in report["groups"]) == 0.0  # no request's
        later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert (await get(platform, admin.key, f"/api/usage?from={later.replace('+', '%2B')}"))[
            "startup"
        ]["starts"] == 0
        assert (await get(platform, admin.key, f"/api/usage?model={model}"))["startup"][
            "starts"
        ] == 1
        member = await platform.factory.member_key(owner, "mem", Role.MEMBER)
        assert (await get(platform, member.key, "/api/usage"))["startup"] is None  # its own only

    async def test_the_cli_shows_the_start_and_the_usage_line(self, platform: Platform) -> None:
        owner = await platform.factory.tenant(roles={"own": Role.OWNER})
        admin = await platform.factory.member_key(owner, "own", Role.OWNER)
        _, deployment_id = await started(platform, owner=owner)
        shown = await cli(platform, admin.key, "deployments", "show", deployment_id)
        assert shown.returncode == 0, shown.stderr
        assert "last start: " in shown.stdout and "3.5 CPU s" in shown.stdout
        assert "starts: 1, 2 Wh" in shown.stdout
        usage = await cli(platform, admin.key, "usage")
        assert usage.returncode == 0, usage.stderr
        assert "Starts of your own deployments' replicas" in usage.stdout
        assert "1, 2 Wh" in usage.stdout
