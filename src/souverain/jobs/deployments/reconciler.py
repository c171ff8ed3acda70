"""The deployment reconciler: keeps each deployment's replicas placed and counted.

load    claim the deployment row with a lease token; read it, its model, replicas (with
        the state the replica observer wrote) and the placement policy (its own
        constraints ∩ its organisation's ceiling)
process decide the wanted count from the load the gateways report (autoscaled deployments:
        `autoscaling.py`, `scheduler/autoscale.py`); drop lost replicas; stop at once
        replicas whose datacenter no longer complies (a changed policy, constraint or
        datacenter) or whose node left the cluster; drain extras, and stop them once
        drained (`draining.py`); place missing ones (scheduler, then a detached Ray
        actor with a label_selector for the chosen datacenter)
apply   one transaction that starts with the lease's fence (`UPDATE deployments … WHERE
        id AND lock_token`): if another controller took the row, nothing of this round is
        written

This is the shape of every kind of long work (`jobs/cycle.py`, `jobs/lease.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from cryptography.exceptions import InvalidTag
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.errors import GoneError
from souverain.core.fleet import (
    EngineCredential,
    HostedAdapter,
    ObjectGrant,
    ReplicaSpec,
    actor_name_for,
    carries_reading,
)
from souverain.core.ids import new_id, replica_secret
from souverain.core.status import ReplicaState
from souverain.db.tables import (
    DeploymentRow,
    ModelAdapterRow,
    ModelArtifactRow,
    ModelRow,
    ReplicaRow,
    utcnow,
)
from souverain.evidence import audit
from souverain.files import service as files
from souverain.jobs.cycle import run_cycle
from souverain.jobs.deployments import (
    autoscaling,
    idle_adapters,
    live_adapters,
    sharing,
    statuses,
)
from souverain.jobs.deployments import draining as drain
from souverain.jobs.deployments.rounds import Event, Loaded, Outcome
from souverain.jobs.deployments.service import placement_policy
from souverain.jobs.energy import EnergyAccountant
from souverain.jobs.facade import ClusterFacade
from souverain.jobs.lease import Lease
from souverain.scheduler.placer import Placer
from souverain.scheduler.types import Placement, PlacementRequest
from souverain.storage.crypto import unwrap

log = logging.getLogger(__name__)


@dataclass
class EngineDefaults:
    threads: int
    bind_host: str | None
    watts_per_core: float = 10.0
    model_roots: tuple[str, ...] = ()


class CredentialIssuer(Protocol):
    """Issues a replica's TLS certificate (the installation's authority)."""

    async def issue_replica(self, replica_id: str) -> EngineCredential: ...


class DeploymentReconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cluster: ClusterFacade,
        *,
        master_key: bytes,
        engine: EngineDefaults,
        energy: EnergyAccountant,
        issuer: CredentialIssuer,
        lease_s: float = 60.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.energy = energy
        self._clock = clock
        self._issuer = issuer

        self._sessions = sessions
        self._cluster = cluster
        self._master_key = master_key
        self._engine = engine
        self._lease = Lease(
            DeploymentRow.id, DeploymentRow.lock_token, DeploymentRow.lock_expires_at, lease_s
        )
        self.recently_started: dict[str, float] = {}
        self.start_only: set[str] = set()  # replicas whose engine loads adapters at start only
        self.drain_grace_s = drain.DRAIN_GRACE_S
        self.drain_timeout_s = drain.DRAIN_TIMEOUT_S

    async def run_once(self, placer: Placer) -> None:
        async with self._sessions() as session:
            ids = list((await session.execute(select(DeploymentRow.id))).scalars())
        for deployment_id in ids:
            try:
                await self.reconcile(deployment_id, placer)
            except Exception:  # one broken deployment must not stop the others
                log.exception("reconciling deployment %s failed", deployment_id)

    async def reconcile(self, deployment_id: str, placer: Placer) -> None:
        await run_cycle(
            self._sessions,
            self._lease,
            deployment_id,
            load=lambda session: self._load(session, deployment_id),
            process=lambda loaded: self._process(loaded, placer),
            apply=self._apply,
        )

    async def _load(self, session: AsyncSession, deployment_id: str) -> Loaded | None:
        deployment = await session.get(DeploymentRow, deployment_id)
        if deployment is None:
            return None
        model = await session.get(ModelRow, deployment.model_id)
        assert model is not None  # the foreign key is RESTRICT
        artifact = (
            (
                await session.execute(
                    select(ModelArtifactRow).where(ModelArtifactRow.model_id == model.id)
                )
            )
            .scalars()
            .first()
        )
        replicas = list(
            (
                await session.execute(
                    select(ReplicaRow).where(ReplicaRow.deployment_id == deployment_id)
                )
            ).scalars()
        )
        policy = await placement_policy(session, deployment=deployment)
        adapter, adapter_error = await self._adapter(session, model)
        now = self._clock()
        busy = await autoscaling.busy_of(session, deployment_id=deployment_id, now=now)
        loaded = Loaded(
            deployment, model, artifact, replicas, policy, adapter, adapter_error, busy, now
        )
        if deployment.sharing == sharing.SHARED:
            loaded.hosts = await sharing.host_replicas(session, model)
            loaded.org_models = await sharing.org_models(session, deployment.org_id)
            if idle_adapters.unloads_when_idle(deployment):
                loaded.last_asked = await idle_adapters.last_asked(session, deployment.id)
        elif sharing.can_host(deployment, model):
            loaded.hosted = [
                await self._hosted(session, shared, model)
                for shared, model in await sharing.shared_of(session, deployment)
            ]
            loaded.erased = await sharing.erased(session, replicas)
        return loaded

    async def _hosted(
        self, session: AsyncSession, shared: DeploymentRow, model: ModelRow
    ) -> sharing.Hosted:
        policy = await placement_policy(session, deployment=shared)
        grant, error = await self._adapter(session, model)
        return sharing.Hosted(model.id, shared.id, shared.org_id, policy, grant, error)

    async def _adapter(
        self, session: AsyncSession, model: ModelRow
    ) -> tuple[ObjectGrant | None, str]:
        row = await session.get(ModelAdapterRow, model.id)
        if row is None and model.base_model_id is not None:
            return None, "it was erased with its organisation's keys"
        if row is None:
            return None, ""
        try:
            kek = await files.organisation_kek(
                session, master_key=self._master_key, org_id=row.org_id, create=False
            )
        except GoneError as error:
            return None, str(error)
        try:
            data_key = unwrap(kek, bytes.fromhex(row.wrapped_key), row.object_id.split("/", 1)[0])
        except InvalidTag:  # wrapped under a key since erased and made again
            return None, "its key does not open it: it was erased with its organisation's keys"
        return ObjectGrant(row.store_uri, row.object_key, row.object_id, data_key, row.sha256), ""

    async def _process(self, loaded: Loaded, placer: Placer) -> Outcome:
        deployment, outcome = loaded.deployment, Outcome(org_id=loaded.deployment.org_id)
        live = await self._observe(loaded, placer, outcome)
        shared = deployment.sharing == sharing.SHARED and not deployment.deleted
        # a shared deployment is served by its base's replicas: none of its own
        desired, routed = (
            (0, None) if deployment.deleted or shared
            else autoscaling.scale(loaded, outcome, self.drain_grace_s)
        )  # fmt: skip
        stale = await self._replace_stale(loaded, placer, live, desired, outcome)
        live, draining, held = await self._release(loaded, live, desired, routed, outcome)
        unschedulable = ""
        while len(live) + len(held) < desired and not unschedulable:
            placed = await self._place_one(loaded, placer, outcome)
            if isinstance(placed, str):
                unschedulable = placed
            else:
                live.append(placed)
        found_status = statuses.status_of(deployment, live + held + stale, desired, unschedulable)
        outcome.status, outcome.reason, outcome.remove_deployment = found_status
        if shared:  # loaded or unloaded while idle, then where its adapter is
            outcome.status, outcome.reason = idle_adapters.shared_round(loaded, outcome)
        elif draining and outcome.status == "stopped":
            outcome.status = "draining"
            outcome.reason = f"scaled to zero; {draining} replica(s) finishing their requests"
        elif draining and outcome.status == "ready":
            outcome.reason += f"; {draining} draining"
        if statuses.worth_auditing(deployment.status, outcome.status):
            outcome.events.append(
                Event(
                    "deployment.status",
                    "deployment",
                    deployment.id,
                    {"from": deployment.status, "to": outcome.status, "reason": outcome.reason},
                )
            )
        return outcome

    async def _release(
        self, loaded: Loaded, live: list[ReplicaRow], desired: int, routed: int | None,
        outcome: Outcome,
    ) -> tuple[list[ReplicaRow], int, list[ReplicaRow]]:  # fmt: skip
        """Drain the replicas no longer needed (ahead of a near scale-down: `routed`), stop
        the drained ones (a deleted deployment's at once): the replicas that serve on, how
        many still drain, and those draining ahead that still count in `desired`."""
        held: list[ReplicaRow] = []
        if loaded.deployment.deleted:
            stops = [(replica, "deployment deleted") for replica in live]
            kept, draining = [], 0
        else:
            now = loaded.now or self._clock()
            plan = drain.plan(live, desired, in_flight=loaded.busy[2], now=now, routed=routed,
                              grace_s=self.drain_grace_s, timeout_s=self.drain_timeout_s)  # fmt: skip
            stops, kept, draining, held = plan.stop, plan.serving, plan.draining, plan.held
            why = "scaled down" if not held else "to be scaled down: the idle period ends"
            for replica in plan.drain:
                outcome.drains.append(replica.id)
                outcome.replica_event("replica.draining", replica.id, reason=why)
            for replica in plan.undrain:
                outcome.undrains.append(replica.id)
                outcome.replica_event("replica.undrained", replica.id, reason="needed again")
        for replica, reason in stops:
            await asyncio.to_thread(self._cluster.stop_replica, replica.actor_name)
            outcome.deletes.append(replica.id)
            outcome.replica_event("replica.stop", replica.id, reason=reason)
            self.energy.retire(replica.id)
        return kept, draining, held

    async def _replace_stale(
        self, loaded: Loaded, placer: Placer, live: list[ReplicaRow], desired: int,
        outcome: Outcome,
    ) -> list[ReplicaRow]:  # fmt: skip
        """Give the replicas whose adapters are not the set wanted where they run (sharing.py)
        that set while they serve, where their engine can (live_adapters.py; one still
        starting there takes it once ready); take the others out of `live`, stop those
        the new ones already cover, return the rest, which serve until then. One that
        must drop an adapter at once and cannot stops now."""
        if not sharing.can_host(loaded.deployment, loaded.model):
            return []
        sites = placer.snapshot.datacenters
        wanted = {
            r.id: sharing.wanted_at(sites[r.datacenter_id].site, loaded.hosted, sharing.held(r))
            for r in live if r.datacenter_id in sites
        }  # fmt: skip
        changed = await live_adapters.change_live(
            self._cluster, live, wanted, loaded.hosted, self.start_only
        )
        for done in changed:
            outcome.adapters[done.replica_id] = done.entries
            outcome.replica_event("replica.adapters", done.replica_id, loaded=done.loaded,
                                  unloaded=done.unloaded, kept=done.kept)  # fmt: skip
        stale = [r for r in live if r.id in wanted and sharing.held(r) != wanted[r.id]]
        urgent = {}
        for replica in stale:
            live.remove(replica)
            site = sites[replica.datacenter_id].site
            if why := sharing.must_unload(replica, site, loaded.hosted, loaded.erased):
                urgent[replica.id] = why
        live_ids = {done.replica_id for done in changed}
        for replica in [r for r in stale if r.id not in urgent]:
            # kept an adapter in use: asked again next round; or still starting on an
            # engine that takes the wanted set once ready (live_adapters.py)
            if replica.id in live_ids or live_adapters.takes_when_ready(replica, self.start_only):
                stale.remove(replica)
                live.append(replica)
        for replica in sharing.to_stop(stale, live, desired, urgent=set(urgent)):
            await asyncio.to_thread(self._cluster.stop_replica, replica.actor_name)
            outcome.deletes.append(replica.id)
            reason = urgent.get(replica.id, "adapters changed")
            outcome.replica_event("replica.replace", replica.id, reason=reason)
            self.energy.retire(replica.id)
            stale.remove(replica)
        return stale

    async def _observe(self, loaded: Loaded, placer: Placer, outcome: Outcome) -> list[ReplicaRow]:
        live = []
        for replica in loaded.replicas:
            reason = statuses.leave_reason(replica, loaded.policy, placer)
            if reason == statuses.lost_node_reason(replica) and await self._restarted_elsewhere(
                replica
            ):
                reason = None  # the observer writes its new node; its next round checks it
            if reason is not None:
                log.warning(
                    "draining replica %s in %s: %s", replica.id, replica.datacenter_id, reason
                )
                await asyncio.to_thread(self._cluster.stop_replica, replica.actor_name)
                outcome.deletes.append(replica.id)
                outcome.replica_event(
                    "replica.drain", replica.id, datacenter=replica.datacenter_id, reason=reason
                )
                self.energy.retire(replica.id)
            elif replica.state == ReplicaState.LOST:
                outcome.deletes.append(replica.id)
                outcome.replica_event("replica.lost", replica.id, datacenter=replica.datacenter_id)
                self.energy.retire(replica.id)
            else:
                live.append(replica)
        return live

    async def _restarted_elsewhere(self, replica: ReplicaRow) -> bool:
        """Read on a node that left the cluster, but its actor answers from another node:
        Ray restarted it there (inside its datacenter: the label selector) after this round
        read the row, and it may already serve. Stopping it would take a serving replica
        away for a new one's whole start: the likely cause of a rejoined host that answered
        once, then 503 for a start's length, in a loaded test run."""
        status = await asyncio.to_thread(self._cluster.replica_status, replica.actor_name, 2.0)
        return (
            status is not None
            and carries_reading(status)  # an answer of the actor's own, not a made-up one
            and status.node_id not in (None, replica.node_id)
        )

    async def _place_one(
        self, loaded: Loaded, placer: Placer, outcome: Outcome
    ) -> ReplicaRow | str:
        deployment, model = loaded.deployment, loaded.model
        if loaded.artifact is None:
            return f"model {model.name} has no artifact"
        if loaded.adapter_error:
            return f"model {model.name}'s adapter cannot be read: {loaded.adapter_error}"
        request = PlacementRequest(
            engine=deployment.engine,
            cpus=deployment.cpus,
            gpus=deployment.gpus,
            policy=loaded.policy,
            strategy="binpack" if deployment.strategy == "binpack" else "spread",
            model_name=model.name,
        )
        decision = placer.place(request)
        if not isinstance(decision, Placement):
            return decision.summary
        replica_id = new_id("rep")
        site = placer.snapshot.datacenters[decision.datacenter_id].site
        adapters = sharing.wanted_at(site, loaded.hosted)
        spec = await self._spec(loaded, replica_id, decision, adapters, placer)
        await asyncio.to_thread(self._cluster.start_replica, spec)
        self.recently_started[spec.actor_name] = asyncio.get_running_loop().time()
        placer.reserve(decision.node_id, cpus=deployment.cpus, gpus=deployment.gpus)
        replica = ReplicaRow(
            id=replica_id,
            deployment_id=deployment.id,
            actor_name=actor_name_for(replica_id),
            datacenter_id=decision.datacenter_id,
            node_id=None,
            url=None,
            state="starting",
            reason="",
            engine_restarts=0,
            adapters=sharing.entries(adapters),
        )
        outcome.inserts.append(replica)
        outcome.replica_event(
            "replica.place", replica_id, datacenter=decision.datacenter_id, node=decision.node_id
        )
        return replica

    async def _spec(
        self, loaded: Loaded, replica_id: str, decision: Placement, adapters: tuple[str, ...],
        placer: Placer,
    ) -> ReplicaSpec:  # fmt: skip
        """What the node needs to start this replica (its secret and certificate included)."""
        deployment, model = loaded.deployment, loaded.model
        assert loaded.artifact is not None  # checked by the caller
        grants = {h.model_id: h.grant for h in loaded.hosted if h.grant is not None}
        return ReplicaSpec(
            replica_id=replica_id,
            deployment_id=deployment.id,
            model_name=model.name,
            engine=deployment.engine,
            artifact_uri=loaded.artifact.uri,
            artifact_sha256=loaded.artifact.sha256,
            secret=replica_secret(self._master_key, replica_id),
            datacenter_id=decision.datacenter_id,
            cpus=deployment.cpus,
            gpus=deployment.gpus,
            threads=self._engine.threads,
            context_length=model.context_length,
            bind_host=self._engine.bind_host,
            engine_args=dict(deployment.engine_args),
            watts_per_core=self._engine.watts_per_core,
            model_roots=self._engine.model_roots,
            adapter=loaded.adapter,
            adapters=tuple(HostedAdapter(m, grants[m]) for m in adapters if m in grants),
            tls=await self._issuer.issue_replica(replica_id),
            avoid_nodes=placer.refused_in(decision.datacenter_id),
        )

    async def _apply(self, session: AsyncSession, loaded: Loaded, outcome: Outcome) -> None:
        """Runs after the lease's fence, in its transaction."""
        deployment = loaded.deployment
        await session.execute(
            update(DeploymentRow)
            .where(DeploymentRow.id == deployment.id)
            .values(status=outcome.status, status_reason=outcome.reason, **outcome.scaling)
        )
        for replica_id, entries in outcome.adapters.items():  # the route table sees it at once
            await session.execute(update(ReplicaRow).where(ReplicaRow.id == replica_id)
                                  .values(adapters=entries, updated_at=utcnow()))  # fmt: skip
        if outcome.deletes:
            await session.execute(delete(ReplicaRow).where(ReplicaRow.id.in_(outcome.deletes)))
        began = loaded.now or self._clock()  # the clock the drain's plan reads
        for ids, since in ((outcome.drains, began), (outcome.undrains, None)):
            if ids:  # updated_at moves the routes' change token: every server sees it
                await session.execute(
                    update(ReplicaRow)
                    .where(ReplicaRow.id.in_(ids))
                    .values(draining_since=since, updated_at=utcnow())
                )
        session.add_all(outcome.inserts)
        for event in outcome.events:
            await audit.record(
                session,
                actor=audit.SYSTEM_CONTROLLER,
                action=event.action,
                org_id=outcome.org_id,
                target_type=event.target_type,
                target_id=event.target_id,
                details={"deployment": deployment.id, **event.details},
            )
        if outcome.remove_deployment:
            await session.execute(delete(DeploymentRow).where(DeploymentRow.id == deployment.id))
