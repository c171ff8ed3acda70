"""Fairness between tenants: on a replica that serves one request at a time a tenant's
burst waits in its own line and another tenant's request is served next; on a replica of
several slots another tenant's waiting requests go before the burst's extra ones, and a
neighbour seen lately finds a slot at once; lines are bounded (429 with Retry-After, never
an unbounded pile). On a replica without GPUs no batch line starts beside a live request,
until one has waited `queue_batch_max_wait_s`. The tests wait for the server's route table
to show a replica's slots, never for a guessed time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from souverain.catalog.routes import ReplicaRoute, load_ready_routes
from souverain.core.ids import new_id, replica_secret
from souverain.core.roles import Role
from souverain.db.engine import create_engine_unpooled, session_factory
from souverain.db.tables import DeploymentRow
from souverain.gateway.routing import RouteTable
from souverain.server.app import create_app
from souverain.settings import Settings
from souverain.testing.factories import Factory
from souverain.testing.live import LiveServer, free_port
from souverain.testing.stand_in import StandInEngine
from souverain.testing.tls import every_replica_files
from tests.conftest import MASTER_KEY, wait_until

pytestmark = pytest.mark.slow

PER_ORG = 16
SERVICE_S = 0.4  # "#slow" streams: 0.2 s a token, 2 tokens
BATCH_MAX_WAIT_S = 3.0  # a batch line waiting this long takes a slot beside live traffic
# live traffic counts as present this long after a live request ended: longer than a busy
# machine's gap between one live request and the next of the same client
LIVE_S = 5.0


@dataclass
class Setup:
    url: str
    model: str
    factory: Factory
    engine: StandInEngine
    table: RouteTable  # the server's

    async def key(self, name: str) -> str:
        tenant = await self.factory.tenant(roles={name: Role.MEMBER})
        return (await self.factory.member_key(tenant, name, Role.MEMBER)).key

    async def stream(self, key: str, tokens: int = 2, tag: str = "hello") -> tuple[int, float]:
        body = {"model": self.model, "stream": True, "max_tokens": tokens,
                "messages": [{"role": "user", "content": f"#slow {tag}"}]}  # fmt: skip
        started = time.perf_counter()
        async with (
            httpx.AsyncClient(
                base_url=self.url, timeout=120, headers={"Authorization": f"Bearer {key}"}
            ) as client,  # fmt: skip
            client.stream("POST", "/v1/chat/completions", json=body) as answer,
        ):
            await answer.aread()
        return answer.status_code, time.perf_counter() - started

    async def slots_shown(self, replica_id: str, slots: int) -> None:
        """Wait until the server's route table shows the replica with `slots` slots."""

        def shown() -> bool:
            routes = self.table.routes  # replaced whole by each reload
            return any(r.replica_id == replica_id and r.slots == slots
                       for model_routes in routes.values() for r in model_routes)  # fmt: skip

        await wait_until(shown)


@pytest.fixture(scope="module")
async def setup(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Setup]:
    directory: Path = tmp_path_factory.mktemp("fairness")
    settings = Settings(
        data_dir=directory,
        database_url=f"sqlite:///{directory / 'souverain.db'}",
        secret_key=MASTER_KEY,  # type: ignore[arg-type]
        replica_refresh_s=0.2,
        queue_per_org=PER_ORG,
        queue_batch_max_wait_s=BATCH_MAX_WAIT_S,
        queue_live_s=LIVE_S,
        port=free_port(),
    )
    engine = StandInEngine(secret_for=lambda r: replica_secret(MASTER_KEY.encode(), r))
    app = create_app(settings)
    with LiveServer(app, port=settings.port) as server:
        db = create_engine_unpooled(settings.sqlalchemy_url)
        tls = await every_replica_files(session_factory(db), MASTER_KEY.encode(), directory / "tls")
        e = LiveServer(engine.app, tls=tls).start()
        factory = Factory(session_factory(db))
        replica = new_id("rep")
        # One replica whose engine serves one request at a time, like llama-cpp-python's.
        model, _ = await factory.served_model(
            url=f"{e.url}/r/{replica}", datacenter_id=await factory.datacenter("fair-dc"),
            replica_id=replica, engine="llamacpp",
        )  # fmt: skip
        found = Setup(server.url, model, factory, engine, app.state.souverain.routes)
        key = await found.key("probe")

        async def routable() -> bool:
            return (await found.stream(key))[0] == 200

        await wait_until(routable)
        yield found
        e.stop()
        await db.dispose()


