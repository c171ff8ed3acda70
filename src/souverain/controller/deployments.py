"""The deployment reconciler: keeps each deployment's replicas placed, healthy and counted.

load    claim the deployment row with a lease token; read it, its model, replicas and the
        placement policy (its own constraints ∩ its organisation's ceiling)
process ask each replica actor how its engine is; drop vanished replicas; drain replicas
        whose datacenter no longer complies (a changed policy, constraint or datacenter);
        stop extras; place missing ones (scheduler, then a detached Ray actor with a
        label_selector for the chosen datacenter)
apply   write replica rows and the deployment status where id and token still match
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.controller.energy import EnergyAccountant
from souverain.controller.facade import ClusterFacade
from souverain.core.fleet import ReplicaSpec, actor_name_for
from souverain.core.ids import new_id, replica_secret
from souverain.core.policy import Policy, exclusion
from souverain.db.tables import DeploymentRow, ModelArtifactRow, ModelRow, ReplicaRow, utcnow
from souverain.scheduler.placer import Placer
from souverain.scheduler.types import Placement, PlacementRequest
from souverain.services import audit
from souverain.services.deployments import placement_policy

log = logging.getLogger(__name__)


@dataclass
class EngineDefaults:
    threads: int
    bind_host: str | None
    watts_per_core: float = 10.0


@dataclass
class Loaded:
    deployment: DeploymentRow
    model: ModelRow
    artifact: ModelArtifactRow | None
    replicas: list[ReplicaRow]
    policy: Policy


@dataclass
class Outcome:
    updates: dict[str, dict[str, object]] = field(default_factory=dict)
    deletes: list[str] = field(default_factory=list)
    inserts: list[ReplicaRow] = field(default_factory=list)
    status: str = "pending"
    reason: str = ""
    remove_deployment: bool = False
    org_id: str | None = None
    events: list[tuple[str, str, dict[str, object]]] = field(default_factory=list)  # audit


class DeploymentReconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cluster: ClusterFacade,
        *,
        master_key: bytes,
        engine: EngineDefaults,
        energy: EnergyAccountant,
        lease_s: float = 120.0,
    ) -> None:
        self.energy = energy

        self._sessions = sessions
        self._cluster = cluster
        self._master_key = master_key
        self._engine = engine
        self._lease_s = lease_s
        self.recently_started: dict[str, float] = {}

    async def run_once(self, placer: Placer) -> None:
        async with self._sessions() as session:
            ids = list((await session.execute(select(DeploymentRow.id))).scalars())
        for deployment_id in ids:
            try:
                await self.reconcile(deployment_id, placer)
            except Exception:  # one broken deployment must not stop the others
                log.exception("reconciling deployment %s failed", deployment_id)

    async def reconcile(self, deployment_id: str, placer: Placer) -> None:
        token = secrets.token_hex(8)
        loaded = await self._load(deployment_id, token)
        if loaded is None:
            return
        outcome = await self._process(loaded, placer)
        await self._apply(loaded.deployment.id, token, outcome)

    async def _load(self, deployment_id: str, token: str) -> Loaded | None:
        now = utcnow()
        async with self._sessions.begin() as session:
            claimed = await session.execute(
                update(DeploymentRow)
                .where(
                    DeploymentRow.id == deployment_id,
                    (DeploymentRow.lock_token.is_(None)) | (DeploymentRow.lock_expires_at < now),
                )
                .values(lock_token=token, lock_expires_at=now + timedelta(seconds=self._lease_s))
            )
            if not claimed.rowcount:  # type: ignore[attr-defined]
                return None
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
        return Loaded(deployment, model, artifact, replicas, policy)

    async def _process(self, loaded: Loaded, placer: Placer) -> Outcome:
        deployment, outcome = loaded.deployment, Outcome(org_id=loaded.deployment.org_id)
        live = await self._observe(loaded, placer, outcome)
        desired = 0 if deployment.deleted else deployment.replicas
        for extra in _pick_extras(live, desired):
            await asyncio.to_thread(self._cluster.stop_replica, extra.actor_name)
            outcome.deletes.append(extra.id)
            outcome.events.append(("replica.stop", extra.id, {"reason": "scaled down"}))
            self.energy.retire(extra.id)

            live.remove(extra)
        unschedulable = ""
        while len(live) < desired and not unschedulable:
            placed = await self._place_one(loaded, placer, outcome)
            if isinstance(placed, str):
                unschedulable = placed
            else:
                live.append(placed)
        _set_status(outcome, deployment, live, desired, unschedulable)
        return outcome

    async def _observe(self, loaded: Loaded, placer: Placer, outcome: Outcome) -> list[ReplicaRow]:
        live = []
        datacenters = placer.snapshot.datacenters
        for replica in loaded.replicas:
            datacenter = datacenters.get(replica.datacenter_id)
            reason = (
                "datacenter removed"
                if datacenter is None
                else exclusion(loaded.policy, datacenter.site)
            )
            if reason is not None:
                log.warning(
                    "draining replica %s in %s: %s", replica.id, replica.datacenter_id, reason
                )
                await asyncio.to_thread(self._cluster.stop_replica, replica.actor_name)
                outcome.deletes.append(replica.id)
                outcome.events.append(
                    (
                        "replica.drain",
                        replica.id,
                        {"datacenter": replica.datacenter_id, "reason": reason},
                    )
                )
                self.energy.retire(replica.id)
                continue
            status = await asyncio.to_thread(self._cluster.replica_status, replica.actor_name)
            if status is None:
                log.warning("replica %s vanished from the cluster; it will be replaced", replica.id)
                outcome.deletes.append(replica.id)
                outcome.events.append(
                    ("replica.lost", replica.id, {"datacenter": replica.datacenter_id})
                )
                self.energy.retire(replica.id)
                continue
            self.energy.observe(replica, status)

            changes: dict[str, object] = {
                "state": status.state,
                "url": status.url if status.state == "ready" else None,
                "node_id": status.node_id or replica.node_id,
                "engine_restarts": status.restarts,
                "reason": status.error,
            }
            if any(getattr(replica, k) != v for k, v in changes.items()):
                outcome.updates[replica.id] = {**changes, "updated_at": utcnow()}
                for key, value in changes.items():
                    setattr(replica, key, value)
            live.append(replica)
        return live

    async def _place_one(
        self, loaded: Loaded, placer: Placer, outcome: Outcome
    ) -> ReplicaRow | str:
        deployment, model = loaded.deployment, loaded.model
        if loaded.artifact is None:
            return f"model {model.name} has no artifact"
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
        spec = ReplicaSpec(
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
        )

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
        )
        outcome.inserts.append(replica)
        outcome.events.append(
            (
                "replica.place",
                replica_id,
                {"datacenter": decision.datacenter_id, "node": decision.node_id},
            )
        )
        return replica

    async def _apply(self, deployment_id: str, token: str, outcome: Outcome) -> None:
        async with self._sessions.begin() as session:
            owned = (
                await session.execute(
                    select(DeploymentRow.id).where(
                        DeploymentRow.id == deployment_id, DeploymentRow.lock_token == token
                    )
                )
            ).first()
            if owned is None:
                log.warning(
                    "lost the lease on deployment %s; dropping this round's writes", deployment_id
                )
                return
            for replica_id, values in outcome.updates.items():
                await session.execute(
                    update(ReplicaRow).where(ReplicaRow.id == replica_id).values(**values)
                )
            if outcome.deletes:
                await session.execute(delete(ReplicaRow).where(ReplicaRow.id.in_(outcome.deletes)))
            session.add_all(outcome.inserts)
            for action, replica_id, details in outcome.events:
                await audit.record(
                    session,
                    actor=audit.SYSTEM_CONTROLLER,
                    action=action,
                    org_id=outcome.org_id,
                    target_type="replica",
                    target_id=replica_id,
                    details={"deployment": deployment_id, **details},
                )
            if outcome.remove_deployment:
                await session.execute(
                    delete(DeploymentRow).where(DeploymentRow.id == deployment_id)
                )
                return
            await session.execute(
                update(DeploymentRow)
                .where(DeploymentRow.id == deployment_id)
                .values(
                    status=outcome.status,
                    status_reason=outcome.reason,
                    lock_token=None,
                    lock_expires_at=None,
                )
            )


def _pick_extras(live: list[ReplicaRow], desired: int) -> list[ReplicaRow]:
    """Replicas to stop when there are too many: the least ready and newest first."""
    surplus = len(live) - desired
    if surplus <= 0:
        return []
    ranked = sorted(
        live, key=lambda r: (r.state == "ready", -r.created_at.timestamp() if r.created_at else 0)
    )
    return ranked[:surplus]


def _set_status(
    outcome: Outcome,
    deployment: DeploymentRow,
    live: list[ReplicaRow],
    desired: int,
    unschedulable: str,
) -> None:
    ready = sum(1 for r in live if r.state == "ready")
    failed = [r for r in live if r.state == "failed"]
    if deployment.deleted:
        outcome.remove_deployment = not live
        outcome.status, outcome.reason = "deleting", f"stopping {len(live)} replica(s)"
    elif desired == 0:
        outcome.status, outcome.reason = "stopped", "scaled to zero"
    elif failed:
        outcome.status, outcome.reason = "failed", failed[0].reason or "an engine failed to start"
    elif unschedulable:
        outcome.status, outcome.reason = "unschedulable", unschedulable
    elif ready >= desired:
        outcome.status, outcome.reason = "ready", f"{ready}/{desired} replicas ready"
    else:
        outcome.status, outcome.reason = "starting", f"{ready}/{desired} replicas ready"
