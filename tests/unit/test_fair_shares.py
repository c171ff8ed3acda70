"""Fair shares of a replica's slots: the rule (`gateway/shares.py`) and the order in which the
fair queue (`gateway/queueing.py`) hands freed slots out. A tenant alone uses every slot;
while another waits, the tenant holding fewer slots is served first and the other holds
no more than its share; live requests go before batch lines, which leave live traffic a
slot (by default every slot of a replica without GPUs), and a batch line that waited long
takes one all the same. The clock is a counter the tests move."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from souverain.catalog.routes import ReplicaRoute
from souverain.core.errors import RateLimitedError
from souverain.gateway.queueing import FairQueue
from souverain.gateway.routing import RouteTable
from souverain.gateway.shares import (
    Seen,
    SharePolicy,
    SlotShares,
    batch_cap,
    fair_share,
    headroom,
    may_take,
)

POLICY = SharePolicy(batch_share=1.0, neighbour_s=10.0, live_s=1.0)


def seen(**changes: object) -> Seen:
    base = {"slots": 8, "busy": 0, "held": 0, "batch": 0, "contending": 0,
            "neighbours": False, "live": False}  # fmt: skip
    return Seen(**(base | changes))  # type: ignore[arg-type]


class TestTheRule:
    def test_an_organisation_alone_may_use_every_slot(self) -> None:
        assert may_take(seen(busy=7, held=7), batch=False, policy=POLICY)
        assert not may_take(seen(busy=8, held=8), batch=False, policy=POLICY)

    def test_beside_a_neighbour_seen_lately_one_slot_in_eight_is_left(self) -> None:
        assert (headroom(1), headroom(8), headroom(16)) == (0, 1, 2)
        assert not may_take(seen(busy=7, held=7, neighbours=True), batch=False, policy=POLICY)
        assert may_take(seen(busy=7, held=0, neighbours=True), batch=False, policy=POLICY)

    def test_while_others_wait_an_organisation_holds_at_most_its_share(self) -> None:
        assert (fair_share(8, 2), fair_share(8, 3), fair_share(3, 2), fair_share(1, 5)) == (
            4, 3, 2, 1,
        )  # fmt: skip
        assert not may_take(seen(busy=5, held=4, contending=1), batch=False, policy=POLICY)
        assert may_take(seen(busy=5, held=1, contending=1), batch=False, policy=POLICY)

    def test_batch_lines_leave_live_traffic_a_slot(self) -> None:
        assert (batch_cap(1, 1.0), batch_cap(8, 1.0), batch_cap(8, 0.5)) == (0, 7, 4)
        assert batch_cap(8, SharePolicy().batch_share_for(gpus=1)) == 2  # 2 of 8 with GPUs
        assert not may_take(seen(busy=7, held=7, batch=7, live=True), batch=True, policy=POLICY)
        assert may_take(seen(busy=7, held=7, batch=7), batch=True, policy=POLICY)  # no live
        assert may_take(seen(busy=7, held=7, batch=7, live=True), batch=False, policy=POLICY)

    def test_on_a_one_slot_engine_a_batch_line_waits_while_live_requests_follow(self) -> None:
        one = seen(slots=1, live=True)
        assert not may_take(one, batch=True, policy=POLICY)
        assert may_take(one, batch=False, policy=POLICY)

    def test_by_default_a_replica_without_gpus_gives_batch_lines_no_slot_beside_live_traffic(
        self,
    ) -> None:
        default = SharePolicy()
        assert not may_take(seen(live=True), batch=True, policy=default)  # CPU: none of 8
        assert may_take(seen(), batch=True, policy=default)  # no live traffic: every slot
        assert may_take(seen(live=True, gpus=1), batch=True, policy=default)  # GPUs: 2 of 8
        assert not may_take(seen(live=True, gpus=1, busy=2, batch=2), batch=True, policy=default)
        # an operator's share applies to every replica
        explicit = SharePolicy(batch_share=0.25)
        assert may_take(seen(live=True, busy=1, batch=1), batch=True, policy=explicit)
        assert not may_take(seen(live=True, gpus=1), batch=True, policy=SharePolicy(batch_share=0))

    def test_a_batch_line_that_waited_long_takes_one_slot_beside_live_traffic(self) -> None:
        default = SharePolicy(batch_max_wait_s=30.0)
        live = seen(live=True, busy=1)
        assert not may_take(live, batch=True, policy=default, waited_s=29.9)
        assert may_take(live, batch=True, policy=default, waited_s=30.0)
        # one such line per replica at a time
        assert not may_take(seen(live=True, busy=2, batch=1), batch=True, policy=default,
                            waited_s=300)  # fmt: skip
        # while a live request waits: a free slot, but never the last one
        waits = seen(live=True, live_waiting=True, busy=6)
        assert may_take(waits, batch=True, policy=default, waited_s=30.0)
        assert not may_take(waits, batch=True, policy=default, waited_s=1.0)
        last = seen(slots=1, live=True, live_waiting=True)
        assert not may_take(last, batch=True, policy=default, waited_s=300)
        assert not may_take(seen(live=True, live_waiting=True, busy=7), batch=True,
                            policy=default, waited_s=300)  # fmt: skip
        # on a one-slot engine between two live requests, the aged line takes the slot
        assert may_take(seen(slots=1, live=True), batch=True, policy=default, waited_s=30.0)

    def test_a_replica_gives_one_aged_start_per_longest_wait(self) -> None:
        """The lines of a batch arrive together: a line that has waited 40 s does not age
        while the replica's last aged start was 10 s ago, only 30 s after it."""
        default = SharePolicy(batch_max_wait_s=30.0)
        assert not may_take(seen(live=True, busy=1, aged_ago_s=10.0), batch=True,
                            policy=default, waited_s=40.0)  # fmt: skip
        assert may_take(seen(live=True, busy=1, aged_ago_s=30.0), batch=True, policy=default,
                        waited_s=40.0)  # fmt: skip

    def test_an_aged_line_never_takes_the_last_free_slot(self) -> None:
        default = SharePolicy(batch_max_wait_s=30.0)
        assert not may_take(seen(live=True, busy=7), batch=True, policy=default, waited_s=300)
        assert may_take(seen(live=True, busy=6), batch=True, policy=default, waited_s=300)

    def test_ageing_turned_off_keeps_batch_lines_from_live_traffic(self) -> None:
        never = SharePolicy(batch_share=0.0, batch_max_wait_s=0.0)
        assert not may_take(seen(live=True, busy=1), batch=True, policy=never, waited_s=1e9)
        assert not may_take(seen(slots=1, live=True), batch=True, policy=never, waited_s=1e9)
        assert may_take(seen(busy=7), batch=True, policy=never)  # no live traffic: any slot


