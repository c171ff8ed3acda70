"""What a server process tells the autoscaler: per deployment, the requests its engines are
answering and those waiting, in the fair queue or for a deployment at zero to wake, and
those still on a replica taken out of its routes (draining)."""

from __future__ import annotations

import asyncio

from souverain.catalog.routes import ModelInfo, ReplicaRoute
from souverain.gateway.demand import DemandBoard
from souverain.gateway.queueing import FairQueue
from souverain.gateway.routing import RouteTable

COMMON = {"deployment_org_id": None, "model_id": "m", "model_name": "m", "url": "http://x",
          "node_id": None, "datacenter_id": "dc", "country": "FR", "operator_country": "FR",
          "certifications": frozenset(), "engine": "llamacpp"}  # fmt: skip
MODEL = ModelInfo(id="m", name="m", owner_org_id=None, capabilities=("chat",),
                  context_length=4096, created=0)  # fmt: skip


def table_of(*routes: ReplicaRoute) -> RouteTable:
    table = RouteTable()
    table.replace([MODEL], list(routes))
    return table


class TestSnapshot:
    async def test_in_flight_and_waiting_per_deployment(self) -> None:
        one = ReplicaRoute(replica_id="r1", deployment_id="d1", **COMMON)  # 1 slot
        table = table_of(one)
        queue = FairQueue(table)
        board = DemandBoard(table, queue, "server-a")
        assert board.snapshot() == {}
        claimed = await queue.acquire("org-a", [one], set(), lambda r: None)
        assert claimed is one
        with table.track(one, "", "org-a"):
            waiter = asyncio.ensure_future(queue.acquire("org-b", [one], set(), lambda r: None))
            await asyncio.sleep(0)  # it queues: the only slot is taken
            assert board.snapshot() == {"d1": (1, 1, 0)}
            waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert board.snapshot() == {}

    async def test_a_shared_models_requests_count_for_its_own_deployment_too(self) -> None:
        """The base's deployment scales with them; the model's shared deployment learns
        that its adapter is in use (it would be unloaded as idle otherwise)."""
        route = ReplicaRoute(replica_id="r1", deployment_id="ft", host_deployment_id="base",
                             lora_id=0, **COMMON)  # fmt: skip
        table = table_of(route)
        queue = FairQueue(table)
        board = DemandBoard(table, queue, "server-a")
        assert await queue.acquire("org-a", [route], set(), lambda r: None) is route
        with table.track(route, "", "org-a"):
            waiter = asyncio.ensure_future(queue.acquire("org-b", [route], set(), lambda r: None))
            await asyncio.sleep(0)  # it queues: the only slot is taken
            assert board.snapshot() == {"base": (1, 1, 0), "ft": (1, 1, 0)}
            waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        assert board.snapshot() == {}

    async def test_a_request_waiting_for_a_deployment_at_zero_counts_as_waiting(self) -> None:
        table = table_of()
        board = DemandBoard(table, FairQueue(table), "server-a")
        with board.waking(["d0"]), board.waking(["d0"]):
            assert board.snapshot() == {"d0": (0, 2, 0)}
        assert board.snapshot() == {}

    async def test_requests_on_a_replica_out_of_the_routes_count_as_draining(self) -> None:
        """The controller stops a draining replica only once no server reports anything
        left on it: a request routed before the replica drained is still counted."""
        one = ReplicaRoute(replica_id="r1", deployment_id="d1", **COMMON)
        two = ReplicaRoute(replica_id="r2", deployment_id="d1", **COMMON)
        table = table_of(one, two)
        board = DemandBoard(table, FairQueue(table), "server-a")
        with table.track(one, "", "org-a"), table.track(two, "", "org-a"):
            table.replace([MODEL], [two])  # r1 drains: out of the routes
            assert board.snapshot() == {"d1": (2, 0, 1)}
        assert board.snapshot() == {}
        table.replace([MODEL], [two])
        assert "r1" not in table.deployment_of  # forgotten once nothing is left on it
