"""The route table: which ready replicas serve which model, and how busy each one is.

Refreshed from the database every `replica_refresh_s`; the hot path reads memory only.
Routing picks the replica with the fewest outstanding requests among those the caller
may use. A replica that refused a connection is avoided by this process at once, for a
few seconds or until the table shows it at a new address, before any reload says so.
Outstanding requests are counted in one place: `track()`, which also names the slot of a
llama-server replica a request goes to (gateway/slots.py) and counts it by organisation
and kind for the fair shares of a replica's slots (gateway/shares.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Mapping, Set

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.catalog.routes import (
    ModelInfo,
    ReplicaRoute,
    Wakeable,
    load_default_projects,
    load_models,
    load_project_limits,
    load_ready_routes,
    load_wakeable,
    replica_states,
)
from souverain.core.policy import UNRESTRICTED, Policy, exclusion, intersect
from souverain.core.principal import Principal
from souverain.db.audit import AuditHeadRow
from souverain.db.tables import ReplicaRow, utcnow
from souverain.energy.carbon import hour_of
from souverain.gateway.shares import SharePolicy, SlotShares
from souverain.gateway.slots import Slot, SlotBook
from souverain.metering.budgets import Budget, all_budgets
from souverain.metering.energy import totals_by_datacenter
from souverain.metering.prices import Price, current_prices
from souverain.sovereignty import policies

log = logging.getLogger(__name__)


class RouteTable:
    def __init__(self, shares: SharePolicy | None = None) -> None:
        self.models: dict[str, ModelInfo] = {}  # by id
        self.by_name: dict[str, list[ModelInfo]] = {}
        self.routes: dict[str, list[ReplicaRoute]] = {}  # by model id
        self.wakeable: dict[str, list[Wakeable]] = {}  # by model id: deployments at minimum 0
        self.outstanding: defaultdict[str, int] = defaultdict(int)
        # replica -> its deployment, for every replica routed to and not yet forgotten: a
        # replica out of the routes (draining, say) is remembered while it has requests; a
        # shared replica's is its base's, whatever model its requests ask for
        # (`ReplicaRoute.serving_deployment_id`): that deployment scales and drains it
        self.deployment_of: dict[str, str] = {}
        # a fine-tuned model's shared deployment -> its requests in flight on shared replicas
        # (they count for the base's deployment too): its adapter is in use, not idle
        self.adapter_in_flight: Counter[str] = Counter()
        self.shares = SlotShares(shares)  # in flight by organisation and kind, per replica
        self.slots = SlotBook()
        self.loaded = False
        self.refreshed_at = 0.0
        self.policies: dict[tuple[str, str | None], Policy] = {}
        self.default_projects: dict[str, str] = {}
        self._effective: dict[tuple[str, str], Policy] = {}
        self.prices: dict[str, Price] = {}  # model id -> price in force
        self.project_limits: dict[str, tuple[int | None, int | None]] = {}
        self.budgets: dict[str, list[Budget]] = {}  # org id -> its budgets
        self.replica_states: dict[str, int] = {}
        self.energy_totals: dict[str, tuple[float, float]] = {}
        self._suspects: dict[str, tuple[str, float]] = {}  # replica -> (url, until)
        self.on_release: Callable[[], None] = lambda: None  # a slot freed (the fair queue)

    def replace(
        self,
        models: list[ModelInfo],
        routes: list[ReplicaRoute],
        policies: dict[tuple[str, str | None], Policy] | None = None,
        default_projects: dict[str, str] | None = None,
    ) -> None:
        self.policies = policies or {}
        self.default_projects = default_projects or {}
        self._effective = {}
        by_model: dict[str, list[ReplicaRoute]] = defaultdict(list)
        for route in routes:
            by_model[route.model_id].append(route)
        by_name: dict[str, list[ModelInfo]] = defaultdict(list)
        for model in models:
            by_name[model.name].append(model)
        self.models = {model.id: model for model in models}
        self.by_name = dict(by_name)
        self.routes = dict(by_model)
        self.deployment_of = {
            replica: deployment
            for replica, deployment in self.deployment_of.items()
            if self.outstanding.get(replica, 0) > 0
        } | {route.replica_id: route.serving_deployment_id for route in routes}
        self.slots.forget({route.replica_id for route in routes})
        self.shares.forget({route.replica_id for route in routes})
        self.loaded = True
        self.refreshed_at = time.monotonic()

    async def refresh(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        async with sessions() as session:
            # Models, then wakeable deployments, then routes: each read sees the commits
            # made before it, so a model read as known has the deployments registered with
            # it (a request for a just-registered model waits for its replica instead of
            # a 503), and a deployment read as ready has its replica in the routes (the
            # other way round, a waiting request could see its deployment ready and no
            # replica, and answer 451 or 503 instead of being served).
            models = await load_models(session)
            wakeable = await load_wakeable(session)
            routes = await load_ready_routes(session)
            in_force = await policies.current_all(session)
            defaults = await load_default_projects(session)
            self.prices = await current_prices(session)
            self.project_limits = await load_project_limits(session)
            self.budgets = await all_budgets(session)
            self.replica_states = await replica_states(session)
            self.energy_totals = await totals_by_datacenter(session)
        by_model: defaultdict[str, list[Wakeable]] = defaultdict(list)
        for deployment in wakeable:
            by_model[deployment.model_id].append(deployment)
        self.wakeable = dict(by_model)

        self.replace(models, routes, in_force, defaults)

    async def refresh_if_older_than(
        self, sessions: async_sessionmaker[AsyncSession], age_s: float
    ) -> None:
        """On a miss, look again now rather than wait for the next periodic refresh."""
        if time.monotonic() - self.refreshed_at > age_s:
            await self.refresh(sessions)

    async def refresh_forever(
        self, sessions: async_sessionmaker[AsyncSession], interval_s: float
    ) -> None:
        """Reload when something routing depends on changed, and at least every 30 s.

        One cheap query tells: every change made through the API is audited (the audit
        chain's head moves), the controller touches `replicas.updated_at` when a replica's
        state changes, and a new hour may bring a new carbon intensity."""
        token: object = None
        while True:
            try:
                current = await change_token(sessions)
                if current != token or time.monotonic() - self.refreshed_at > 30:
                    await self.refresh(sessions)
                    token = current
            except Exception:
                log.exception("refreshing the route table failed")
            await asyncio.sleep(interval_s)

    def visible_model(self, principal: Principal, name: str) -> ModelInfo | None:
        """The model called `name` for this caller: its organisation's own, else the platform's."""
        candidates = self.by_name.get(name, ())
        for model in candidates:
            if model.owner_org_id is not None and model.owner_org_id == principal.org_id:
                return model
        return next((model for model in candidates if model.owner_org_id is None), None)

    def visible_models(self, principal: Principal) -> list[ModelInfo]:
        found = (self.visible_model(principal, name) for name in sorted(self.by_name))
        return [model for model in found if model is not None]

    def usable_routes(self, principal: Principal, model: ModelInfo) -> list[ReplicaRoute]:
        """Ready replicas of the model in deployments the caller may use: the platform's and
        its own organisation's."""
        return [
            route
            for route in self.routes.get(model.id, ())
            if route.deployment_org_id is None or route.deployment_org_id == principal.org_id
        ]

    def wakeable_for(self, principal: Principal, model: ModelInfo) -> list[Wakeable]:
        """Deployments of the model the caller may use that start a replica on demand."""
        return [
            deployment
            for deployment in self.wakeable.get(model.id, ())
            if deployment.org_id is None or deployment.org_id == principal.org_id
        ]

    def ready_replicas(self, name: str) -> int:
        return sum(len(self.routes.get(model.id, ())) for model in self.by_name.get(name, ()))

    def budgets_for(self, org_id: str | None, project_id: str | None) -> list[Budget]:
        """The organisation's budget and the project's, if any (as of the last refresh)."""
        if org_id is None:
            return []
        return [
            b
            for b in self.budgets.get(org_id, ())
            if b.project_id is None or b.project_id == project_id
        ]

    def project_of(self, principal: Principal) -> str | None:
        if principal.project_id is not None or principal.org_id is None:
            return principal.project_id
        return self.default_projects.get(principal.org_id)

    def policy_for(self, principal: Principal) -> Policy:
        """The caller's effective policy: its organisation's ceiling ∩ its project's policy."""
        if principal.org_id is None:
            return UNRESTRICTED  # platform operators are not tenants
        project_id = self.project_of(principal) or ""
        key = (principal.org_id, project_id)
        if key not in self._effective:
            ceiling = self.policies.get((principal.org_id, None), UNRESTRICTED)
            project = self.policies.get((principal.org_id, project_id), UNRESTRICTED)
            self._effective[key] = intersect(ceiling, project)
        return self._effective[key]

    def compliant_routes(
        self, principal: Principal, model: ModelInfo
    ) -> tuple[list[ReplicaRoute], dict[str, str]]:
        """Usable routes that satisfy the caller's policy, and why each other datacenter was excluded."""
        policy = self.policy_for(principal)
        kept: list[ReplicaRoute] = []
        excluded: dict[str, str] = {}
        for route in self.usable_routes(principal, model):
            reason = exclusion(policy, route.site)
            if reason is None:
                kept.append(route)
            else:
                excluded[route.datacenter_id] = reason
        return kept, excluded

    def pick(
        self, routes: list[ReplicaRoute], exclude: Set[str] = frozenset()
    ) -> ReplicaRoute | None:
        """The least busy replica, preferring those not suspected of being down."""
        candidates = [route for route in routes if route.replica_id not in exclude]
        if not candidates:
            return None
        trusted = [route for route in candidates if not self.is_suspect(route)]
        return min(trusted or candidates, key=self._load)

    def _load(self, route: ReplicaRoute) -> tuple[int, int]:
        """Most free slots first, then fewest outstanding requests."""
        outstanding = self.outstanding[route.replica_id]
        return outstanding - route.slots, outstanding

    def pick_free(
        self,
        routes: list[ReplicaRoute],
        exclude: Set[str] = frozenset(),
        org: str = "",
        *,
        batch: bool = False,
        waiting: Mapping[str, Set[str]] | None = None,
        live_waiting: Set[str] = frozenset(),
        since: float | None = None,
    ) -> ReplicaRoute | None:
        """Like `pick`, among replicas with a slot `org` may take now (gateway/shares.py):
        its fair share while other organisations wait (`waiting`: replica -> the
        organisations waiting for it), room left for a neighbour seen lately, and for live
        traffic if this is a batch line (`live_waiting`: the replicas a live request waits
        for; `since`: when the line began waiting, None if it has just arrived)."""
        waiting = waiting or {}
        free = [
            r for r in routes
            if self.shares.may_take(r.replica_id, r.slots, self.outstanding[r.replica_id], org,
                                    batch=batch, waiting=waiting.get(r.replica_id, frozenset()),
                                    gpus=r.gpus, live_waiting=r.replica_id in live_waiting,
                                    since=since)
        ]  # fmt: skip
        return self.pick(free, exclude)

    def suspect(self, route: ReplicaRoute, for_s: float = 5.0) -> None:
        """The replica refused a connection: avoid it until it shows up at a new address."""
        self._suspects[route.replica_id] = (route.url, time.monotonic() + for_s)

    def is_suspect(self, route: ReplicaRoute) -> bool:
        suspected = self._suspects.get(route.replica_id)
        if suspected is None:
            return False
        url, until = suspected
        if url != route.url or time.monotonic() > until:
            del self._suspects[route.replica_id]
            return False
        return True

    @contextlib.contextmanager
    def track(
        self, route: ReplicaRoute, cache_scope: str = "", org: str = "", *, batch: bool = False
    ) -> Iterator[Slot | None]:
        """Count a request of `org` (a batch line if `batch`) against `route` while it runs;
        on a slotted replica, the slot it goes to (one where `cache_scope`'s prefix is
        likely cached)."""
        self.outstanding[route.replica_id] += 1
        adapter = route.deployment_id if route.host_deployment_id else None
        if adapter is not None:
            self.adapter_in_flight[adapter] += 1
        self.shares.take(route.replica_id, org, batch=batch)
        slot = (
            self.slots.take(route.replica_id, route.slots, cache_scope) if route.slotted else None
        )
        try:
            yield slot
        finally:
            if slot is not None:
                self.slots.give_back(route.replica_id, slot)
            self.shares.give_back(route.replica_id, org, batch=batch)
            self.outstanding[route.replica_id] -= 1
            if adapter is not None:
                self.adapter_in_flight[adapter] -= 1
                self.adapter_in_flight = +self.adapter_in_flight  # drop zeros
            self.on_release()


async def change_token(sessions: async_sessionmaker[AsyncSession]) -> tuple[object, ...]:
    async with sessions() as session:
        row = (
            await session.execute(
                select(
                    select(AuditHeadRow.last_seq).where(AuditHeadRow.id == 1).scalar_subquery(),
                    func.max(ReplicaRow.updated_at),
                    func.count(ReplicaRow.id),
                )
            )
        ).one()
    return (*row, hour_of(utcnow()))
