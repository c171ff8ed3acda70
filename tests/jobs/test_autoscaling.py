"""The controller scales deployments on the load the gateways report: replicas added when it
stays above target, removed after the idle period (drained first: stopped once the servers
report nothing left on them, or at the limit), down to zero at minimum 0 and back up when
a request waits; every change audited with its reason and shown on the deployment; a
replica whose node left is placed again, unless Ray restarted it on a live node meanwhile.
The real reconciler on the real database, the in-memory cluster in place of Ray, a clock
the test moves."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from souverain.core.ids import new_id
from souverain.db.audit import AuditEventRow
from souverain.db.demand import DeploymentDemandRow
from souverain.db.tables import DeploymentRow, ReplicaRow, utcnow
from souverain.installation.authority import Issuer
from souverain.jobs.deployments import autoscaling
from souverain.jobs.deployments.reconciler import DeploymentReconciler, EngineDefaults
from souverain.jobs.energy import EnergyAccountant
from tests.jobs.conftest import KEY, World


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Scaler:
    """One deployment, the reconciler, the clock, and the load as the gateways write it."""

    def __init__(self, world: World, deployment_id: str) -> None:
        self.world, self.deployment_id, self.clock = world, deployment_id, Clock()
        self.reconciler = DeploymentReconciler(
            world.sessions, world.cluster, master_key=KEY,
            engine=EngineDefaults(threads=1, bind_host=None),
            energy=EnergyAccountant(world.sessions, interval_s=30.0, prompt_weight=1.0,
                                    completion_weight=3.0),
            issuer=Issuer(world.sessions, KEY), clock=self.clock,
        )  # fmt: skip

    async def report(
        self, in_flight: int, waiting: int = 0, server: str = "s1", draining: int = 0
    ) -> None:
        async with self.world.sessions.begin() as session:
            await session.merge(
                DeploymentDemandRow(
                    server_id=server, deployment_id=self.deployment_id, in_flight=in_flight,
                    waiting=waiting, draining=draining, updated_at=self.clock.now,
                )
            )  # fmt: skip

    async def round(self, seconds: float = 1.0, *, ready: bool = True) -> DeploymentRow:
        """One reconcile round; the replicas it placed are ready (as the replica observer
        writes once their engines answer); then the clock moves on."""
        await self.reconciler.reconcile(self.deployment_id, await self.world.placer())
        async with self.world.sessions.begin() as session:
            await session.execute(
                update(ReplicaRow)
                .where(ReplicaRow.deployment_id == self.deployment_id)
                .values(state="ready" if ready else "starting")
            )
        self.clock.advance(seconds)
        return await self.deployment()

    async def deployment(self) -> DeploymentRow:
        async with self.world.sessions() as session:
            row = await session.get(DeploymentRow, self.deployment_id)
            assert row is not None
            return row

    async def replicas(self) -> int:
        return len(await self.replica_rows())

    async def replica_rows(self) -> list[ReplicaRow]:
        async with self.world.sessions() as session:
            query = select(ReplicaRow).where(ReplicaRow.deployment_id == self.deployment_id)
            return list((await session.execute(query)).scalars())

    async def draining(self) -> int:
        return sum(1 for r in await self.replica_rows() if r.draining_since is not None)

    async def decisions(self) -> list[dict[str, Any]]:
        async with self.world.sessions() as session:
            query = (
                select(AuditEventRow)
                .where(
                    AuditEventRow.action == "deployment.scale",
                    AuditEventRow.target_id == self.deployment_id,
                )
                .order_by(AuditEventRow.seq)
            )
            rows = (await session.execute(query)).scalars()
            return [json.loads(row.details) for row in rows]


CREATED: list[str] = []


@pytest.fixture(autouse=True)
async def forget_deployments(world: World) -> AsyncIterator[None]:
    """The deployments of a test's model are removed after it: the database is shared by
    the state tests, and other tests' controllers reconcile every deployment."""
    yield
    async with world.sessions.begin() as session:
        await session.execute(
            delete(DeploymentRow).where(
                DeploymentRow.id.in_(CREATED) | (DeploymentRow.model_id == world.base_model_id)
            )
        )
    CREATED.clear()