async def test_another_tenant_is_served_next_not_after_the_burst(setup: Setup) -> None:
    """One slot: a tenant's burst of 12 is in line when another tenant asks; the other's
    request reaches the engine next (after the burst's request in flight, at most one more
    that was granted as it arrived), not after the burst: the order at the engine says so,
    whatever the machine's speed."""
    burst_key, other_key = await setup.key("burst"), await setup.key("other")
    for key in (burst_key, other_key):  # both keys known to the server: no lookup on the way
        assert (await setup.stream(key, 1, "warm"))[0] == 200
    setup.engine.requests.clear()
    setup.engine.peak_in_flight = 0
    burst = [asyncio.create_task(setup.stream(burst_key, 2, "burst")) for _ in range(12)]
    await wait_until(lambda: setup.engine.in_flight >= 1)
    await asyncio.sleep(0.1)  # the rest of the burst is in line
    status, waited = await setup.stream(other_key, 2, "other")
    results = await asyncio.gather(*burst)
    arrived = [_tenant(body) for body in setup.engine.requests]
    print(f"[fairness] other tenant behind a 12-request burst: {waited:.2f}s, arrived "
          f"{arrived.index('other') + 1} of {len(arrived)} (FIFO: 13)")  # fmt: skip
    assert status == 200 and all(code == 200 for code, _ in results)
    assert arrived.index("other") <= 2, arrived
    assert setup.engine.peak_in_flight == 1  # the engine never saw two at once


async def test_a_tenants_line_is_bounded(setup: Setup) -> None:
    key = await setup.key("flood")
    results = await asyncio.gather(*(setup.stream(key) for _ in range(PER_ORG + 6)))
    statuses = [code for code, _ in results]
    assert statuses.count(429) >= 4, statuses
    assert statuses.count(200) >= PER_ORG - 1


async def test_on_a_replica_of_several_slots_a_burst_leaves_one_for_another_tenant(
    setup: Setup,
) -> None:
    """Eight slots (as llama-server reports them): a tenant's burst of 12 holds at most 7,
    and another tenant's request starts at once, beside the burst, instead of waiting for
    one of it to end."""
    [route] = [r for routes in (await _routes(setup)) for r in routes]
    await setup.factory.replica_observed(route.replica_id, prompt_overhead=None,
                                         runtime="stand-in", slots=8)  # fmt: skip
    try:
        await setup.slots_shown(route.replica_id, 8)
        burst_key, other_key = await setup.key("burst8"), await setup.key("other8")
        assert (await setup.stream(other_key))[0] == 200  # the other tenant was here lately
        setup.engine.peak_in_flight = 0
        # The burst's requests take 1.2 s (6 tokens), the other tenant's 0.4 s.
        burst = [asyncio.create_task(setup.stream(burst_key, 6)) for _ in range(12)]
        await asyncio.sleep(0.2)  # seven in slots, five in line
        status, waited = await setup.stream(other_key)
        results = await asyncio.gather(*burst)
        print(f"[fairness] 8 slots, other tenant beside a 12-request burst: {waited:.2f}s "
              f"(service {SERVICE_S}s; after a slot of the burst: >{3 * SERVICE_S:.1f}s)")  # fmt: skip
        assert status == 200 and all(code == 200 for code, _ in results)
        # it did not wait for one of the burst to end: the burst holds at most seven, so
        # eight at once at the engine are seven of the burst and the other tenant's
        assert setup.engine.peak_in_flight == 8
    finally:
        await setup.factory.replica_observed(route.replica_id, prompt_overhead=None)
        await setup.slots_shown(route.replica_id, 1)


