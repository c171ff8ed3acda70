"""The controller's energy accountant against the real database: conservation
(Σ attributed + idle = measured within 1 %), carbon from the datacenter's intensity or
hourly series, counters that restart, and a replica's start charged to the deployment's
owner, never to the requests that followed it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from souverain.core.fleet import ReplicaStatus, unanswered_status
from souverain.core.ids import new_id
from souverain.core.roles import Role
from souverain.db.metering import BudgetLedgerRow, BudgetRow, CarbonIntensityRow, EnergyIntervalRow
from souverain.db.tables import DeploymentRow, ReplicaRow, UsageRecordRow
from souverain.energy.carbon import hour_of
from souverain.jobs.energy import EnergyAccountant
from souverain.metering.invoices import invoice_of
from tests.conftest import Platform, usage_records


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC) + timedelta(seconds=1)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def reading(joules: float, state: str = "ready") -> ReplicaStatus:
    return ReplicaStatus(
        state=state, url="x", node_id="n", restarts=0, energy_j=joules, energy_source="rapl"
    )


async def serve(platform: Platform, count: int) -> tuple[str, str]:
    """A model with one replica that served `count` requests. Returns (model, replica id)."""
    model = await platform.served_model()
    tenant = await platform.factory.tenant(roles={"u": Role.MEMBER})
    key = await platform.factory.member_key(tenant, "u", Role.MEMBER)
    async with platform.client(key.key) as client:
        for i in range(count):
            body = {
                "model": model,
                "messages": [{"role": "user", "content": "one two three"}],
                "max_tokens": 2 + i,
            }
            assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
    [first, *_] = await usage_records(platform.sessions, count, model=model)
    assert first.replica_id
    return model, first.replica_id


async def replica(platform: Platform, replica_id: str) -> ReplicaRow:
    async with platform.sessions() as session:
        row = await session.get(ReplicaRow, replica_id)
    assert row is not None
    return row


class TestEnergyAccountant:
    async def test_conservation_and_attribution(self, platform: Platform) -> None:
        model, replica_id = await serve(platform, 4)
        clock = FakeClock()
        accountant = EnergyAccountant(
            platform.sessions, interval_s=10, prompt_weight=1, completion_weight=3, clock=clock
        )
        row = await replica(platform, replica_id)
        for joules in (1000.0, 1250.0, 1400.0):
            accountant.observe(row, reading(joules))
            clock.advance(4)
        await accountant.close_due()  # 12 s > 10 s: closes
        accountant.observe(row, reading(1500.0))  # nothing served in the next interval: idle
        clock.advance(11)
        await accountant.close_due()
        async with platform.sessions() as session:
            intervals = list(
                (
                    await session.execute(
                        select(EnergyIntervalRow).where(EnergyIntervalRow.replica_id == replica_id)
                    )
                ).scalars()
            )
            records = list(
                (
                    await session.execute(
                        select(UsageRecordRow).where(UsageRecordRow.model == model)
                    )
                ).scalars()
            )
            refreshed = await session.get(ReplicaRow, replica_id)
        measured = sum(i.energy_j for i in intervals)
        assert measured == pytest.approx(500.0)
        assert sum(i.attributed_j + i.idle_j for i in intervals) == pytest.approx(
            measured, rel=0.01
        )
        assert sum(r.energy_j or 0 for r in records) == pytest.approx(400.0, rel=0.01)
        assert intervals[-1].idle_j == pytest.approx(100.0)
        # heavier requests (more completion tokens) get more energy
        by_tokens = sorted(records, key=lambda r: r.completion_tokens)
        assert [r.energy_j for r in by_tokens] == sorted(r.energy_j for r in by_tokens)
        assert all(r.co2e_g == pytest.approx((r.energy_j or 0) / 3.6e6 * 50.0) for r in records)
        assert all(r.energy_source == "rapl" for r in records)
        assert (
            refreshed is not None
            and refreshed.energy_j_per_token
            and refreshed.energy_j_per_token > 0
        )

    async def test_counter_restart_and_hourly_series(self, platform: Platform) -> None:
        _, replica_id = await serve(platform, 1)
        clock = FakeClock()
        async with platform.sessions.begin() as session:
            session.add(
                CarbonIntensityRow(datacenter_id="fr-test", hour=hour_of(clock.now), g_per_kwh=20.0)
            )
        accountant = EnergyAccountant(
            platform.sessions, interval_s=5, prompt_weight=1, completion_weight=1, clock=clock
        )
        row = await replica(platform, replica_id)
        for joules in (0.0, 100.0, 5.0, 25.0):  # the actor restarted after 100 J
            accountant.observe(row, reading(joules))
            clock.advance(2)
        await accountant.close_due()
        async with platform.sessions() as session:
            [interval] = (
                await session.execute(
                    select(EnergyIntervalRow).where(EnergyIntervalRow.replica_id == replica_id)
                )
            ).scalars()
        assert interval.energy_j == pytest.approx(120.0)  # 100 before the restart, 20 after
        assert interval.carbon_intensity == 20.0
        assert interval.co2e_g == pytest.approx(120.0 / 3.6e6 * 20.0)

    async def test_an_unanswered_watch_is_no_restart_of_the_counter(
        self, platform: Platform
    ) -> None:
        """The actor did not answer one long poll: the status the controller assumed
        meanwhile has no reading, so the interval is what the meter moved, not all of it."""
        _, replica_id = await serve(platform, 1)
        accountant = EnergyAccountant(
            platform.sessions, interval_s=3600, prompt_weight=1, completion_weight=1,
            clock=FakeClock(),
        )  # fmt: skip
        row = await replica(platform, replica_id)
        for status in (reading(1000.0), unanswered_status(), reading(1060.0)):
            accountant.observe(row, status)
        accountant.retire(replica_id)
        await accountant.close_due()
        async with platform.sessions() as session:
            [interval] = (
                await session.execute(
                    select(EnergyIntervalRow).where(EnergyIntervalRow.replica_id == replica_id)
                )
            ).scalars()
        assert interval.energy_j == pytest.approx(60.0)

    async def test_retired_replicas_close_at_once(self, platform: Platform) -> None:
        _, replica_id = await serve(platform, 1)
        clock = FakeClock()
        accountant = EnergyAccountant(
            platform.sessions, interval_s=3600, prompt_weight=1, completion_weight=1, clock=clock
        )
        row = await replica(platform, replica_id)
        accountant.observe(row, reading(10.0))
        accountant.observe(row, reading(70.0))
        accountant.retire(replica_id)
        await accountant.close_due()
        async with platform.sessions() as session:
            [interval] = (
                await session.execute(
                    select(EnergyIntervalRow).where(EnergyIntervalRow.replica_id == replica_id)
                )
            ).scalars()
        assert interval.energy_j == pytest.approx(60.0) and interval.idle_j == 0.0

    async def test_requests_settled_after_the_last_reading_wait_for_the_next_interval(
        self, platform: Platform
    ) -> None:
        """Readings come with long polls, so an interval closing now has not seen the
        energy of a request settled since its last reading: that request belongs to the
        next interval, not a zero share of this one."""
        model, replica_id = await serve(platform, 2)
        records = await usage_records(platform.sessions, 2, model=model)
        settled = max(r.settled_at for r in records if r.settled_at is not None)
        clock = FakeClock()
        clock.now = settled.replace(tzinfo=UTC) - timedelta(seconds=30)
        accountant = EnergyAccountant(
            platform.sessions, interval_s=10, prompt_weight=1, completion_weight=1, clock=clock
        )
        row = await replica(platform, replica_id)
        accountant.observe(row, reading(100.0))
        clock.advance(20)
        accountant.observe(row, reading(100.0))  # read 10 s before the requests settled
        clock.advance(15)
        await accountant.close_due()  # due, but the requests came after its last reading
        assert all(
            r.energy_j is None for r in await usage_records(platform.sessions, 2, model=model)
        )
        accountant.observe(row, reading(160.0))  # the reading that saw them
        clock.advance(11)
        await accountant.close_due()
        attributed = await usage_records(platform.sessions, 2, model=model)
        assert all(r.energy_j is not None and r.energy_j > 0 for r in attributed)
        assert sum(r.energy_j or 0 for r in attributed) == pytest.approx(60.0)

    async def test_a_settlement_the_journal_writes_late_gets_the_reading_that_held_its_work(
        self, platform: Platform
    ) -> None:
        """A settlement reaches the database through the usage journal, after the moment it
        records (seconds when the database is busy). The interval cut at the reading that
        held the request's work waits `settle_s` for it: the request gets that energy, not
        the next interval's zero, and the interval is not written as idle."""
        model, replica_id = await serve(platform, 1)
        [record] = await usage_records(platform.sessions, 1, model=model)
        written = update(UsageRecordRow).where(UsageRecordRow.id == record.id)
        async with platform.sessions.begin() as session:  # still in the journal
            await session.execute(written.values(status="open"))
        clock = FakeClock()
        accountant = EnergyAccountant(platform.sessions, interval_s=10, prompt_weight=1,
                                      completion_weight=3, settle_s=5, clock=clock)  # fmt: skip
        row = await replica(platform, replica_id)
        for joules in (1000.0, 1200.0, 1300.0):  # the request's work, settled before the last
            accountant.observe(row, reading(joules))
            clock.advance(4)
        await accountant.close_due()  # due: cut at the last reading, written 5 s later
        async with platform.sessions.begin() as session:  # the journal catches up
            await session.execute(written.values(status=record.status))
        for _ in range(3):  # idle since: the meter does not move
            accountant.observe(row, reading(1300.0))
            clock.advance(6)
            await accountant.close_due()
        [attributed] = await usage_records(platform.sessions, 1, model=model)
        async with platform.sessions() as session:
            query = (
                select(EnergyIntervalRow.energy_j, EnergyIntervalRow.idle_j)
                .where(EnergyIntervalRow.replica_id == replica_id)
                .order_by(EnergyIntervalRow.started_at)
            )
            first = (await session.execute(query)).first()
        assert attributed.energy_j == pytest.approx(300.0)
        assert first is not None and tuple(first) == (300.0, 0.0)  # none of it idle

    async def test_an_interval_whose_meter_did_not_move_keeps_the_known_rate(
        self, platform: Platform
    ) -> None:
        """CPU time moves in ticks: an interval that served requests while its meter read
        the same twice must not make the next requests' estimate zero joules."""
        model, replica_id = await serve(platform, 2)
        clock = FakeClock()
        accountant = EnergyAccountant(
            platform.sessions, interval_s=10, prompt_weight=1, completion_weight=1, clock=clock
        )
        row = await replica(platform, replica_id)
        accountant.observe(row, reading(100.0))
        clock.advance(11)
        accountant.observe(row, reading(160.0))
        await accountant.close_due()
        known = (await replica(platform, replica_id)).energy_j_per_token
        assert known is not None and known > 0
        await serve_more(platform, model)
        clock.advance(11)
        accountant.observe(row, reading(160.0))  # the meter did not move
        await accountant.close_due()
        assert (await replica(platform, replica_id)).energy_j_per_token == pytest.approx(known)