async def autoscaled(world: World, *, low: int, high: int, replicas: int, idle_s: int = 60) -> str:
    deployment_id = new_id("dep")
    CREATED.append(deployment_id)
    async with world.sessions.begin() as session:
        session.add(
            DeploymentRow(
                id=deployment_id, name=deployment_id, model_id=world.base_model_id, org_id=None,
                engine="stand-in", replicas=replicas, min_replicas=low, max_replicas=high,
                target_busy_per_replica=4.0, scale_down_idle_s=idle_s, datacenters=[], cpus=1,
                gpus=0, engine_args={}, status="pending", status_reason="",
            )
        )  # fmt: skip
    return deployment_id


class TestScalingUp:
    async def test_a_sustained_load_adds_replicas_up_to_the_maximum(self, world: World) -> None:
        scaler = Scaler(world, await autoscaled(world, low=1, high=3, replicas=1))
        await scaler.report(in_flight=8, waiting=4, server="s1")
        await scaler.report(in_flight=6, server="s2")  # two gateways: 18 outstanding
        assert (await scaler.round()).replicas == 1  # one reading above target: not yet
        row = await scaler.round()
        assert row.replicas == 3 and await scaler.replicas() == 3
        assert "18 requests outstanding" in row.scaling_reason
        assert row.scaled_at is not None
        [decision] = await scaler.decisions()
        assert decision["from"] == 1 and decision["to"] == 3
        assert decision["reason"] == row.scaling_reason

    async def test_a_silent_gateways_old_report_counts_for_nothing(self, world: World) -> None:
        scaler = Scaler(world, await autoscaled(world, low=1, high=3, replicas=1))
        await scaler.report(in_flight=40)
        scaler.clock.advance(60)  # that server stopped reporting a minute ago
        for _ in range(3):
            row = await scaler.round()
        assert row.replicas == 1 and await scaler.decisions() == []

    async def test_a_fixed_deployment_ignores_the_load(self, world: World) -> None:
        scaler = Scaler(world, await autoscaled(world, low=1, high=3, replicas=1))
        async with world.sessions.begin() as session:
            row = await session.get(DeploymentRow, scaler.deployment_id)
            assert row is not None
            row.min_replicas = row.max_replicas = None  # as every deployment before autoscaling
        await scaler.report(in_flight=100)
        for _ in range(3):
            assert (await scaler.round()).replicas == 1
        assert await scaler.replicas() == 1