async def test_a_waiting_tenant_goes_before_the_bursts_extra_streams(setup: Setup) -> None:
    """Eight slots: tenant X keeps 16 streams going, tenant Y sends 4 at once. Y's requests
    that wait are given the slots X's streams free, before X's own waiting streams (Y
    holds fewer slots and X already holds more than its share); the engine never decodes
    more than its eight at once."""
    [route] = [r for routes in (await _routes(setup)) for r in routes]
    await setup.factory.replica_observed(route.replica_id, prompt_overhead=None,
                                         runtime="stand-in", slots=8)  # fmt: skip
    try:
        await setup.slots_shown(route.replica_id, 8)
        x_key, y_key = await setup.key("tenant-x"), await setup.key("tenant-y")
        for key in (x_key, y_key):  # both keys known to the server: no lookup on the way
            assert (await setup.stream(key, 1, "warm"))[0] == 200
        setup.engine.requests.clear()
        setup.engine.peak_in_flight = 0
        burst = [asyncio.create_task(setup.stream(x_key, 6, "tenant-x")) for _ in range(16)]
        await wait_until(lambda: setup.engine.in_flight >= 7)
        await asyncio.sleep(0.3)  # X's extra streams are in line, before any of Y's
        mine = await asyncio.gather(*(setup.stream(y_key, 2, "tenant-y") for _ in range(4)))
        results = await asyncio.gather(*burst)
        assert all(code == 200 for code, _ in [*mine, *results])
        arrived = [_tenant(body) for body in setup.engine.requests]
        first_y = arrived.index("tenant-y")
        last_y = len(arrived) - 1 - arrived[::-1].index("tenant-y")
        extra_x = arrived[first_y:last_y].count("tenant-x")
        print(f"[fairness] arrival order at the engine: {' '.join(a[-1] for a in arrived)}")
        assert first_y <= 8 and extra_x <= 1, arrived  # one at most: two streams ending together
        assert setup.engine.peak_in_flight == 8
    finally:
        await setup.factory.replica_observed(route.replica_id, prompt_overhead=None)
        await setup.slots_shown(route.replica_id, 1)


def _tenant(body: dict[str, object]) -> str:
    messages = body["messages"]
    assert isinstance(messages, list)
    return str(messages[-1]["content"]).removeprefix("#slow ")


async def _routes(setup: Setup) -> list[list[ReplicaRoute]]:
    async with setup.factory.sessions() as session:
        return [await load_ready_routes(session)]


async def test_a_batch_keys_requests_wait_behind_interactive_ones(setup: Setup) -> None:
    """One slot, one organisation: its batch key's 6 requests are in line when its
    interactive key asks; the interactive request reaches the engine next, not 7th. A key
    minted by the batch key is a batch key too, whatever it asks."""
    tenant = await setup.factory.tenant(roles={"ops": Role.MEMBER})
    live_key = (await setup.factory.member_key(tenant, "ops", Role.MEMBER)).key
    async with httpx.AsyncClient(
        base_url=setup.url, headers={"Authorization": f"Bearer {live_key}"}
    ) as client:
        made = await client.post("/api/keys", json={"name": "nightly", "priority": "batch"})
        assert made.status_code == 201 and made.json()["priority"] == "batch", made.text
        batch_key = made.json()["key"]
        wrong = await client.post("/api/keys", json={"priority": "urgent"})
        assert wrong.status_code == 422 and "priority" in wrong.text
    async with httpx.AsyncClient(
        base_url=setup.url, headers={"Authorization": f"Bearer {batch_key}"}
    ) as client:
        minted = await client.post("/api/keys", json={"priority": "interactive"})
        assert minted.json()["priority"] == "batch", minted.text
    for key in (batch_key, live_key):
        assert (await setup.stream(key, 1, "warm"))[0] == 200
    setup.engine.requests.clear()
    batch = [asyncio.create_task(setup.stream(batch_key, 2, "burst")) for _ in range(6)]
    await wait_until(lambda: setup.engine.in_flight >= 1)
    await asyncio.sleep(0.1)  # the rest of the batch key's requests are in line
    status, _ = await setup.stream(live_key, 2, "other")
    results = await asyncio.gather(*batch)
    arrived = [_tenant(body) for body in setup.engine.requests]
    assert status == 200 and all(code == 200 for code, _ in results)
    assert arrived.index("other") <= 2, arrived


async def _batch_key(setup: Setup, tenant_key: str) -> str:
    async with httpx.AsyncClient(
        base_url=setup.url, headers={"Authorization": f"Bearer {tenant_key}"}
    ) as client:
        made = await client.post("/api/keys", json={"name": "nightly", "priority": "batch"})
        assert made.status_code == 201, made.text
        return str(made.json()["key"])


