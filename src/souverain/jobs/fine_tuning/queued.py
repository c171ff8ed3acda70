"""A queued fine-tuning job: placed, its budget reserved, its training actor started.

load     the scheduler picks a node whose datacenter the job's policy allows, with the
         CPUs it asks for (the same `Placer` as replicas: unschedulable keeps the job
         queued with every node's reason); the training budget is reserved, fenced by
         the job's lease; the actor's spec is drawn up, with grants for its files and
         the job's last checkpoint (so a restarted job carries on, never starts over)
process  the detached training actor starts there (Ray: no transaction is open)
apply    the job is `running`, with an event and an audit record; if the start failed,
         or the tenant paused or cancelled the job meanwhile, the reservation is
         released instead (and an actor that started is stopped after the commit)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.fleet import (
    ObjectGrant,
    TrainingSpec,
    training_object_id,
    training_object_key,
)
from souverain.core.status import FineTuningStatus, Wanted
from souverain.db.jobs import FileRow, FineTuningCheckpointRow, FineTuningJobRow
from souverain.db.tables import ModelArtifactRow, utcnow
from souverain.evidence import audit
from souverain.files import service as files
from souverain.jobs.fine_tuning import budget as training_budget
from souverain.jobs.fine_tuning import service as fine_tuning
from souverain.jobs.fine_tuning.context import Context, Effect, Effects
from souverain.jobs.fine_tuning.ended import settle
from souverain.scheduler.placer import Placer
from souverain.scheduler.types import Placement, PlacementRequest
from souverain.storage.crypto import unwrap

log = logging.getLogger(__name__)

TRAINING_ENGINE = "training"
NOT_RECIPE = frozenset({"n_epochs", "grader", "start_from", "thinking_fraction"})


@dataclass
class Placing:
    """What the load decided: wait (with the reason), or start `spec` on `node_id`."""

    job_id: str
    waiting: str = ""
    spec: TrainingSpec | None = None
    node_id: str = ""
    reserved_cpu_hours: float = 0.0


@dataclass
class Started:
    error: str = ""  # why the actor could not be started


async def load(
    session: AsyncSession, ctx: Context, job: FineTuningJobRow, placer: Placer
) -> Placing:
    policy = await fine_tuning.job_policy(session, job=job)
    request = PlacementRequest(engine=TRAINING_ENGINE, cpus=job.cpus, gpus=job.gpus, policy=policy)
    decision = placer.place(request)
    if not isinstance(decision, Placement):
        return Placing(job.id, waiting=decision.summary)
    store_uri = ctx.defaults.file_stores.get(decision.datacenter_id)
    if store_uri is None:
        return Placing(job.id, waiting=f"0/{len(placer.snapshot.nodes)} nodes fit: "
                       f"{decision.datacenter_id} has no file store for checkpoints")  # fmt: skip
    if job.reserved_cpu_hours > 0:  # an earlier start that never reached its apply
        await settle(session, ctx, job)
    try:
        reserved = await training_budget.reserve(
            session,
            job=job,
            cpu_hours_per_job=ctx.defaults.cpu_hours_per_job,
            watts_per_core=ctx.defaults.watts_per_core,
        )
    except training_budget.NoRoom as error:
        return Placing(job.id, waiting=str(error))
    job.reserved_cpu_hours = reserved  # written with the claim: fenced by the lease
    spec = await _spec(session, ctx, job, decision.datacenter_id, store_uri)
    spec = replace(spec, avoid_nodes=placer.refused_in(decision.datacenter_id))
    return Placing(job.id, spec=spec, node_id=decision.node_id, reserved_cpu_hours=reserved)


async def process(ctx: Context, placing: Placing, placer: Placer) -> Started:
    if placing.spec is None:
        return Started()
    try:
        await asyncio.to_thread(ctx.cluster.start_training, placing.spec)
    except Exception as error:
        log.exception("starting the training actor of %s failed", placing.job_id)
        return Started(error=str(error) or type(error).__name__)
    placer.reserve(placing.node_id, cpus=placing.spec.cpus, gpus=placing.spec.gpus)
    return Started()


async def apply(
    session: AsyncSession, ctx: Context, placing: Placing, started: Started, after: Effects
) -> None:
    job = await session.get(FineTuningJobRow, placing.job_id)
    assert job is not None  # the fence matched it
    spec = placing.spec
    if spec is None:
        await _waiting(session, job, placing.waiting)
    elif started.error:
        await settle(session, ctx, job)
    elif job.status != FineTuningStatus.QUEUED or job.wanted != Wanted.RUN:
        await settle(session, ctx, job)  # paused or cancelled while its actor started
        after.append(Effect("stop", spec.actor_name))
    else:
        await _running(session, job, spec, placing.node_id)


async def _running(
    session: AsyncSession, job: FineTuningJobRow, spec: TrainingSpec, node_id: str
) -> None:
    first = job.started_at is None
    datacenter_id = spec.datacenter_id
    job.status, job.status_reason = FineTuningStatus.RUNNING, ""
    job.datacenter_id, job.node_id, job.store_uri = datacenter_id, node_id, spec.output_store_uri
    job.attempt, job.event_seq = spec.attempt, 0
    job.started_at = job.started_at or utcnow()
    job.heartbeat_at = utcnow()
    await fine_tuning.add_event(
        session, job,
        f"{'Fine-tuning job started' if first else 'Job resumed'} in {datacenter_id}"
        + (f" from the checkpoint at step {spec.resume_step}" if spec.resume else ""),
        data={"datacenter": datacenter_id, "node": node_id,
              "attempt": spec.attempt, "resume_step": spec.resume_step},
    )  # fmt: skip
    await audit.record(
        session, actor=audit.SYSTEM_CONTROLLER, action="fine_tuning.place",
        org_id=job.org_id, target_type="fine_tuning_job", target_id=job.id,
        details={"datacenter": datacenter_id, "node": node_id, "attempt": spec.attempt},
    )  # fmt: skip


async def _waiting(session: AsyncSession, job: FineTuningJobRow, reason: str) -> None:
    if job.status_reason != reason:
        job.status_reason = reason
        await fine_tuning.add_event(session, job, f"Waiting for capacity: {reason}", level="warn")


async def _spec(
    session: AsyncSession, ctx: Context, job: FineTuningJobRow, datacenter_id: str, store_uri: str
) -> TrainingSpec:
    kek = await files.organisation_kek(
        session, master_key=ctx.master_key, org_id=job.org_id, create=False
    )
    training = [await _file_grant(session, entry["file_id"], kek) for entry in job.training_files]
    validation = None
    if job.validation_file_id:
        validation = await _file_grant(session, job.validation_file_id, kek)
    output_key = fine_tuning.job_data_key(job, kek)
    last = await _last_checkpoint(session, job)
    resume = None
    if last is not None:  # read from where it was sealed, maybe another datacenter's store
        resume = ObjectGrant(last.store_uri, last.object_key, last.object_id, output_key,
                             last.sha256)  # fmt: skip
    artifact = (
        await session.execute(
            select(ModelArtifactRow).where(ModelArtifactRow.model_id == job.base_model_id)
        )
    ).scalars().first()  # fmt: skip
    assert artifact is not None
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
        threads=_threads(job.cpus),
        resume=resume,
        resume_step=last.step if last is not None and resume is not None else 0,
        watts_per_core=ctx.defaults.watts_per_core,
        model_roots=ctx.defaults.model_roots,
        attempt=job.attempt + 1,
        method=job.method,
        grader=job.resolved.get("grader"),
        init_adapter=await _init_adapter(session, job, kek),
    )


def _threads(cpus: float) -> int:
    """A job's worker computes on as many threads as the CPUs it reserved, never more.
    Torch's operations wait at each step for their slowest thread: a worker with more
    threads than its cores, beside an engine that serves (it yields the CPU to engines),
    has one thread starved and every step waits on it. Measured on 2 cores beside one busy
    process: a step 10x slower on 2 threads than on 1 (docs/benchmarks.md)."""
    return max(1, int(cpus))


async def _last_checkpoint(
    session: AsyncSession, job: FineTuningJobRow
) -> FineTuningCheckpointRow | None:
    query = (
        select(FineTuningCheckpointRow)
        .where(FineTuningCheckpointRow.job_id == job.id)
        .order_by(FineTuningCheckpointRow.step.desc())
    )
    return (await session.execute(query)).scalars().first()


async def _init_adapter(
    session: AsyncSession, job: FineTuningJobRow, kek: bytes
) -> ObjectGrant | None:
    """A cold-start model's adapter, sealed by the job that trained it."""
    start = job.resolved.get("start_from")
    if not start:
        return None
    parent = await session.get(FineTuningJobRow, start["job_id"])
    assert parent is not None
    return ObjectGrant(
        parent.store_uri or "", training_object_key(parent.id, "adapter-peft.tar"),
        training_object_id(parent.id, "adapter-peft.tar"),
        fine_tuning.job_data_key(parent, kek),
        start.get("peft_sha256"),
    )  # fmt: skip


async def _file_grant(session: AsyncSession, file_id: str, kek: bytes) -> ObjectGrant:
    row = await session.get(FileRow, file_id)
    assert row is not None
    data_key = unwrap(kek, bytes.fromhex(row.wrapped_key), row.id)
    return ObjectGrant(row.store_uri, row.object_key, row.id, data_key, row.sha256)