class TestScalingDown:
    async def test_back_to_the_minimum_after_the_idle_period_not_before(self, world: World) -> None:
        scaler = Scaler(world, await autoscaled(world, low=1, high=3, replicas=3))
        await scaler.report(in_flight=0)
        for _ in range(6):
            row = await scaler.round(seconds=10)  # below target from 0 s to 50 s
        assert row.replicas == 3 and await scaler.replicas() == 3
        row = await scaler.round(seconds=10)  # 60 s
        assert row.replicas == 1 and row.scaling_reason.startswith("idle for 60s")
        assert await scaler.replicas() == 3 and await scaler.draining() == 2  # none stopped yet
        assert world.cluster.stopped == []
        row = await scaler.round(seconds=10)  # drained: no server reports anything on them
        assert await scaler.replicas() == 1 and len(world.cluster.stopped) == 2

    async def test_back_to_the_minimum_when_the_idle_period_ends_not_a_drain_later(
        self, world: World
    ) -> None:
        """The released replicas drain during the idle period's last seconds (out of the
        routes, still counted), so they stop as the period ends: no quiet wait after it."""
        scaler = Scaler(world, await autoscaled(world, low=1, high=3, replicas=3, idle_s=10))
        await scaler.report(in_flight=0)
        for second in range(10):  # rounds at 0 s .. 9 s of idleness
            row = await scaler.round(seconds=1)
            assert row.replicas == 3 and await scaler.replicas() == 3, second
        assert await scaler.draining() == 2  # out of the routes ahead of the decision
        assert row.status == "ready" and "2 draining" in row.status_reason
        assert world.cluster.stopped == [] and len(world.cluster.replica_specs) == 3
        row = await scaler.round(seconds=1)  # 10 s: the idle period ends
        assert row.replicas == 1 and row.scaling_reason.startswith("idle for 10s")
        assert await scaler.replicas() == 1 and len(world.cluster.stopped) == 2

    async def test_a_replica_drained_ahead_stops_only_once_its_requests_end(
        self, world: World
    ) -> None:
        scaler = Scaler(world, await autoscaled(world, low=1, high=3, replicas=2, idle_s=10))
        await scaler.report(in_flight=0)
        for _ in range(8):
            await scaler.round(seconds=1)
        assert await scaler.draining() == 1
        await scaler.report(in_flight=1, draining=1)  # routed to it just before the mark
        for _ in range(5):  # the count drops at 10 s; the request is still on it
            row = await scaler.round(seconds=1)
        assert row.replicas == 1 and await scaler.replicas() == 2
        assert world.cluster.stopped == []
        await scaler.report(in_flight=0)  # it finished
        await scaler.round()
        assert await scaler.replicas() == 1 and len(world.cluster.stopped) == 1

    async def test_load_back_before_the_idle_period_ends_keeps_every_replica(
        self, world: World
    ) -> None:
        scaler = Scaler(world, await autoscaled(world, low=1, high=3, replicas=3, idle_s=10))
        await scaler.report(in_flight=0)
        for _ in range(8):
            await scaler.round(seconds=1)
        assert await scaler.draining() == 2
        await scaler.report(in_flight=12)  # the burst is back
        row = await scaler.round(seconds=1)
        assert await scaler.draining() == 0 and await scaler.replicas() == 3
        assert row.replicas == 3 and world.cluster.stopped == []
        assert len(world.cluster.replica_specs) == 3  # taken back warm, none started
        assert await scaler.decisions() == []

    async def test_a_sawtooth_load_does_not_flap(self, world: World) -> None:
        scaler = Scaler(world, await autoscaled(world, low=1, high=3, replicas=1))
        for _ in range(4):  # bursts of 5 s every 30 s; the idle period is 60 s
            await scaler.report(in_flight=12)
            for _ in range(5):
                await scaler.round()
            await scaler.report(in_flight=0)
            for _ in range(25):
                await scaler.round()
        assert [(d["from"], d["to"]) for d in await scaler.decisions()] == [(1, 3)]
        assert await scaler.replicas() == 3


class TestScaleToZero:
    async def test_idle_releases_the_last_replica_and_a_waiting_request_wakes_it(
        self, world: World
    ) -> None:
        scaler = Scaler(world, await autoscaled(world, low=0, high=2, replicas=1, idle_s=30))
        await scaler.round()
        assert await scaler.replicas() == 1
        for _ in range(4):
            row = await scaler.round(seconds=10)
        assert row.replicas == 0 and row.status == "draining"
        row = await scaler.round(seconds=10)
        assert await scaler.replicas() == 0 and row.status == "stopped"
        assert "the next request starts a replica" in row.status_reason

        await scaler.report(in_flight=0, waiting=1)  # a request waits for a replica
        row = await scaler.round()  # one reading is enough from zero
        assert row.replicas == 1 and await scaler.replicas() == 1
        assert row.status == "starting"
        assert "waiting with no replica" in row.scaling_reason
        assert world.cluster.replica_specs  # an engine was started for it
        assert [(d["from"], d["to"]) for d in await scaler.decisions()] == [(1, 0), (0, 1)]

    async def test_a_replica_still_starting_is_not_released(self, world: World) -> None:
        scaler = Scaler(world, await autoscaled(world, low=0, high=2, replicas=1, idle_s=30))
        for _ in range(10):
            row = await scaler.round(seconds=10, ready=False)  # a slow engine, nobody asking
        assert row.replicas == 1 and await scaler.replicas() == 1
        row = await scaler.round(seconds=10)  # it becomes ready after this round
        for _ in range(3):
            row = await scaler.round(seconds=10)  # idle 0 s, 10 s, 20 s
        assert row.replicas == 1
        row = await scaler.round(seconds=10)  # 30 s
        assert row.replicas == 0
        await scaler.round(seconds=10)  # drained
        assert await scaler.replicas() == 0


