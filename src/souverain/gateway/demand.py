"""What this server process asks of each deployment, told to the controller; and the wait
for a deployment scaled to zero to wake up.

Every server process knows its own outstanding requests per replica (`RouteTable.track`)
and its requests waiting in the fair queue, and which of its outstanding requests are on
replicas out of its routes (draining ones: the controller stops such a replica once no
server has anything left on it). The controller, which scales deployments,
runs elsewhere and may face several server processes, so each one rewrites its own rows
of `deployment_demand` (in flight, waiting, per deployment) every `interval_s` while it
has any, and at least every `HEARTBEAT_S` so that they stay fresh; the controller sums the
fresh rows (`jobs/deployments/autoscaling.py`). A row left by a stopped server goes stale
and counts for nothing.

A request for a model whose only deployments the caller may use are scaled to zero
(minimum 0) does not get "no ready replica": it is counted as waiting for those
deployments (published at once, not at the next tick), and waits, bounded by
`wake_timeout_s`, until a replica is ready, then goes on through admission and the fair
queue like any other. A deployment that cannot start (failed, unschedulable) ends the wait
with a 503 naming why; so does the timeout.

A request for a fine-tuned model served by shared replicas of its base waits the same way
while its adapter is being loaded (its job just succeeded, it was unloaded while idle, or a
replica of the base with the adapter replaces one without it): until a route for the
adapter is ready, bounded by the same timeout. An adapter the node refused ends the wait
with a 503 and the refusal's category (the shared deployment's own status, written by the
controller: it names this adapter's fault only, never another organisation's model or the
node's paths). Such a model's requests are counted for its shared deployment as well as
for the base's deployment whose replica serves them, so that the controller knows its
adapter is in use (jobs/deployments/idle_adapters.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Iterator, Set
from typing import NamedTuple

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.catalog.routes import ModelInfo, ReplicaRoute, Wakeable
from souverain.core.errors import ServiceUnavailableError
from souverain.core.principal import Principal
from souverain.db.demand import DeploymentDemandRow
from souverain.db.tables import utcnow
from souverain.gateway.queueing import FairQueue
from souverain.gateway.routing import RouteTable

log = logging.getLogger(__name__)

HEARTBEAT_S = 10.0  # rows are renewed at least this often (the controller's horizon is 30 s)
NOT_STARTING = frozenset({"failed", "unschedulable"})


class Load(NamedTuple):
    """One deployment's requests on this server."""

    in_flight: int  # an engine answers them
    waiting: int  # in the fair queue, or for a deployment at zero to wake
    draining: int = 0  # of `in_flight`, on replicas no longer routed to (draining)


Demand = dict[str, Load]  # by deployment


