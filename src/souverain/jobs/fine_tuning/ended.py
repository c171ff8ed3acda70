"""An attempt of a fine-tuning job that ended: its worker stopped, or was lost.

A succeeded job becomes a model of its organisation, with its lineage and its adapter,
deployed at once (on a running replica of its base where one can take the adapter:
outcome.py, serving.py); a paused one waits (or, asked to move, is queued again to carry
on in a datacenter the policy allows); a lost worker sends the job back to `queued`, to
resume from its last checkpoint. Whatever the end, what the attempt used is settled against the
budget. Everything here is written in the apply's transaction; nothing calls Ray.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.fleet import TrainingStatus
from souverain.core.status import FineTuningStatus, Wanted
from souverain.db.jobs import FineTuningJobRow
from souverain.db.tables import utcnow
from souverain.evidence import audit
from souverain.jobs.fine_tuning import budget as training_budget
from souverain.jobs.fine_tuning import service as fine_tuning
from souverain.jobs.fine_tuning import serving
from souverain.jobs.fine_tuning.context import Context
from souverain.jobs.fine_tuning.outcome import register_model


async def settle(session: AsyncSession, ctx: Context, job: FineTuningJobRow) -> None:
    await training_budget.settle(session, job=job, watts_per_core=ctx.defaults.watts_per_core)


def close_attempt(job: FineTuningJobRow) -> None:
    job.cpu_seconds += job.live_cpu_seconds
    job.energy_j += job.live_energy_j
    job.live_cpu_seconds = job.live_energy_j = 0.0


async def lost(session: AsyncSession, ctx: Context, job: FineTuningJobRow) -> None:
    """The actor is gone: killed, or its node left. Resume from the last checkpoint."""
    close_attempt(job)
    if job.wanted == Wanted.CANCEL:
        await finish(session, ctx, job, FineTuningStatus.CANCELLED, "Job cancelled")
        return
    if job.status == FineTuningStatus.PAUSED:
        job.node_id = None
        return
    if job.wanted == Wanted.PAUSE:  # asked to pause (or out of budget): it stays paused
        job.status, job.node_id = FineTuningStatus.PAUSED, None
        await settle(session, ctx, job)
        return
    if job.wanted == Wanted.MOVE:  # its checkpoint is where it carries on from, elsewhere
        job.wanted = Wanted.RUN
    job.status, job.node_id = FineTuningStatus.QUEUED, None
    await fine_tuning.add_event(
        session, job, "The training worker was lost; the job is queued again and will "
        "carry on from its last checkpoint", level="warn",
    )  # fmt: skip
    await settle(session, ctx, job)


async def ended(
    session: AsyncSession, ctx: Context, job: FineTuningJobRow, status: TrainingStatus
) -> None:
    close_attempt(job)
    if job.wanted == Wanted.CANCEL and status.state != "failed":
        # cancelled (or its organisation erased) while it finished: nothing is registered
        await finish(session, ctx, job, FineTuningStatus.CANCELLED, "Job cancelled")
    elif status.state == "paused":
        await _paused(session, ctx, job)
    elif status.state == "cancelled":
        await finish(session, ctx, job, FineTuningStatus.CANCELLED, "Job cancelled")
    elif status.state == "failed":
        job.error = {"code": status.error_code or "training_failed", "message": status.error,
                     "param": "training_file" if status.error_code == "invalid_training_file" else None}  # fmt: skip
        await finish(session, ctx, job, FineTuningStatus.FAILED, f"Job failed: {status.error}",
                     level="error")  # fmt: skip
    else:
        await _succeeded(session, ctx, job, status)


async def _paused(session: AsyncSession, ctx: Context, job: FineTuningJobRow) -> None:
    await settle(session, ctx, job)
    if job.wanted == Wanted.MOVE:
        job.status, job.wanted, job.node_id = FineTuningStatus.QUEUED, Wanted.RUN, None
        await fine_tuning.add_event(session, job, "Checkpointed; queued to move")
    elif job.wanted == Wanted.CANCEL:
        await finish(session, ctx, job, FineTuningStatus.CANCELLED, "Job cancelled")
    else:
        job.status, job.node_id = FineTuningStatus.PAUSED, None
        await fine_tuning.add_event(session, job, f"Job paused at step {job.step}")


async def finish(
    session: AsyncSession,
    ctx: Context,
    job: FineTuningJobRow,
    state: FineTuningStatus,
    message: str,
    *,
    level: str = "info",
) -> None:
    job.status, job.finished_at, job.node_id = state, utcnow(), None
    await settle(session, ctx, job)
    await fine_tuning.add_event(session, job, message, level=level)
    await audit.record(
        session, actor=audit.SYSTEM_CONTROLLER, action=f"fine_tuning.{state}",
        org_id=job.org_id, target_type="fine_tuning_job", target_id=job.id,
        details={"steps": job.step, "cpu_seconds": round(job.cpu_seconds, 1),
                 "energy_j": round(job.energy_j, 1), "error": job.error},
    )  # fmt: skip


async def _succeeded(
    session: AsyncSession, ctx: Context, job: FineTuningJobRow, status: TrainingStatus
) -> None:
    if job.method == "evaluation":
        await finish(session, ctx, job, FineTuningStatus.SUCCEEDED, "The evaluation has completed")
        return
    adapter = next((s for s in status.sealed if s.name == "adapter.gguf"), None)
    peft = next((s for s in status.sealed if s.name == "adapter-peft.tar"), None)
    if adapter is None or peft is None:
        job.error = {
            "code": "export_failed",
            "message": "the adapter was not exported",
            "param": None,
        }
        await finish(session, ctx, job, FineTuningStatus.FAILED,
                     "Job failed: the adapter was not exported", level="error")  # fmt: skip
        return
    model, served = await register_model(
        session, job, adapter, peft, serve_cpus=ctx.defaults.serve_cpus
    )
    job.fine_tuned_model, job.result_model_id = model.name, model.id
    await finish(
        session, ctx, job, FineTuningStatus.SUCCEEDED, "The job has successfully completed"
    )
    await fine_tuning.add_event(
        session, job, f"New fine-tuned model created: {model.name}",
        data={"model": model.name, "sharing": served.sharing},
    )  # fmt: skip
    await fine_tuning.add_event(session, job, _SERVED[served.how or served.sharing])


_SERVED = {  # by how its base serves a shared model (serving.py), or `dedicated`
    serving.READY: "The model is served by a running replica of its base, which loads its "
    "adapter: requests wait for it meanwhile",
    serving.STARTING: "The model is served by a replica of its base that is starting with "
    "its adapter: requests wait for it meanwhile",
    serving.WAKING: "The model is served by a replica of its base once one starts with its "
    "adapter (none runs now: the first request starts one where the base is scaled to zero), "
    "so requests wait for it meanwhile",
    "dedicated": "The model gets a replica of its own (no deployment of its base could take "
    "its adapter where the model may be served): it answers once that replica is ready",
}
