"""A shared model nobody asks for leaves its base's replicas after its idle period, frees
its room under the caps for a model waiting past them, and comes back when a request waits
for it; each change audited with its reason and shown on the shared deployment. The real
reconciler on the real database, the in-memory cluster in place of Ray, a clock the test
moves, and the server's reports (demand rows, usage records) written as a server writes
them."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from souverain.core.ids import new_id
from souverain.db.audit import AuditEventRow
from souverain.db.demand import DeploymentDemandRow
from souverain.db.tables import DeploymentRow, UsageRecordRow
from souverain.installation.authority import Issuer
from souverain.jobs.deployments import idle_adapters, sharing
from souverain.jobs.deployments.reconciler import EngineDefaults
from souverain.jobs.runner import Controller
from tests.jobs.conftest import KEY, World
from tests.jobs.test_autoscaling import Clock
from tests.jobs.test_shared_adapters import Shared, shared_base

IDLE_S = 60


@dataclass
class Idle:
    shared: Shared
    clock: Clock

    async def model(self, *, unloads: bool = True) -> tuple[str, str]:
        """A fine-tuned model of the tenant on a shared deployment that unloads its adapter
        after `IDLE_S` without a request (as a succeeded job makes it), or keeps it loaded:
        (model id, deployment id)."""
        model_id = await self.shared.fine_tuned(self.shared.world.tenant.org_id)
        deployment_id = self.shared.made[-1]
        if unloads:
            async with self.shared.world.sessions.begin() as session:
                await session.execute(update(DeploymentRow).where(
                    DeploymentRow.id == deployment_id).values(
                    min_replicas=0, max_replicas=1, scale_down_idle_s=IDLE_S))  # fmt: skip
        return model_id, deployment_id

    async def older_and_newer(self) -> tuple[tuple[str, str], tuple[str, str]]:
        """Two models of the tenant: the older one loaded everywhere and unloading after
        `IDLE_S`, then a newer one that keeps its adapter (not loaded yet)."""
        older = await self.model()
        await self.rounds(3)
        return older, await self.model(unloads=False)

    async def hosts_of(self, deployment_id: str) -> list[str]:
        """The base deployments the controller's wake-up reconciles for the model."""
        async with self.shared.world.sessions() as session:
            return await idle_adapters.hosts_of(session, [deployment_id])

    async def rounds(self, count: int = 1, *, seconds: float = 1.0) -> None:
        for _ in range(count):
            await self.shared.round()
            self.clock.advance(seconds)

    async def asked(self, deployment_id: str) -> None:
        """A request for the model, admitted now and settled (its usage record)."""
        async with self.shared.world.sessions.begin() as session:
            session.add(UsageRecordRow(
                id=new_id("usg"), org_id=self.shared.world.tenant.org_id, key_id="k",
                user_id="u", endpoint="chat", model="ft", stream=False,
                deployment_id=deployment_id, status="ok", server_id="s1",
                created_at=self.clock.now, settled_at=self.clock.now,
            ))  # fmt: skip

    async def report(self, deployment_id: str, *, in_flight: int = 0, waiting: int = 0) -> None:
        """What a server reports of the model's requests: answering, or waiting for its
        adapter."""
        async with self.shared.world.sessions.begin() as session:
            await session.merge(DeploymentDemandRow(
                server_id="s1", deployment_id=deployment_id, in_flight=in_flight,
                waiting=waiting, draining=0, updated_at=self.clock.now,
            ))  # fmt: skip

    async def wake(self) -> None:
        """The controller's wake-up check (run every tenth of a second), once, with the
        test's reconciler (its clock)."""
        world = self.shared.world
        controller = Controller(
            world.sessions, world.cluster, master_key=KEY, issuer=Issuer(world.sessions, KEY),
            engine=EngineDefaults(threads=1, bind_host=None),
        )  # fmt: skip
        controller.deployments = self.shared.reconciler
        await controller.wake_from_zero()

    async def loaded_everywhere(self, model_id: str) -> bool:
        held = await self.shared.held()
        return all(model_id in adapters for sets in held.values() for adapters in sets)

    async def loaded_nowhere(self, model_id: str) -> bool:
        held = await self.shared.held()
        return all(model_id not in adapters for sets in held.values() for adapters in sets)

    async def decisions(self, deployment_id: str) -> list[dict[str, Any]]:
        async with self.shared.world.sessions() as session:
            query = (
                select(AuditEventRow)
                .where(AuditEventRow.action == "deployment.scale",
                       AuditEventRow.target_id == deployment_id)
                .order_by(AuditEventRow.seq)
            )  # fmt: skip
            return [json.loads(row.details) for row in (await session.execute(query)).scalars()]


@pytest.fixture
async def idle(world: World) -> AsyncIterator[Idle]:
    clock = Clock()
    async with shared_base(world, clock) as shared:
        yield Idle(shared, clock)
        async with world.sessions.begin() as session:
            for table in (DeploymentDemandRow, UsageRecordRow):
                await session.execute(delete(table).where(table.deployment_id.in_(shared.made)))


@pytest.fixture
def one_per_org(monkeypatch: pytest.MonkeyPatch) -> None:
    """A replica holds one adapter of an organisation at most (`sharing.PER_ORG`)."""
    monkeypatch.setattr(sharing, "PER_ORG", 1)