class TestTheBook:
    def test_a_neighbour_and_live_traffic_are_seen_lately_then_forgotten(self) -> None:
        now = [0.0]
        shares = SlotShares(POLICY, clock=lambda: now[0])
        shares.take("r", "y", batch=False)
        assert shares.seen("r", 8, 1, "x", set()).neighbours  # in flight
        shares.give_back("r", "y", batch=False)
        now[0] = 0.5
        view = shares.seen("r", 8, 0, "x", set())
        assert view.neighbours and view.live
        assert shares.next_change_in() == pytest.approx(0.5)  # live traffic's 1 s
        now[0] = 5.0
        view = shares.seen("r", 8, 0, "x", set())
        assert view.neighbours and not view.live
        now[0] = 10.5
        assert not shares.seen("r", 8, 0, "x", set()).neighbours
        assert shares.next_change_in() is None
        assert not shares.seen("r", 8, 0, "y", set()).neighbours  # itself is no neighbour

    def test_an_organisation_holding_fewer_slots_than_another_reads_its_prompt_first(
        self,
    ) -> None:
        shares = SlotShares(POLICY)
        assert not shares.outnumbered("r", "y")  # nobody there
        for _ in range(3):
            shares.take("r", "x", batch=False)
        assert shares.outnumbered("r", "y") and not shares.outnumbered("r", "x")
        shares.take("r", "y", batch=False)
        assert shares.outnumbered("r", "y")  # 1 against 3
        for _ in range(2):
            shares.take("r", "y", batch=False)
        assert not shares.outnumbered("r", "y") and not shares.outnumbered("r", "x")  # 3, 3
        assert not shares.outnumbered("other", "y")  # per replica


def route(slots: int, gpus: int = 0) -> ReplicaRoute:
    return ReplicaRoute(
        replica_id="rep", deployment_id="d", deployment_org_id=None, model_id="m",
        model_name="m", url="http://x", node_id=None, datacenter_id="dc", country="FR",
        operator_country="FR", certifications=frozenset(), runtime="stand-in",
        engine_slots=slots, gpus=gpus,
    )  # fmt: skip


