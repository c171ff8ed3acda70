"""The fine-tuning reconciler: places queued jobs, follows running ones, ends them.

    queued   the scheduler picks a node whose datacenter the job's policy allows, with the
             CPUs it asks for (the same `Placer` as replicas: unschedulable keeps the job
             queued with every node's reason); the training budget is reserved; a detached
             training actor starts there, with grants for its files and the job's last
             checkpoint (so a restarted job carries on, never starts over)
    running  the actor's new events and sealed checkpoints are written; pause and cancel
             are passed on; an actor that is gone (killed, its node lost) sends the job
             back to `queued`, to resume from its last checkpoint; a datacenter the policy
             no longer allows makes it checkpoint and move
    ended    a succeeded job becomes a model of its organisation, with its lineage and its
             adapter, deployed at once; what the job used is settled against the budget

Each job row is claimed with a lease token for the round, like deployments.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.fleet import (
    ObjectGrant,
    SealedObject,
    TrainingSpec,
    TrainingStatus,
    training_actor_name,
    training_object_id,
    training_object_key,
)
from souverain.core.ids import new_id
from souverain.db.jobs import (
    FileRow,
    FineTuningCheckpointRow,
    FineTuningJobRow,
)
from souverain.db.tables import (
    ModelArtifactRow,
    utcnow,
)
from souverain.evidence import audit
from souverain.files import service as files
from souverain.fleet import datacenters
from souverain.jobs.facade import ClusterFacade
from souverain.jobs.fine_tuning import budget as training_budget
from souverain.jobs.fine_tuning import service as fine_tuning
from souverain.jobs.fine_tuning.events import event_words
from souverain.jobs.fine_tuning.outcome import register_model
from souverain.scheduler.placer import Placer
from souverain.scheduler.types import Placement, PlacementRequest
from souverain.storage.crypto import unwrap

log = logging.getLogger(__name__)

FOLLOWED = ("queued", "running")
BUDGET_SPENT = "the energy budget has no room left for this job; raise it, then resume the job"
TRAINING_ENGINE = "training"


@dataclass
class TrainingDefaults:
    threads: int
    file_stores: Mapping[str, str]
    watts_per_core: float = 10.0
    model_roots: tuple[str, ...] = ()
    serve_cpus: float = 1.0
    cpu_hours_per_job: float = 8.0  # reserved on the energy budget at each placement


class FineTuneReconciler:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cluster: ClusterFacade,
        *,
        master_key: bytes,
        defaults: TrainingDefaults,
        lease_s: float = 60.0,
    ) -> None:
        self._sessions = sessions
        self._cluster = cluster
        self._master_key = master_key
        self._defaults = defaults
        self._lease_s = lease_s

    async def run_once(self, placer: Placer) -> None:
        async with self._sessions() as session:
            query = select(FineTuningJobRow.id).where(
                FineTuningJobRow.status.in_(FOLLOWED)
                | ((FineTuningJobRow.status == "paused") & FineTuningJobRow.node_id.is_not(None))
            )
            ids = list(
                (await session.execute(query.order_by(FineTuningJobRow.created_at))).scalars()
            )
        for job_id in ids:
            try:
                await self.reconcile(job_id, placer)
            except Exception:  # one broken job must not stop the others
                log.exception("reconciling fine-tuning job %s failed", job_id)

    async def reconcile(self, job_id: str, placer: Placer) -> None:
        token = secrets.token_hex(8)
        if not await self._claim(job_id, token):
            return
        try:
            async with self._sessions.begin() as session:
                job = await session.get(FineTuningJobRow, job_id)
                if job is None or job.lock_token != token:
                    return
                if job.status == "queued" and job.wanted == "run":
                    await self._place(session, job, placer)
                elif job.status in ("running", "paused"):
                    await self._follow(session, job, placer)
        finally:
            async with self._sessions.begin() as session:
                await session.execute(
                    update(FineTuningJobRow)
                    .where(FineTuningJobRow.id == job_id, FineTuningJobRow.lock_token == token)
                    .values(lock_token=None, lock_expires_at=None)
                )

    async def _claim(self, job_id: str, token: str) -> bool:
        now = utcnow()
        async with self._sessions.begin() as session:
            claimed = await session.execute(
                update(FineTuningJobRow)
                .where(
                    FineTuningJobRow.id == job_id,
                    FineTuningJobRow.lock_token.is_(None)
                    | (FineTuningJobRow.lock_expires_at < now),
                )
                .values(lock_token=token, lock_expires_at=now + timedelta(seconds=self._lease_s))
            )
            return bool(claimed.rowcount)  # type: ignore[attr-defined]

    # -- queued -> running ---------------------------------------------------------------

    async def _place(self, session: AsyncSession, job: FineTuningJobRow, placer: Placer) -> None:
        policy = await fine_tuning.job_policy(session, job=job)
        request = PlacementRequest(
            engine=TRAINING_ENGINE, cpus=job.cpus, gpus=job.gpus, policy=policy
        )
        decision = placer.place(request)
        if not isinstance(decision, Placement):
            await self._waiting(session, job, decision.summary)
            return
        store_uri = self._defaults.file_stores.get(decision.datacenter_id)
        if store_uri is None:
            await self._waiting(
                session, job, f"0/{len(placer.snapshot.nodes)} nodes fit: "
                f"{decision.datacenter_id} has no file store for checkpoints",
            )  # fmt: skip
            return
        try:
            reserved = await training_budget.reserve(
                session,
                job=job,
                cpu_hours_per_job=self._defaults.cpu_hours_per_job,
                watts_per_core=self._defaults.watts_per_core,
            )
        except training_budget.NoRoom as error:
            await self._waiting(session, job, str(error))
            return
        spec = await self._spec(session, job, decision.datacenter_id, store_uri)
        await asyncio.to_thread(self._cluster.start_training, spec)
        placer.reserve(decision.node_id, cpus=job.cpus, gpus=job.gpus)
        first = job.started_at is None
        job.status, job.status_reason = "running", ""
        job.datacenter_id, job.node_id, job.store_uri = (
            decision.datacenter_id,
            decision.node_id,
            store_uri,
        )
        job.attempt, job.event_seq = spec.attempt, 0
        job.reserved_cpu_hours = reserved
        job.started_at = job.started_at or utcnow()
        job.heartbeat_at = utcnow()
        await fine_tuning.add_event(
            session, job,
            f"{'Fine-tuning job started' if first else 'Job resumed'} in {decision.datacenter_id}"
            + (f" from the checkpoint at step {spec.resume_step}" if spec.resume else ""),
            data={"datacenter": decision.datacenter_id, "node": decision.node_id,
                  "attempt": spec.attempt, "resume_step": spec.resume_step},
        )  # fmt: skip
        await audit.record(
            session, actor=audit.SYSTEM_CONTROLLER, action="fine_tuning.place",
            org_id=job.org_id, target_type="fine_tuning_job", target_id=job.id,
            details={"datacenter": decision.datacenter_id, "node": decision.node_id,
                     "attempt": spec.attempt},
        )  # fmt: skip

    async def _waiting(self, session: AsyncSession, job: FineTuningJobRow, reason: str) -> None:
        if job.status_reason != reason:
            job.status_reason = reason
            await fine_tuning.add_event(
                session, job, f"Waiting for capacity: {reason}", level="warn"
            )

    async def _spec(
        self, session: AsyncSession, job: FineTuningJobRow, datacenter_id: str, store_uri: str
    ) -> TrainingSpec:
        kek = await files.organisation_kek(
            session, master_key=self._master_key, org_id=job.org_id, create=False
        )
        training = []
        for entry in job.training_files:
            row = await session.get(FileRow, entry["file_id"])
            assert row is not None
            training.append(_file_grant(row, kek))
        validation = None
        if job.validation_file_id:
            row = await session.get(FileRow, job.validation_file_id)
            assert row is not None
            validation = _file_grant(row, kek)
        output_key = fine_tuning.job_data_key(job, kek)
        last = (
            (
                await session.execute(
                    select(FineTuningCheckpointRow)
                    .where(FineTuningCheckpointRow.job_id == job.id)
                    .order_by(FineTuningCheckpointRow.step.desc())
                )
            )
            .scalars()
            .first()
        )
        resume = None
        if last is not None:  # read from where it was sealed, maybe another datacenter's store
            resume = ObjectGrant(last.store_uri, last.object_key, last.object_id, output_key,
                                 last.sha256)  # fmt: skip
        artifact = (
            (
                await session.execute(
                    select(ModelArtifactRow).where(ModelArtifactRow.model_id == job.base_model_id)
                )
            )
            .scalars()
            .first()
        )
        assert artifact is not None
        init_adapter = None
        start = job.resolved.get("start_from")
        if start:  # a cold-start model's adapter, sealed by the job that trained it
            parent = await session.get(FineTuningJobRow, start["job_id"])
            assert parent is not None
            init_adapter = ObjectGrant(
                parent.store_uri or "", training_object_key(parent.id, "adapter-peft.tar"),
                training_object_id(parent.id, "adapter-peft.tar"),
                fine_tuning.job_data_key(parent, kek),
                start.get("peft_sha256"),
            )  # fmt: skip
        return TrainingSpec(
            job_id=job.id,
            datacenter_id=datacenter_id,
            base_artifact_uri=artifact.uri,
            base_artifact_sha256=artifact.sha256,
            training=tuple(training),
            validation=validation,
            hyperparameters={k: v for k, v in job.resolved.items() if k not in NOT_RECIPE},
            output_store_uri=store_uri,  # new checkpoints stay in the datacenter that runs it
            output_key=output_key,
            cpus=job.cpus,
            gpus=job.gpus,
            threads=self._defaults.threads,
            resume=resume,
            resume_step=last.step if last is not None and resume is not None else 0,
            watts_per_core=self._defaults.watts_per_core,
            model_roots=self._defaults.model_roots,
            attempt=job.attempt + 1,
            method=job.method,
            grader=job.resolved.get("grader"),
            init_adapter=init_adapter,
        )

    # -- running ------------------------------------------------------------------------

    async def _follow(self, session: AsyncSession, job: FineTuningJobRow, placer: Placer) -> None:
        name = training_actor_name(job.id)
        status = await asyncio.to_thread(self._cluster.training_status, name, job.event_seq)
        if status is None:
            await self._lost(session, job)
            return
        if status.state == "starting" and status.node_id is None:
            return  # the actor is being created (or not answering for a moment)
        await self._record(session, job, status)
        if status.state in ("succeeded", "failed", "cancelled", "paused"):
            await self._ended(session, job, status)
            await asyncio.to_thread(self._cluster.stop_training, name)
            return
        if job.wanted == "run" and not await self._top_up(session, job):
            job.wanted = "pause"
            job.status_reason = BUDGET_SPENT
            await fine_tuning.add_event(session, job, f"Pausing: {BUDGET_SPENT}", level="warn")
        if job.wanted == "cancel":
            await asyncio.to_thread(self._cluster.signal_training, name, "cancel")
        elif job.wanted == "pause" and status.state != "pausing":
            await asyncio.to_thread(self._cluster.signal_training, name, "pause")
        elif (moved := await self._left_policy(session, job)) is not None:
            job.wanted = "move"
            await fine_tuning.add_event(
                session, job, f"The policy in force no longer allows {job.datacenter_id} "
                f"({moved}): checkpointing to carry on elsewhere", level="warn",
            )  # fmt: skip
            await asyncio.to_thread(self._cluster.signal_training, name, "pause")

    async def _top_up(self, session: AsyncSession, job: FineTuningJobRow) -> bool:
        return await training_budget.top_up(
            session, job=job, cpu_hours_per_job=self._defaults.cpu_hours_per_job,
            watts_per_core=self._defaults.watts_per_core,
        )  # fmt: skip

    async def _left_policy(self, session: AsyncSession, job: FineTuningJobRow) -> str | None:
        if job.wanted == "move" or job.datacenter_id is None:
            return None
        policy = await fine_tuning.job_policy(session, job=job)
        return await datacenters.exclusion_at(
            session, policy=policy, datacenter_id=job.datacenter_id
        )

    async def _record(
        self, session: AsyncSession, job: FineTuningJobRow, status: TrainingStatus
    ) -> None:
        for event in status.events:
            if event["type"] == "validated" and "thinking_fraction" in event:
                job.resolved = {**job.resolved, "thinking_fraction": event["thinking_fraction"]}
            message, kind, data = event_words(event)
            if message:
                await fine_tuning.add_event(session, job, message, kind=kind, data=data,
                                         level="error" if event["type"] in ("invalid", "collapsed") else "info")  # fmt: skip
        job.event_seq = max(job.event_seq, status.event_seq)
        known = set(
            (
                await session.execute(
                    select(FineTuningCheckpointRow.step).where(
                        FineTuningCheckpointRow.job_id == job.id
                    )
                )
            ).scalars()
        )
        for sealed in status.sealed:
            if sealed.name.startswith("checkpoint-") and sealed.step not in known:
                session.add(_checkpoint_row(job, sealed))
                known.add(sealed.step)
        job.step = max(job.step, status.step)
        job.total_steps = status.total_steps or job.total_steps
        job.trained_tokens = max(job.trained_tokens, status.tokens)
        job.tokens_per_s = status.tokens_per_s or job.tokens_per_s
        job.train_loss = status.train_loss if status.train_loss is not None else job.train_loss
        job.live_cpu_seconds, job.live_energy_j = status.cpu_seconds, status.energy_j
        job.energy_source = status.energy_source
        job.node_id = status.node_id or job.node_id
        job.wall_s = status.wall_s
        job.heartbeat_at = utcnow()
        await session.flush()

    async def _lost(self, session: AsyncSession, job: FineTuningJobRow) -> None:
        """The actor is gone: killed, or its node left. Resume from the last checkpoint."""
        self._close_attempt(job)
        if job.wanted == "cancel":
            await self._finish(session, job, "cancelled", "Job cancelled")
            return
        if job.status == "paused":
            job.node_id = None
            return
        job.status, job.node_id = "queued", None
        await fine_tuning.add_event(
            session, job, "The training worker was lost; the job is queued again and will "
            "carry on from its last checkpoint", level="warn",
        )  # fmt: skip
        await self._settle(session, job)

    async def _ended(
        self, session: AsyncSession, job: FineTuningJobRow, status: TrainingStatus
    ) -> None:
        self._close_attempt(job)
        if status.state == "paused":
            await self._settle(session, job)
            if job.wanted == "move":
                job.status, job.wanted, job.node_id = "queued", "run", None
                await fine_tuning.add_event(session, job, "Checkpointed; queued to move")
            elif job.wanted == "cancel":
                await self._finish(session, job, "cancelled", "Job cancelled")
            else:
                job.status, job.node_id = "paused", None
                await fine_tuning.add_event(session, job, f"Job paused at step {job.step}")
            return
        if status.state == "cancelled":
            await self._finish(session, job, "cancelled", "Job cancelled")
        elif status.state == "failed":
            job.error = {"code": status.error_code or "training_failed", "message": status.error,
                         "param": "training_file" if status.error_code == "invalid_training_file" else None}  # fmt: skip
            await self._finish(session, job, "failed", f"Job failed: {status.error}", level="error")
        else:
            await self._succeeded(session, job, status)

    async def _settle(self, session: AsyncSession, job: FineTuningJobRow) -> None:
        await training_budget.settle(session, job=job, watts_per_core=self._defaults.watts_per_core)

    def _close_attempt(self, job: FineTuningJobRow) -> None:
        job.cpu_seconds += job.live_cpu_seconds
        job.energy_j += job.live_energy_j
        job.live_cpu_seconds = job.live_energy_j = 0.0

    async def _finish(
        self,
        session: AsyncSession,
        job: FineTuningJobRow,
        state: str,
        message: str,
        *,
        level: str = "info",
    ) -> None:
        job.status, job.finished_at, job.node_id = state, utcnow(), None
        await self._settle(session, job)
        await fine_tuning.add_event(session, job, message, level=level)
        await audit.record(
            session, actor=audit.SYSTEM_CONTROLLER, action=f"fine_tuning.{state}",
            org_id=job.org_id, target_type="fine_tuning_job", target_id=job.id,
            details={"steps": job.step, "cpu_seconds": round(job.cpu_seconds, 1),
                     "energy_j": round(job.energy_j, 1), "error": job.error},
        )  # fmt: skip

    async def _succeeded(
        self, session: AsyncSession, job: FineTuningJobRow, status: TrainingStatus
    ) -> None:
        if job.method == "evaluation":
            await self._finish(session, job, "succeeded", "The evaluation has completed")
            return
        adapter = next((s for s in status.sealed if s.name == "adapter.gguf"), None)
        peft = next((s for s in status.sealed if s.name == "adapter-peft.tar"), None)
        if adapter is None or peft is None:
            job.error = {
                "code": "export_failed",
                "message": "the adapter was not exported",
                "param": None,
            }
            await self._finish(
                session, job, "failed", "Job failed: the adapter was not exported", level="error"
            )
            return
        model = await register_model(
            session, job, adapter, peft, serve_cpus=self._defaults.serve_cpus
        )
        job.fine_tuned_model, job.result_model_id = model.name, model.id
        await self._finish(session, job, "succeeded", "The job has successfully completed")
        await fine_tuning.add_event(
            session, job, f"New fine-tuned model created: {model.name}", data={"model": model.name}
        )


NOT_RECIPE = frozenset({"n_epochs", "grader", "start_from", "thinking_fraction"})


def _file_grant(row: FileRow, kek: bytes) -> ObjectGrant:
    data_key = unwrap(kek, bytes.fromhex(row.wrapped_key), row.id)
    return ObjectGrant(row.store_uri, row.object_key, row.id, data_key, row.sha256)


def _checkpoint_row(job: FineTuningJobRow, sealed: SealedObject) -> FineTuningCheckpointRow:
    return FineTuningCheckpointRow(
        id=f"ftckpt-{new_id('c')[-16:]}", job_id=job.id, store_uri=job.store_uri or "", step=sealed.step, metrics=dict(sealed.metrics),
        object_key=sealed.object_key, object_id=sealed.object_id, sha256=sealed.sha256,
        size_bytes=sealed.size, created_at=utcnow(),
    )  # fmt: skip