async def serve_more(platform: Platform, model: str) -> None:
    tenant = await platform.factory.tenant(roles={"v": Role.MEMBER})
    key = await platform.factory.member_key(tenant, "v", Role.MEMBER)
    body = {"model": model, "messages": [{"role": "user", "content": "four"}], "max_tokens": 3}
    async with platform.client(key.key) as client:
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200


class TestStartUpEnergy:
    async def test_a_replicas_start_is_its_owners_not_the_requests(
        self, platform: Platform
    ) -> None:
        """From placement to ready the replica used 80 J: an interval of its own, charged to
        the organisation that owns the deployment (its energy budget, its invoice), while
        the other tenant's requests share only what came after."""
        model, replica_id = await serve(platform, 2)
        owner = await platform.factory.tenant(roles={"own": Role.OWNER})
        row = await replica(platform, replica_id)
        budget_id = new_id("bdg")
        async with platform.sessions.begin() as session:
            deployment = await session.get(DeploymentRow, row.deployment_id)
            assert deployment is not None
            platform_owned, deployment.org_id = deployment.org_id, owner.org_id
            session.add(BudgetRow(id=budget_id, org_id=owner.org_id, energy_kwh=1.0))
        try:
            clock = FakeClock()
            accountant = EnergyAccountant(
                platform.sessions, interval_s=10, prompt_weight=1, completion_weight=1,
                clock=clock,
            )  # fmt: skip
            # a long poll unanswered while it starts: no reading, not a restarted counter
            for status in (reading(0.0, "starting"), reading(30.0, "starting"),
                           unanswered_status(), reading(80.0, "ready"), reading(130.0)):  # fmt: skip
                accountant.observe(row, status)
                clock.advance(4)
            clock.advance(10)  # the serving interval, from the ready reading on, is due
            await accountant.close_due()
            async with platform.sessions() as session:
                query = select(EnergyIntervalRow).where(EnergyIntervalRow.replica_id == replica_id)
                intervals = {i.kind: i for i in (await session.execute(query)).scalars()}
                records = (
                    await session.execute(
                        select(UsageRecordRow).where(UsageRecordRow.model == model)
                    )
                ).scalars()
                requests_j = sum(r.energy_j or 0 for r in records)
                ledger = (
                    await session.execute(
                        select(BudgetLedgerRow).where(BudgetLedgerRow.budget_id == budget_id)
                    )
                ).scalar_one()
                bill = await invoice_of(
                    session, org_id=owner.org_id, org_name=owner.org_name,
                    period=clock.now.strftime("%Y-%m"),
                )  # fmt: skip
        finally:
            async with platform.sessions.begin() as session:
                deployment = await session.get(DeploymentRow, row.deployment_id)
                assert deployment is not None
                deployment.org_id = platform_owned
        start = intervals["startup"]
        assert start.energy_j == pytest.approx(80.0) and start.attributed_j == 0.0
        assert start.requests == 0 and start.idle_j == pytest.approx(80.0)  # no request's
        assert intervals["serving"].energy_j == pytest.approx(50.0)
        assert requests_j == pytest.approx(50.0)  # none of the start
        assert ledger.used_energy_j == pytest.approx(80.0)
        assert bill["energy"]["startup_kwh_own_deployments"] == pytest.approx(80.0 / 3.6e6)
        assert bill["energy"]["idle_kwh_own_deployments"] == 0.0  # not counted twice

    async def test_a_start_keeps_the_cpu_and_wall_time_the_node_read(
        self, platform: Platform
    ) -> None:
        """At ready the node reports the engine's CPU seconds since its spawn and the marks
        of its start: the start's interval holds them beside its energy."""
        _, replica_id = await serve(platform, 1)
        clock = FakeClock()
        accountant = EnergyAccountant(
            platform.sessions, interval_s=10, prompt_weight=1, completion_weight=1, clock=clock
        )
        row = await replica(platform, replica_id)
        accountant.observe(row, reading(0.0, "starting"))
        clock.advance(9)
        ready = replace(
            reading(45.0), start_cpu_s=6.25,
            start_marks=(("actor", 50.0), ("spawned", 51.0), ("listening", 53.0),
                         ("ready", 59.5)),
        )  # fmt: skip
        accountant.observe(row, ready)
        await accountant.close_due()
        async with platform.sessions() as session:
            start = (
                await session.execute(
                    select(EnergyIntervalRow).where(
                        EnergyIntervalRow.replica_id == replica_id,
                        EnergyIntervalRow.kind == "startup",
                    )
                )
            ).scalar_one()
        assert start.energy_j == pytest.approx(45.0)
        assert (start.cpu_s, start.engine_s) == (6.25, 8.5)

    async def test_a_replica_first_seen_ready_has_no_start_to_account(
        self, platform: Platform
    ) -> None:
        """Adopted after a change of controller: its counter holds more than its start."""
        _, replica_id = await serve(platform, 1)
        clock = FakeClock()
        accountant = EnergyAccountant(
            platform.sessions, interval_s=5, prompt_weight=1, completion_weight=1, clock=clock
        )
        row = await replica(platform, replica_id)
        for joules in (500.0, 540.0):
            accountant.observe(row, reading(joules))
            clock.advance(3)
        await accountant.close_due()
        async with platform.sessions() as session:
            kinds = (
                await session.execute(
                    select(EnergyIntervalRow.kind).where(EnergyIntervalRow.replica_id == replica_id)
                )
            ).scalars()
            assert list(kinds) == ["serving"]