class TestDraining:
    async def test_a_released_replica_stops_only_once_the_servers_have_nothing_on_it(
        self, world: World
    ) -> None:
        scaler = Scaler(world, await autoscaled(world, low=1, high=3, replicas=2, idle_s=10))
        await scaler.round()
        await scaler.report(in_flight=1)  # two replicas for one request: one too many
        for _ in range(2):
            await scaler.round(seconds=10)
        assert await scaler.draining() == 1 and world.cluster.stopped == []
        for _ in range(5):
            await scaler.report(in_flight=1, draining=1)  # the request is on the draining one
            await scaler.round(seconds=10)
        assert await scaler.replicas() == 2 and world.cluster.stopped == []
        await scaler.report(in_flight=0)  # it finished
        await scaler.round()
        assert await scaler.replicas() == 1 and len(world.cluster.stopped) == 1
        assert await scaler.draining() == 0

    async def test_draining_is_bounded(self, world: World) -> None:
        scaler = Scaler(world, await autoscaled(world, low=1, high=3, replicas=2, idle_s=10))
        await scaler.round()
        await scaler.report(in_flight=1)
        for _ in range(2):
            await scaler.round(seconds=10)
        assert await scaler.draining() == 1
        for _ in range(13):  # a stream that never ends
            await scaler.report(in_flight=1, draining=1)
            await scaler.round(seconds=10)
        assert await scaler.replicas() == 1 and len(world.cluster.stopped) == 1

    async def test_a_request_while_the_last_replica_drains_takes_it_back(
        self, world: World
    ) -> None:
        scaler = Scaler(world, await autoscaled(world, low=0, high=2, replicas=1, idle_s=10))
        await scaler.round()
        for _ in range(2):
            row = await scaler.round(seconds=10)
        assert row.status == "draining" and await scaler.draining() == 1
        await scaler.report(in_flight=0, waiting=1)
        row = await scaler.round(seconds=0.5)
        assert row.replicas == 1 and row.status == "ready"  # warm at once: no new engine
        assert await scaler.draining() == 0 and len(world.cluster.replica_specs) == 1
        assert world.cluster.stopped == []


class TestWakingFromZero:
    async def test_the_controller_finds_at_once_a_deployment_at_zero_a_request_waits_for(
        self, world: World
    ) -> None:
        """Read every 0.1 s by the controller, so the first token does not also wait for
        its next round: at zero with a fresh report of a waiting request, and only then."""
        asleep = Scaler(world, await autoscaled(world, low=0, high=2, replicas=0))
        awake = Scaler(world, await autoscaled(world, low=0, high=2, replicas=1))
        for scaler in (asleep, awake):
            await scaler.report(in_flight=0, waiting=1)
        async with world.sessions() as session:
            found = await autoscaling.waking_from_zero(session, now=asleep.clock.now)
            assert asleep.deployment_id in found and awake.deployment_id not in found
            later = asleep.clock.now + timedelta(seconds=autoscaling.DEMAND_FRESH_S + 1)
            assert asleep.deployment_id not in await autoscaling.waking_from_zero(
                session, now=later
            )  # a stopped server's old report wakes nothing


class TestALostNode:
    """A replica read on a node that left the cluster is stopped and placed again, unless
    its actor now answers from another node: Ray restarted it there (a host that rejoined)
    after the round read the row, and it may already serve."""

    async def lost(self, world: World) -> tuple[Scaler, ReplicaRow]:
        scaler = Scaler(world, await autoscaled(world, low=1, high=1, replicas=1))
        await scaler.round()
        [replica] = await scaler.replica_rows()
        async with world.sessions.begin() as session:  # as read before its node was lost
            await session.execute(
                update(ReplicaRow).where(ReplicaRow.id == replica.id).values(node_id="node-gone")
            )
        return scaler, replica

    async def test_a_replica_restarted_on_a_live_node_keeps_serving(self, world: World) -> None:
        scaler, replica = await self.lost(world)
        await scaler.round()
        [kept] = await scaler.replica_rows()
        assert kept.id == replica.id and world.cluster.stopped == []

    async def test_a_replica_still_on_the_lost_node_is_placed_again(self, world: World) -> None:
        scaler, replica = await self.lost(world)
        status = world.cluster.replicas[replica.actor_name]
        world.cluster.replicas[replica.actor_name] = replace(status, node_id="node-gone")
        await scaler.round()
        [placed] = await scaler.replica_rows()
        assert world.cluster.stopped == [replica.actor_name] and placed.id != replica.id