@dataclass
class Replica:
    """One replica behind a fair queue; requests hold their slot until `finish`."""

    slots: int
    gpus: int = 0
    policy: SharePolicy = POLICY
    now: list[float] = field(default_factory=lambda: [0.0])
    granted: list[str] = field(default_factory=list)  # organisations, in the order served
    held: dict[str, list[contextlib.ExitStack]] = field(default_factory=dict)
    tasks: list[asyncio.Task[object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.table = RouteTable()
        self.table.shares = SlotShares(self.policy, clock=lambda: self.now[0])
        self.queue = FairQueue(self.table, per_org=64, total=1024, wait_s=60)
        self.route = route(self.slots, self.gpus)

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for stacks in self.held.values():
            for stack in stacks:
                stack.close()

    def ask(self, org: str, *, batch: bool = False) -> asyncio.Task[object]:
        def claim(chosen: ReplicaRoute) -> None:
            stack = contextlib.ExitStack()
            stack.enter_context(self.table.track(chosen, "", org, batch=batch))
            self.held.setdefault(org, []).append(stack)
            self.granted.append(f"{org}{'(batch)' if batch else ''}")

        task = asyncio.ensure_future(
            self.queue.acquire(org, [self.route], set(), claim, batch=batch)
        )
        self.tasks.append(task)
        return task

    def finish(self, org: str) -> None:
        self.held[org].pop(0).close()  # frees the slot: the queue hands it out

    async def settle(self) -> None:
        for _ in range(5):
            await asyncio.sleep(0)


@pytest.fixture
async def replicas() -> AsyncIterator[Callable[..., Replica]]:
    made: list[Replica] = []

    def make(slots: int, **options: Any) -> Replica:
        made.append(Replica(slots, **options))
        return made[-1]

    yield make
    for replica in made:
        replica.close()
    await asyncio.sleep(0)


class TestTheQueue:
    async def test_a_tenant_alone_fills_every_slot(
        self, replicas: Callable[[int], Replica]
    ) -> None:
        replica = replicas(8)
        burst = [replica.ask("x") for _ in range(10)]
        await replica.settle()
        assert replica.granted == ["x"] * 8 and replica.queue.waiting == 2
        for _ in range(10):
            replica.finish("x")
            await replica.settle()
        assert all(task.done() for task in burst)

    async def test_a_waiting_tenant_is_served_before_the_bursts_extra_requests(
        self, replicas: Callable[[int], Replica]
    ) -> None:
        replica = replicas(8)
        [replica.ask("x") for _ in range(14)]  # 8 in slots, 6 waiting
        await replica.settle()
        replica.now[0] = 20.0  # nobody else has used the replica lately
        [replica.ask("y") for _ in range(3)]
        await replica.settle()
        assert replica.granted == ["x"] * 8
        for _ in range(4):
            replica.finish("x")
            await replica.settle()
        # y holds fewer slots: each freed slot is y's while it waits, then x's again
        assert replica.granted[8:] == ["y", "y", "y", "x"]

    async def test_while_others_wait_no_tenant_takes_more_than_its_share(
        self, replicas: Callable[[int], Replica]
    ) -> None:
        replica = replicas(6)
        [replica.ask("x") for _ in range(12)]
        await replica.settle()
        replica.now[0] = 20.0
        [replica.ask("y") for _ in range(6)]
        [replica.ask("z") for _ in range(6)]
        await replica.settle()
        for _ in range(6):  # x's six requests end one by one
            replica.finish("x")
            await replica.settle()
        served = replica.granted[6:]
        assert served[:4] == ["y", "z", "y", "z"], served  # x's waiting requests wait
        assert served[4:] == ["x", "x"]  # x holds fewer than its share (2 of 6) again
        assert replica.table.shares.holding() == {("rep", o): 2 for o in "xyz"}

    async def test_a_neighbour_seen_lately_finds_a_slot_at_once(
        self, replicas: Callable[[int], Replica]
    ) -> None:
        replica = replicas(8)
        replica.ask("y")
        await replica.settle()
        replica.finish("y")  # y was here a moment ago
        [replica.ask("x") for _ in range(12)]
        await replica.settle()
        assert replica.granted.count("x") == 7  # one in eight left for y
        replica.ask("y")
        await replica.settle()
        assert replica.granted[-1] == "y"
        replica.finish("y")
        replica.now[0] = 11.0  # y's 'lately' has run out
        replica.queue.dispatch()
        await replica.settle()
        assert replica.granted.count("x") == 8

    async def test_batch_lines_wait_for_live_requests_and_leave_them_a_slot(
        self, replicas: Callable[[int], Replica]
    ) -> None:
        replica = replicas(4)
        lines = [replica.ask("b", batch=True) for _ in range(6)]
        await replica.settle()
        assert replica.granted == ["b(batch)"] * 4  # no live traffic: every slot
        live = [replica.ask("x") for _ in range(2)]
        await replica.settle()
        replica.finish("b")
        await replica.settle()
        assert replica.granted[4:] == ["x"]  # live before the waiting lines
        replica.finish("b")
        await replica.settle()
        assert replica.granted[5:] == ["x"]
        assert replica.granted[6:] == []  # every slot busy
        replica.finish("x")
        replica.finish("x")
        await replica.settle()
        # live traffic ended a moment ago: lines take at most 3 of the 4 slots
        assert replica.granted[6:] == ["b(batch)"]
        replica.now[0] = 2.0  # live traffic ended more than 1 s ago
        replica.queue.dispatch()
        await replica.settle()
        assert replica.granted[7:] == []  # x, a neighbour seen lately, keeps one in eight
        replica.now[0] = 11.0
        replica.queue.dispatch()
        await replica.settle()
        assert replica.granted[7:] == ["b(batch)"]  # every slot again
        assert all(task.done() for task in live + lines)

    async def test_lines_stay_bounded(self, replicas: Callable[[int], Replica]) -> None:
        replica = replicas(1)
        replica.queue = FairQueue(replica.table, per_org=2, total=1024, wait_s=60)
        [replica.ask("x") for _ in range(3)]
        await replica.settle()
        with pytest.raises(RateLimitedError):
            await replica.ask("x")


DEFAULTS = SharePolicy(neighbour_s=10.0, live_s=1.0, batch_max_wait_s=30.0)  # share by replica


class TestBatchBesideLiveByDefault:
    async def test_on_a_cpu_replica_no_batch_line_starts_beside_a_live_request(
        self, replicas: Callable[..., Replica]
    ) -> None:
        cpu = replicas(8, policy=DEFAULTS)
        cpu.ask("x")
        lines = [cpu.ask("b", batch=True) for _ in range(3)]
        await cpu.settle()
        assert cpu.granted == ["x"]  # seven slots free, none for the batch
        cpu.ask("x")  # the next live request is decoded beside no line
        await cpu.settle()
        assert cpu.granted == ["x", "x"]
        cpu.finish("x")
        cpu.finish("x")
        await cpu.settle()
        assert cpu.granted == ["x", "x"]  # live traffic ended a moment ago
        assert cpu.queue.next_change_in() == pytest.approx(1.0)
        cpu.now[0] = 1.5
        cpu.queue.dispatch()
        await cpu.settle()
        assert cpu.granted[2:] == ["b(batch)"] * 3  # then the batch has the replica
        assert all(line.done() for line in lines)

    async def test_on_a_gpu_replica_batch_lines_keep_a_quarter_beside_live_traffic(
        self, replicas: Callable[..., Replica]
    ) -> None:
        gpu = replicas(8, gpus=1, policy=DEFAULTS)
        gpu.ask("x")
        [gpu.ask("b", batch=True) for _ in range(3)]
        await gpu.settle()
        assert gpu.granted == ["x", "b(batch)", "b(batch)"]  # 2 of 8

    async def test_a_batch_line_that_waited_long_gets_a_slot_while_live_requests_follow(
        self, replicas: Callable[..., Replica]
    ) -> None:
        cpu = replicas(8, policy=DEFAULTS)
        cpu.ask("x")
        [cpu.ask("b", batch=True) for _ in range(2)]
        await cpu.settle()
        assert cpu.queue.next_change_in() == pytest.approx(30.0)  # the queue looks again then
        for second in range(1, 30):  # a live request every second, one beside the other
            cpu.now[0] = float(second)
            cpu.ask("x")
            cpu.finish("x")
            await cpu.settle()
        assert "b(batch)" not in cpu.granted
        cpu.now[0] = 30.0
        cpu.queue.dispatch()
        await cpu.settle()
        assert cpu.granted.count("b(batch)") == 1  # one aged line at a time on the replica
        cpu.ask("x")
        await cpu.settle()
        assert cpu.granted[-1] == "x"  # live requests still find a slot at once

    async def test_a_batch_takes_a_slot_beside_live_traffic_once_per_longest_wait(
        self, replicas: Callable[..., Replica]
    ) -> None:
        """Live traffic always in flight on eight slots without GPUs, and a batch's 16 lines
        that arrived together, each lasting 10 s: one line starts beside it every 30 s, not
        one as soon as the last ends; the queue looks again when the next may."""
        cpu = replicas(8, policy=DEFAULTS)
        cpu.ask("x")  # never ends
        [cpu.ask("b", batch=True) for _ in range(16)]
        await cpu.settle()
        started: list[float] = []
        wake = cpu.queue.next_change_in()
        for second in range(1, 121):
            cpu.now[0] = float(second)
            if started and second == started[-1] + 10:
                cpu.finish("b")  # the slot frees: the queue looks again
            if wake is not None and second >= wake:  # the queue's timer
                cpu.queue.dispatch()
            await cpu.settle()
            started += [float(second)] * (cpu.granted.count("b(batch)") - len(started))
            delay = cpu.queue.next_change_in()
            wake = None if delay is None else second + delay
        assert started == [30.0, 60.0, 90.0, 120.0]
