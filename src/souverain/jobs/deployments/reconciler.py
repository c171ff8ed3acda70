"""The deployment reconciler: keeps each deployment's replicas placed and counted.

load    claim the deployment row with a lease token; read it, its model, replicas (with
        the state the replica observer wrote) and the placement policy (its own
        constraints ∩ its organisation's ceiling)
process decide the wanted count from the load the gateways report (autoscaled deployments:
        `autoscaling.py`, `scheduler/autoscale.py`); drop lost replicas; drain replicas whose datacenter no longer complies (a changed
        policy, constraint or datacenter) or whose node left the cluster; stop extras;
        place missing ones (scheduler, then a detached Ray actor with a label_selector
        for the chosen datacenter)
apply   one transaction that starts with the lease's fence (`UPDATE deployments … WHERE
        id AND lock_token`): if another controller took the row, nothing of this round is
        written

This is the shape of every kind of long work (`jobs/cycle.py`, `jobs/lease.py`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from cryptography.exceptions import InvalidTag
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.errors import GoneError
from souverain.core.fleet import EngineCredential, ObjectGrant, ReplicaSpec, actor_name_for
from souverain.core.ids import new_id, replica_secret
from souverain.core.node_identity import must_leave
from souverain.core.policy import Policy, exclusion
from souverain.core.status import DEPLOYMENT_FAILING, ReplicaState
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
from souverain.jobs.deployments import autoscaling
from souverain.jobs.deployments.service import placement_policy
from souverain.jobs.energy import EnergyAccountant
from souverain.jobs.facade import ClusterFacade
from souverain.jobs.lease import Lease
from souverain.scheduler.autoscale import decide
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


@dataclass
class Loaded:
    deployment: DeploymentRow
    model: ModelRow
    artifact: ModelArtifactRow | None
    replicas: list[ReplicaRow]
    policy: Policy
    adapter: ObjectGrant | None = None  # a fine-tuned model's LoRA adapter
    adapter_error: str = ""
    busy: tuple[int, int] = (0, 0)  # (in flight, waiting), as the gateways report
    now: datetime | None = None


@dataclass(frozen=True)
class Event:
    action: str
    target_type: str
    target_id: str
    details: dict[str, object]


@dataclass
class Outcome:
    deletes: list[str] = field(default_factory=list)
    inserts: list[ReplicaRow] = field(default_factory=list)
    status: str = "pending"
    reason: str = ""
    remove_deployment: bool = False
    org_id: str | None = None
    events: list[Event] = field(default_factory=list)  # audited with the write-back
    scaling: dict[str, object] = field(default_factory=dict)  # the row's new scaling values

    def replica_event(self, action: str, replica_id: str, **details: object) -> None:
        self.events.append(Event(action, "replica", replica_id, details))


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
        return Loaded(
            deployment, model, artifact, replicas, policy, adapter, adapter_error, busy, now
        )

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
        desired = 0 if deployment.deleted else _scale(loaded, outcome)
        for extra in _pick_extras(live, desired):
            await asyncio.to_thread(self._cluster.stop_replica, extra.actor_name)
            outcome.deletes.append(extra.id)
            outcome.replica_event("replica.stop", extra.id, reason="scaled down")
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
        if _worth_auditing(deployment.status, outcome.status):
            outcome.events.append(
                Event(
                    "deployment.status",
                    "deployment",
                    deployment.id,
                    {"from": deployment.status, "to": outcome.status, "reason": outcome.reason},
                )
            )
        return outcome

    async def _observe(self, loaded: Loaded, placer: Placer, outcome: Outcome) -> list[ReplicaRow]:
        live = []
        for replica in loaded.replicas:
            reason = _drain_reason(replica, loaded.policy, placer)
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
            model_roots=self._engine.model_roots,
            adapter=loaded.adapter,
            tls=await self._issuer.issue_replica(replica_id),
            avoid_nodes=placer.refused_in(decision.datacenter_id),
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
        outcome.replica_event(
            "replica.place", replica_id, datacenter=decision.datacenter_id, node=decision.node_id
        )
        return replica

    async def _apply(self, session: AsyncSession, loaded: Loaded, outcome: Outcome) -> None:
        """Runs after the lease's fence, in its transaction."""
        deployment = loaded.deployment
        await session.execute(
            update(DeploymentRow)
            .where(DeploymentRow.id == deployment.id)
            .values(status=outcome.status, status_reason=outcome.reason, **outcome.scaling)
        )
        if outcome.deletes:
            await session.execute(delete(ReplicaRow).where(ReplicaRow.id.in_(outcome.deletes)))
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


def _scale(loaded: Loaded, outcome: Outcome) -> int:
    """The replicas wanted now: the fixed count, or the autoscaler's after this reading."""
    deployment = loaded.deployment
    if not autoscaling.is_autoscaled(deployment) or loaded.now is None:
        return deployment.replicas
    in_flight, waiting = loaded.busy
    decision = decide(
        autoscaling.limits_of(deployment),
        autoscaling.state_of(deployment),
        in_flight + waiting,
        loaded.now,
        starting=any(r.state == ReplicaState.STARTING for r in loaded.replicas),
    )
    outcome.scaling = autoscaling.write_decision(deployment, decision, loaded.now)
    if decision.changed:
        outcome.events.append(
            Event(
                "deployment.scale",
                "deployment",
                deployment.id,
                {"from": deployment.replicas, "to": decision.state.wanted,
                 "reason": decision.reason, "in_flight": in_flight, "waiting": waiting},
            )
        )  # fmt: skip
    return decision.state.wanted


def _drain_reason(replica: ReplicaRow, policy: Policy, placer: Placer) -> str | None:
    """Why a replica must stop where it is: its datacenter is gone or no longer allowed, its
    node left the cluster (Ray would restart the actor only inside that datacenter, and
    there may be no node left there), or it serves in clear (adopted from before TLS)."""
    datacenter = placer.snapshot.datacenters.get(replica.datacenter_id)
    if datacenter is None:
        return "datacenter removed"
    excluded = exclusion(policy, datacenter.site)
    if excluded is not None:
        return excluded
    if replica.node_id is not None and replica.node_id not in placer.alive_nodes:
        return f"node {replica.node_id[:12]} lost"
    refusal = placer.refused.get(replica.node_id or "")
    if refusal is not None and must_leave(refusal):
        return f"node {(replica.node_id or '')[:12]} refused: {refusal}"
    if replica.url and not replica.url.startswith("https://"):
        return "serves without TLS (started before TLS to engines): replaced"
    return None


def _worth_auditing(before: str, after: str) -> bool:
    """Entering or leaving a failure is an event; starting and scaling are not."""
    return before != after and bool({before, after} & DEPLOYMENT_FAILING)


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
        outcome.status, outcome.reason = "stopped", _stopped_reason(deployment)
    elif failed and len(failed) == len(live):
        outcome.status = "failed"
        outcome.reason = failed[0].reason or "every engine failed to start"
    elif failed:
        outcome.status = "degraded"
        outcome.reason = (
            f"{ready}/{desired} replicas ready, {len(failed)} failed: {failed[0].reason}"
        )
    elif unschedulable:
        outcome.status, outcome.reason = "unschedulable", unschedulable
    elif ready >= desired:
        outcome.status, outcome.reason = "ready", f"{ready}/{desired} replicas ready"
    else:
        outcome.status, outcome.reason = "starting", f"{ready}/{desired} replicas ready"


def _stopped_reason(deployment: DeploymentRow) -> str:
    if autoscaling.limits_of(deployment).max_replicas > 0:
        return "scaled to zero while idle; the next request starts a replica"
    return "scaled to zero"