async def test_a_route_carries_its_deployments_gpus(setup: Setup) -> None:
    """The gateway knows which replicas have GPUs (their batch share depends on it)."""
    [route] = [r for routes in (await _routes(setup)) for r in routes]
    async with setup.factory.sessions.begin() as session:
        await session.execute(update(DeploymentRow).values(gpus=2)
                              .where(DeploymentRow.id == route.deployment_id))  # fmt: skip
    try:
        [route] = [r for routes in (await _routes(setup)) for r in routes]
        assert route.gpus == 2
    finally:
        async with setup.factory.sessions.begin() as session:
            await session.execute(update(DeploymentRow).values(gpus=0)
                                  .where(DeploymentRow.id == route.deployment_id))  # fmt: skip


@pytest.fixture
async def cpu_replica(setup: Setup) -> AsyncIterator[tuple[str, str]]:
    """The replica with eight slots (its deployment has no GPU), and a live key and a batch
    key of one organisation, both known to the server."""
    [route] = [r for routes in (await _routes(setup)) for r in routes]
    assert route.gpus == 0
    await setup.factory.replica_observed(route.replica_id, prompt_overhead=None,
                                         runtime="stand-in", slots=8)  # fmt: skip
    try:
        await setup.slots_shown(route.replica_id, 8)
        live_key = await setup.key("cpu-live")
        batch_key = await _batch_key(setup, live_key)
        for key in (batch_key, live_key):
            assert (await setup.stream(key, 1, "warm"))[0] == 200
        await wait_until(lambda: setup.engine.in_flight == 0)  # the warm-up is over
        setup.engine.requests.clear()
        setup.engine.peak_in_flight = 0
        yield live_key, batch_key
    finally:
        await setup.factory.replica_observed(route.replica_id, prompt_overhead=None)
        await setup.slots_shown(route.replica_id, 1)


async def test_on_a_cpu_replica_no_batch_line_is_decoded_beside_a_live_request(
    setup: Setup, cpu_replica: tuple[str, str]
) -> None:
    """Eight slots, no GPU: while a live stream runs, the batch lines sent beside it wait
    (seven slots free), so the engine decodes the live stream alone; they run after it."""
    live_key, batch_key = cpu_replica
    live = asyncio.create_task(setup.stream(live_key, 2, "live"))
    await wait_until(lambda: setup.engine.in_flight >= 1)
    batch = [asyncio.create_task(setup.stream(batch_key, 2, "batch")) for _ in range(3)]
    status, _ = await live
    beside_live = setup.engine.peak_in_flight
    results = await asyncio.gather(*batch)
    assert status == 200 and all(code == 200 for code, _ in results)
    assert beside_live == 1, setup.engine.requests  # no line was decoded beside it
    assert [_tenant(body) for body in setup.engine.requests] == ["live"] + ["batch"] * 3


async def test_a_batch_line_that_waited_long_gets_a_slot_while_live_requests_follow(
    setup: Setup, cpu_replica: tuple[str, str]
) -> None:
    """Live requests follow each other for longer than `queue_batch_max_wait_s`: the batch
    does not pause for all of that time; one line at a time goes beside them (live traffic
    stays present between two of the client's requests however slow it is: `LIVE_S`)."""
    live_key, batch_key = cpu_replica
    follow = asyncio.get_running_loop().time() + 2 * BATCH_MAX_WAIT_S

    async def live_requests() -> list[int]:
        statuses = []
        while asyncio.get_running_loop().time() < follow:
            statuses.append((await setup.stream(live_key, 2, "live"))[0])
        return statuses

    live = asyncio.create_task(live_requests())
    await wait_until(lambda: setup.engine.in_flight >= 1)
    batch = [asyncio.create_task(setup.stream(batch_key, 2, "batch")) for _ in range(2)]
    statuses = await live
    results = await asyncio.gather(*batch)
    arrived = [_tenant(body) for body in setup.engine.requests]
    assert all(code == 200 for code in statuses) and all(code == 200 for code, _ in results)
    last_live = len(arrived) - 1 - arrived[::-1].index("live")
    assert arrived.index("batch") < last_live, arrived  # served while live requests followed
    assert setup.engine.peak_in_flight <= 2  # one live request and one aged line at most