class TestIdleAdapter:
    async def test_an_unused_adapter_is_unloaded_and_a_waiting_request_loads_it_again(
        self, idle: Idle
    ) -> None:
        model_id, deployment_id = await idle.model()
        await idle.rounds(3)
        assert await idle.loaded_everywhere(model_id)
        await idle.rounds(1, seconds=IDLE_S - 10)
        await idle.asked(deployment_id)  # a request within the idle period: it stays
        await idle.rounds(1, seconds=IDLE_S - 10)
        await idle.rounds(1)
        assert await idle.loaded_everywhere(model_id)
        row = await idle.shared.deployment(deployment_id)
        assert row.replicas == 1 and row.status == "ready", row.status_reason

        await idle.rounds(1, seconds=IDLE_S)  # nobody asks for a whole idle period
        await idle.rounds(2)
        assert await idle.loaded_nowhere(model_id)
        row = await idle.shared.deployment(deployment_id)
        assert row.replicas == 0 and row.status == idle_adapters.IDLE
        assert re.search(rf"idle for \d+s \(scale_down_idle_s {IDLE_S}\)", row.status_reason)
        assert "the next request loads it again" in row.status_reason
        [unloaded] = await idle.decisions(deployment_id)
        assert (unloaded["from"], unloaded["to"]) == (1, 0)
        assert "unloaded from the shared replicas of its base" in unloaded["reason"]

        await idle.report(deployment_id, waiting=1)  # a request waits for it
        assert await idle.hosts_of(deployment_id) == [idle.shared.base_deployment]
        await idle.wake()  # no round: the shared deployment, then its base, at once
        assert await idle.loaded_everywhere(model_id)
        row = await idle.shared.deployment(deployment_id)
        assert row.replicas == 1 and row.scaling_reason == "loaded again: 1 request waiting for it"
        assert [d["to"] for d in await idle.decisions(deployment_id)] == [0, 1]

    async def test_a_request_in_flight_keeps_it_loaded(self, idle: Idle) -> None:
        model_id, deployment_id = await idle.model()
        await idle.rounds(3)
        for _ in range(3):  # a long answer, reported while it runs
            await idle.report(deployment_id, in_flight=1)
            await idle.rounds(1, seconds=IDLE_S)
        assert await idle.loaded_everywhere(model_id)
        assert (await idle.shared.deployment(deployment_id)).replicas == 1

    async def test_a_fixed_shared_deployment_keeps_its_adapter(self, idle: Idle) -> None:
        model_id, deployment_id = await idle.model(unloads=False)
        await idle.rounds(3, seconds=10 * IDLE_S)
        assert await idle.loaded_everywhere(model_id)
        assert (await idle.shared.deployment(deployment_id)).status == "ready"

    @pytest.mark.usefixtures("one_per_org")
    async def test_an_idle_unload_makes_room_for_a_model_waiting_past_a_cap(
        self, idle: Idle
    ) -> None:
        (older, older_deployment), (newer, newer_deployment) = await idle.older_and_newer()
        await idle.rounds(2)
        assert await idle.loaded_nowhere(newer)
        waiting = await idle.shared.deployment(newer_deployment)
        assert waiting.status == "pending" and "1 adapters" in waiting.status_reason
        await idle.rounds(1, seconds=IDLE_S)
        await idle.rounds(3)
        assert await idle.loaded_nowhere(older) and await idle.loaded_everywhere(newer)
        assert (await idle.shared.deployment(older_deployment)).status == idle_adapters.IDLE
        assert (await idle.shared.deployment(newer_deployment)).status == "ready"

    @pytest.mark.usefixtures("one_per_org")
    async def test_a_woken_adapter_waits_for_room_instead_of_evicting_one_in_use(
        self, idle: Idle
    ) -> None:
        (older, older_deployment), (newer, newer_deployment) = await idle.older_and_newer()
        await idle.rounds(1, seconds=IDLE_S)
        await idle.rounds(3)  # the older one idled out, the newer one took its room
        assert await idle.loaded_nowhere(older) and await idle.loaded_everywhere(newer)

        await idle.report(older_deployment, waiting=1)  # a request for the older one
        await idle.wake()
        await idle.rounds(2)
        assert await idle.loaded_everywhere(newer) and await idle.loaded_nowhere(older)
        assert (await idle.shared.deployment(newer_deployment)).status == "ready"
        woken = await idle.shared.deployment(older_deployment)
        assert woken.replicas == 1 and woken.status == "pending"
        assert "its organisation has 1 adapters" in woken.status_reason

    async def test_only_a_base_deployment_that_holds_adapters_is_woken(self, idle: Idle) -> None:
        _, deployment_id = await idle.model()
        one_adapter = new_id("dep")  # llama-cpp-python serves one adapter, fixed at start
        async with idle.shared.world.sessions.begin() as session:
            base = await session.get(DeploymentRow, idle.shared.base_deployment)
            assert base is not None
            session.add(DeploymentRow(
                id=one_adapter, name=one_adapter, model_id=base.model_id, org_id=None,
                engine="llamacpp", replicas=0, datacenters=[], cpus=1, gpus=0,
                engine_args={"runtime": "llama-cpp-python"}, status="pending",
                status_reason="",
            ))  # fmt: skip
        idle.shared.made.append(one_adapter)
        assert await idle.hosts_of(deployment_id) == [idle.shared.base_deployment]
