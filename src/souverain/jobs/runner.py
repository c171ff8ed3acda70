"""The controller process: one leader at a time, and one loop per concern.

The leader lease is renewed by a task of its own every third of its lifetime, whatever
the work loops are doing, so a slow Ray call cannot make it lapse. While leading, each
concern runs in its own loop with a heartbeat (`health()`): node sync and deployment
reconciliation, fine-tuning jobs, the replica observer (long polls), energy intervals,
audit seals and pruning, the orphan sweep, expired files, the retention sweep, exports. One failing or slow loop neither stops nor corrupts another;
every write-back is guarded by the row's lease token. If the lease cannot be renewed,
every loop is cancelled at once and the controller goes back to waiting; another
controller takes over when the lease expires and adopts the running replicas by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.fleet import ObservedNode
from souverain.db.tables import DatacenterRow, DeploymentRow, ModelRow, ReplicaRow, utcnow
from souverain.evidence import audit_log
from souverain.files import service as files
from souverain.fleet import nodes as nodes_service
from souverain.jobs import leader
from souverain.jobs.deployments import autoscaling, idle_adapters
from souverain.jobs.deployments.observer import ReplicaObserver
from souverain.jobs.deployments.reconciler import (
    CredentialIssuer,
    DeploymentReconciler,
    EngineDefaults,
)
from souverain.jobs.energy import EnergyAccountant
from souverain.jobs.exports.runner import ExportRunner
from souverain.jobs.facade import ClusterFacade
from souverain.jobs.fine_tuning.reconciler import FineTuneReconciler, TrainingDefaults
from souverain.retention.sweep import RetentionSweep
from souverain.scheduler.placer import Placer
from souverain.scheduler.types import DatacenterView, NodeView, Snapshot

log = logging.getLogger(__name__)

ORPHAN_GRACE_S = 120.0
WAKE_EVERY_S = 0.1  # how often the demand of deployments at zero is read


@dataclass
class Loop:
    """One concern, run every `interval_s`; its heartbeat is the time of its last success."""

    name: str
    interval_s: float
    body: Callable[[], Awaitable[None]]
    last_ok: float = 0.0
    failures: int = 0

    async def run(self, stopping: asyncio.Event) -> None:
        """Until cancelled, and in any case once `stopping` is set: a body that turns its
        cancellation into an error (a write that fails while it is cancelled) is logged
        like any failure, and the loop still ends before its next round."""
        while not stopping.is_set():
            try:
                await self.body()
                self.last_ok = time.monotonic()
            except Exception:
                self.failures += 1
                log.exception("controller loop %r failed; it will run again", self.name)
            await asyncio.sleep(self.interval_s)


class Controller:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cluster: ClusterFacade,
        *,
        master_key: bytes,
        engine: EngineDefaults,
        issuer: CredentialIssuer,
        interval_s: float = 1.0,
        lease_s: float = 15.0,
        energy: EnergyAccountant | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        seal_interval_s: float = 300.0,
        retention_days: int = 400,
        observer_poll_s: float = 10.0,
        training: TrainingDefaults | None = None,
    ) -> None:
        self._signing_key = signing_key
        self._seal_interval_s = seal_interval_s
        self._retention_days = retention_days
        self._last_seal = 0.0
        self._last_prune = 0.0
        self._sessions = sessions
        self._cluster = cluster
        self._interval_s = interval_s
        self._lease_s = lease_s
        self.holder = f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self.energy = energy or EnergyAccountant(
            sessions, interval_s=30.0, prompt_weight=1.0, completion_weight=3.0
        )
        self.deployments = DeploymentReconciler(
            sessions, cluster, master_key=master_key, engine=engine, energy=self.energy,
            issuer=issuer,
        )  # fmt: skip
        self.finetune = FineTuneReconciler(
            sessions,
            cluster,
            master_key=master_key,
            defaults=training or TrainingDefaults(file_stores={}, model_roots=engine.model_roots),
        )
        # Readings arrive with every long poll: at least two per energy interval.
        poll_s = min(observer_poll_s, self.energy.interval_s / 2)
        self.observer = ReplicaObserver(sessions, cluster, energy=self.energy, poll_s=poll_s)
        self.retention = RetentionSweep(sessions, signing_key=signing_key)
        self.exports = (
            None
            if signing_key is None  # an archive's manifest must be signed
            else ExportRunner(sessions, master_key=master_key, signing_key=signing_key,
                              file_stores=training.file_stores if training else {})
        )  # fmt: skip
        self.loops = self._loops(interval_s)
        self.is_leader = False
        self.led_since: float | None = None

    def _loops(self, interval_s: float) -> list[Loop]:
        return [
            Loop("deployments", interval_s, self.cycle),
            Loop("wake", WAKE_EVERY_S, self.wake_from_zero),
            Loop("fine-tuning", interval_s, self.fine_tuning_cycle),
            Loop("energy", min(interval_s, 5.0), self.energy.close_due),
            Loop("audit", 5.0, self.keep_audit),
            Loop("orphans", 10.0, self.sweep_orphans),
            Loop("files", 60.0, self.sweep_files),
            Loop("retention", 60.0, self.sweep_retention),
            Loop("exports", 5.0, self.run_exports),
        ]

    def health(self) -> dict[str, float | None]:
        """Seconds since each loop last succeeded (None: never, or not leading)."""
        now = time.monotonic()
        return {
            loop.name: (now - loop.last_ok) if self.is_leader and loop.last_ok else None
            for loop in self.loops
        }

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await self._acquire():
                await self._lead(stop)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self._interval_s)
        if self.is_leader:
            self.is_leader = False
            await leader.release(self._sessions, holder=self.holder)

    async def _acquire(self) -> bool:
        try:
            return await leader.try_acquire(self._sessions, holder=self.holder, ttl_s=self._lease_s)
        except Exception:
            log.exception("the leader lease could not be read")
            return False

    async def _lead(self, stop: asyncio.Event) -> None:
        """Run every loop until `stop`, or until the lease cannot be renewed."""
        self.is_leader, self.led_since = True, time.monotonic()
        log.info("controller %s is leading", self.holder)
        stopping = asyncio.Event()
        tasks = [asyncio.create_task(loop.run(stopping), name=loop.name) for loop in self.loops]
        tasks.append(asyncio.create_task(self.observer.run(), name="observer"))
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._lease_s / 3)
                if not stop.is_set() and not await self._acquire():
                    log.error("controller %s lost the leader lease; stepping down", self.holder)
                    self.is_leader = False
                    break
        finally:
            stopping.set()
            for task in tasks:
                task.cancel()
            _, running = await asyncio.wait(tasks, timeout=self._lease_s)
            for task in running:  # its rows' leases still fence what it would write
                log.error("controller loop %r did not stop within %.0f s of stepping down",
                          task.get_name(), self._lease_s)  # fmt: skip

    async def cycle(self) -> None:
        """Sync the nodes, then reconcile every deployment against them."""
        await self.deployments.run_once(await self._placer(sync_nodes=True))

    async def wake_from_zero(self) -> None:
        """Reconcile at once a deployment at zero that a request waits for: its first
        token should not also wait for the next round. The shared ones first, so a base at
        zero woken in the same pass is placed with their adapters; for a shared deployment
        whose adapter was unloaded while idle, then the base deployments that load it again.
        (The lease keeps this and the round from working on one deployment at the same
        time.)"""
        async with self._sessions() as session:
            waking = await autoscaling.waking_from_zero(session, now=utcnow())
        if waking:
            placer = await self._placer(sync_nodes=False)
            for deployment_id in waking:
                await self.deployments.reconcile(deployment_id, placer)
            async with self._sessions() as session:  # an idle adapter wanted again: load it
                hosts = await idle_adapters.hosts_of(session, waking)
            for deployment_id in hosts:
                await self.deployments.reconcile(deployment_id, placer)

    async def fine_tuning_cycle(self) -> None:
        """Reconcile every followed fine-tuning job (a loop of its own: a slow training
        start must not delay replica placement)."""
        await self.finetune.run_once(await self._placer(sync_nodes=False))

    async def _placer(self, *, sync_nodes: bool) -> Placer:
        """A placer over what Ray reports now (each loop reserves within its own round;
        Ray's own accounting settles what two loops placed at the same moment)."""
        observed = await asyncio.to_thread(self._cluster.observe_nodes)
        async with self._sessions.begin() as session:
            if sync_nodes:
                await nodes_service.sync_nodes(session, observed=observed)
            datacenters = list((await session.execute(select(DatacenterRow))).scalars())
            on_disk = await models_by_node(session)
        return Placer(build_snapshot(observed, datacenters, on_disk))

    async def keep_audit(self) -> None:
        """Seal the audit chain's head now and then; once a day, prune what retention allows."""
        now = asyncio.get_running_loop().time()
        if self._signing_key is not None and now - self._last_seal >= self._seal_interval_s:
            async with self._sessions.begin() as session:
                await audit_log.seal(session, signing_key=self._signing_key)
            self._last_seal = now
        if now - self._last_prune >= 86_400:
            async with self._sessions.begin() as session:
                await audit_log.prune(session, retention_days=self._retention_days)
            self._last_prune = now

    async def sweep_files(self) -> None:
        """Delete files whose expiry has passed (their objects, and their quota)."""
        await files.sweep_expired(self._sessions)

    async def sweep_retention(self) -> None:
        """Remove what organisations' retention windows no longer allow (audited)."""
        await self.retention.run_once()

    async def run_exports(self) -> None:
        """Write the archives organisations asked for (a loop of its own: an archive of
        many gigabytes must not delay anything else)."""
        if self.exports is not None:
            await self.exports.run_once()

    async def sweep_orphans(self) -> None:
        """Stop replica actors no replica row knows about (a crash between start and apply)."""
        names = set(await asyncio.to_thread(self._cluster.replica_actor_names))
        async with self._sessions() as session:
            known = set((await session.execute(select(ReplicaRow.actor_name))).scalars())
        now = asyncio.get_running_loop().time()
        recent = self.deployments.recently_started
        for name in list(recent):
            if now - recent[name] > ORPHAN_GRACE_S:
                del recent[name]
        for name in names - known - set(recent):
            log.warning("stopping orphan replica actor %s", name)
            await asyncio.to_thread(self._cluster.stop_replica, name)

    async def teardown(self) -> None:
        """Stop every replica (used when `souverain up` exits with its embedded cluster)."""
        names = await asyncio.to_thread(self._cluster.replica_actor_names)
        await self._observe_last_energy()
        await asyncio.gather(*(asyncio.to_thread(self._cluster.stop_replica, n) for n in names))
        await self.energy.close_all()

        await forget_replicas(self._sessions)

    async def _observe_last_energy(self) -> None:
        async with self._sessions() as session:
            replicas = list((await session.execute(select(ReplicaRow))).scalars())
        for replica in replicas:
            status = await asyncio.to_thread(self._cluster.replica_status, replica.actor_name)
            if status is not None:
                self.energy.observe(replica, status)


async def forget_replicas(sessions: async_sessionmaker[AsyncSession]) -> None:
    """A fresh embedded cluster runs no replica: forget them, and what was said of them."""
    async with sessions.begin() as session:
        await session.execute(delete(ReplicaRow))
        await session.execute(
            update(DeploymentRow)
            .where(DeploymentRow.deleted.is_(False))
            .values(status="pending", status_reason="")
        )


async def models_by_node(session: AsyncSession) -> dict[str, frozenset[str]]:
    """Models each node serves now, hence has on disk (the scheduler prefers those nodes)."""
    query = (
        select(ReplicaRow.node_id, ModelRow.name)
        .join(DeploymentRow, DeploymentRow.id == ReplicaRow.deployment_id)
        .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
        .where(ReplicaRow.node_id.is_not(None))
    )
    found: dict[str, set[str]] = {}
    for node_id, model_name in (await session.execute(query)).all():
        found.setdefault(str(node_id), set()).add(model_name)
    return {node_id: frozenset(names) for node_id, names in found.items()}


def build_snapshot(
    observed: list[ObservedNode],
    datacenters: list[DatacenterRow],
    on_disk: dict[str, frozenset[str]] | None = None,
) -> Snapshot:
    return Snapshot(
        nodes=tuple(
            NodeView(
                id=node.id,
                datacenter_id=node.datacenter_id,
                alive=node.alive,
                cpus_free=node.available.get("CPU", 0.0),
                gpus_free=node.available.get("GPU", 0.0),
                memory_free_gib=node.available.get("memory", 0.0) / 2**30,
                engines=frozenset(
                    {"llamacpp", "embeddings", "stand-in", "training", "vllm"}
                    if node.resources.get("GPU")
                    else {"llamacpp", "embeddings", "stand-in", "training"}
                ),
                models_on_disk=(on_disk or {}).get(node.id, frozenset()),
                refusal=node.refusal,
            )
            for node in observed
        ),
        datacenters={
            dc.id: DatacenterView(
                id=dc.id,
                country=dc.country,
                operator_country=dc.operator_country,
                certifications=frozenset(dc.certifications),
                carbon_intensity=dc.carbon_intensity,
            )
            for dc in datacenters
        },
    )