class DemandBoard:
    def __init__(self, table: RouteTable, queue: FairQueue, server_id: str) -> None:
        self._table = table
        self._queue = queue
        self._server_id = server_id
        self._waking: Counter[str] = Counter()  # deployment -> requests waiting for a replica
        self._poke = asyncio.Event()

    def snapshot(self) -> Demand:
        """This process's outstanding requests per deployment, now."""
        in_flight: Counter[str] = Counter()
        draining: Counter[str] = Counter()
        routed = {r.replica_id for routes in self._table.routes.values() for r in routes}
        for replica, deployment in self._table.deployment_of.items():
            count = max(0, self._table.outstanding.get(replica, 0))
            in_flight[deployment] += count
            if replica not in routed:
                draining[deployment] += count
        in_flight.update(self._table.adapter_in_flight)  # a shared model's, for its own
        waiting = self._queue.waiting_by_deployment() + self._waking
        return {
            deployment: Load(in_flight[deployment], waiting[deployment], draining[deployment])
            for deployment in set(in_flight) | set(waiting)
            if in_flight[deployment] or waiting[deployment]
        }

    @contextlib.contextmanager
    def waking(self, deployment_ids: list[str]) -> Iterator[None]:
        """Count a request as waiting for these deployments while it waits for a replica."""
        self._waking.update(deployment_ids)
        self._poke.set()  # the controller should know now, not at the next tick
        try:
            yield
        finally:
            self._waking.subtract(deployment_ids)
            self._waking = +self._waking  # drop zeros
            self._poke.set()

    async def publish(self, sessions: async_sessionmaker[AsyncSession], demand: Demand) -> None:
        """Replace this process's rows with `demand`, in one transaction."""
        now, known = utcnow(), self._known()
        async with sessions.begin() as session:
            await session.execute(
                delete(DeploymentDemandRow).where(DeploymentDemandRow.server_id == self._server_id)
            )
            session.add_all(
                DeploymentDemandRow(
                    server_id=self._server_id, deployment_id=deployment,
                    in_flight=load.in_flight, waiting=load.waiting, draining=load.draining,
                    updated_at=now,
                )
                for deployment, load in demand.items()
                if deployment in known
            )  # fmt: skip

    def _known(self) -> set[str]:
        """Deployments the table knows (a row for a deleted one would break its foreign key)."""
        known = set(self._table.deployment_of.values())
        known |= {r.deployment_id for routes in self._table.routes.values() for r in routes}
        return known | {d.deployment_id for ds in self._table.wakeable.values() for d in ds}

    async def publish_forever(
        self, sessions: async_sessionmaker[AsyncSession], interval_s: float
    ) -> None:
        last: Demand | None = None
        published_at = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), interval_s)
            self._poke.clear()
            demand = self.snapshot()
            stale = time.monotonic() - published_at > HEARTBEAT_S
            if demand == last and not (demand and stale):
                continue
            try:
                await self.publish(sessions, demand)
                last, published_at = demand, time.monotonic()
            except Exception:
                log.exception("publishing this server's demand failed")


async def wake(
    table: RouteTable,
    board: DemandBoard,
    sessions: async_sessionmaker[AsyncSession],
    *,
    principal: Principal,
    model: ModelInfo,
    deployments: list[Wakeable],
    timeout_s: float,
    exclude: Set[str] = frozenset(),
) -> list[ReplicaRoute]:
    """Wait for a replica the caller's policy allows, of a deployment scaled to zero (not
    one of `exclude`, which refused the connection): its routes; none once every deployment
    that could wake is up and none complies (the caller answers 451); or a 503 with the
    reason."""
    deadline = time.monotonic() + timeout_s
    with board.waking([d.deployment_id for d in deployments]):
        while True:
            await asyncio.sleep(0.1)  # a reload at most 10 times a second, for all waiters
            await table.refresh_if_older_than(sessions, 0.1)
            compliant, excluded = table.compliant_routes(principal, model)
            routes = [r for r in compliant if r.replica_id not in exclude]
            if routes:
                return routes
            woken = table.wakeable_for(principal, model)
            if not exclude and excluded and woken and all(d.status == "ready" for d in woken):
                return []  # all that could wake is up, none where the caller may go: 451
            # Ready with no replica at all: one was just released or lost, and the next
            # is not up yet; the request keeps waiting.
            _check_starting(woken, model.name)
            if time.monotonic() > deadline:
                raise ServiceUnavailableError(
                    f"The model '{model.name}' {_waited_for(woken)} within {timeout_s:.0f}s; "
                    "retry later.",
                    param="model",
                )


def _waited_for(deployments: list[Wakeable]) -> str:
    if deployments and all(d.shared for d in deployments):
        return "is being loaded onto a shared replica of its base and was not ready"
    return "was scaled to zero and no replica became ready"


def _check_starting(deployments: list[Wakeable], model_name: str) -> None:
    """Raise once every deployment that could wake for this request cannot start."""
    if not deployments or any(d.status not in NOT_STARTING for d in deployments):
        return
    reasons = "; ".join(d.status_reason or d.status for d in deployments)
    if all(d.shared for d in deployments):
        raise ServiceUnavailableError(
            f"The model '{model_name}' could not be loaded: {reasons}", param="model"
        )
    raise ServiceUnavailableError(
        f"The model '{model_name}' was scaled to zero and its replica could not start: {reasons}",
        param="model",
    )
