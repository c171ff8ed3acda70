"""What a succeeded fine-tuning job becomes: a model of its organisation, named
`ft:<base>:<org>:<suffix>:<job>`, with the base model's artifact and the job's adapter,
its lineage (data, hyperparameters, compute, energy, CO2e, where it ran; evaluations
before and after for reinforcement), the capabilities it learned, and a deployment: on
the shared replicas of its base wherever a deployment of the base will serve its adapter
(running, starting or scaled to zero: no engine started for it; a request waits while
the adapter loads), else of one replica of its own (`serving.py`)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.fleet import SealedObject
from souverain.core.ids import new_id
from souverain.db.jobs import FileRow, FineTuningEventRow, FineTuningJobRow
from souverain.db.tables import (
    DatacenterRow,
    DeploymentRow,
    ModelAdapterRow,
    ModelArtifactRow,
    ModelRow,
    utcnow,
)
from souverain.evidence import audit
from souverain.jobs.deployments import sharing
from souverain.jobs.fine_tuning import service as fine_tuning
from souverain.jobs.fine_tuning import serving


async def register_model(
    session: AsyncSession,
    job: FineTuningJobRow,
    adapter: SealedObject,
    peft: SealedObject,
    *,
    serve_cpus: float,
) -> tuple[ModelRow, serving.Serving]:
    """The succeeded job as a model of its organisation: the base model's artifact plus
    the job's sealed adapter, its lineage, and a deployment; with how that deployment is
    served (`shared`, and how its base serves it, or `dedicated`)."""
    base = await session.get(ModelRow, job.base_model_id)
    assert base is not None
    artifact = (
        (
            await session.execute(
                select(ModelArtifactRow).where(ModelArtifactRow.model_id == base.id)
            )
        )
        .scalars()
        .first()
    )
    assert artifact is not None
    lineage = await _lineage(session, job, base, artifact, peft)
    model = ModelRow(
        id=new_id("mdl"),
        name=fine_tuning.fine_tuned_name(job),
        owner_org_id=job.org_id,
        engine=base.engine,
        capabilities=_capabilities(base, job),
        context_length=base.context_length,
        description=f"{base.name} fine-tuned by {job.id} ({job.method}, LoRA, {job.step} steps)",
        base_model_id=base.id,
        lineage=lineage,
    )
    session.add(model)
    await session.flush()
    _add_parts(session, job, model, artifact, adapter)
    deployment = _deployment(job, model, base, serve_cpus=serve_cpus)
    served = await serving.sharing_for(session, job, base, deployment)
    deployment.sharing = served.sharing
    if served.sharing == sharing.SHARED:
        deployment.status_reason = _WAITING[served.how]
        # unloaded after its idle period without a request, loaded by the next one
        deployment.min_replicas, deployment.max_replicas = 0, 1  # (idle_adapters.py)
    session.add(deployment)
    await audit.record(
        session, actor=audit.SYSTEM_CONTROLLER, action="model.fine_tuned",
        org_id=job.org_id, target_type="model", target_id=model.id,
        details={"job": job.id, "base": base.name, "adapter_sha256": adapter.sha256},
    )  # fmt: skip
    await session.flush()
    return model, served


_WAITING = {  # a shared deployment's reason until the controller's first round
    serving.READY: "a shared replica of its base is loading the adapter",
    serving.STARTING: "a shared replica of its base is starting with the adapter",
    serving.WAKING: "waiting for a replica of its base to start with the adapter",
}


def _add_parts(
    session: AsyncSession,
    job: FineTuningJobRow,
    model: ModelRow,
    artifact: ModelArtifactRow,
    adapter: SealedObject,
) -> None:
    """The new model's base weights and its sealed adapter."""
    session.add(ModelArtifactRow(
        id=new_id("art"), model_id=model.id, uri=artifact.uri, sha256=artifact.sha256,
        size_bytes=artifact.size_bytes, format=artifact.format, license=artifact.license,
        source=f"{artifact.source} + LoRA adapter of {job.id}",
    ))  # fmt: skip
    session.add(ModelAdapterRow(
        model_id=model.id, org_id=job.org_id, format="gguf-lora", store_uri=job.store_uri or "",
        object_key=adapter.object_key, object_id=adapter.object_id, wrapped_key=job.wrapped_key,
        sha256=adapter.sha256, size_bytes=adapter.size, datacenter_id=job.datacenter_id or "",
    ))  # fmt: skip


def _deployment(
    job: FineTuningJobRow, model: ModelRow, base: ModelRow, *, serve_cpus: float
) -> DeploymentRow:
    """The new model's deployment of one replica (of its own, or its adapter loaded on a
    shared replica of its base), where the job's jurisdictions allow."""
    return DeploymentRow(
        id=new_id("dep"), name=f"ft-{job.id[-12:]}", model_id=model.id, org_id=job.org_id,
        engine=base.engine, replicas=1, datacenters=[], cpus=serve_cpus, gpus=0,
        engine_args={}, placement={"jurisdictions": job.jurisdictions} if job.jurisdictions else {},
        strategy="spread", status="pending", status_reason="", deleted=False,
        # trained to reason under the reasoning prompt: answers with it by default (the
        # gateway reads it per model, so a shared deployment carries it too)
        reasoning_default="reasoning" in model.capabilities, sharing=sharing.DEDICATED,
    )  # fmt: skip


async def _lineage(
    session: AsyncSession,
    job: FineTuningJobRow,
    base: ModelRow,
    artifact: ModelArtifactRow,
    peft: SealedObject,
) -> dict[str, Any]:
    files_used = await _files_used(session, job)
    dc = await session.get(DatacenterRow, job.datacenter_id) if job.datacenter_id else None
    intensity = dc.carbon_intensity if dc is not None else 0.0
    energy_kwh = job.energy_j / 3.6e6
    evaluations = await _evaluations(session, job)
    extra: dict[str, Any] = {}
    if job.method == "reinforcement":
        extra = {
            "grader": job.resolved.get("grader"),
            "started_from": job.resolved.get("start_from"),
            # the last evaluation's `change`: paired before → after with 95 % intervals
            "evaluation": {
                "before": evaluations[0],
                "after": evaluations[-1],
                "change": evaluations[-1].get("change"),
                # the same by template set: trained on, or never seen (generalisation)
                "change_by_templates": evaluations[-1].get("change_by_templates"),
            }
            if len(evaluations) >= 2
            else None,
        }
    return extra | {
        "job_id": job.id,
        "method": job.method,
        "adapter": {"type": "lora", "rank": job.resolved.get("lora_rank"),
                    "alpha": job.resolved.get("lora_alpha"), "peft_sha256": peft.sha256},
        "base_model": {"id": base.id, "name": base.name, "artifact": artifact.uri,
                       "sha256": artifact.sha256, "license": artifact.license},
        "data": files_used,
        "hyperparameters": job.resolved,
        "steps": job.step,
        "tokens_seen": job.trained_tokens,
        "wall_s": round(job.wall_s, 1),
        "cpu_hours": round(job.cpu_seconds / 3600, 4),
        "gpu_hours": 0.0,
        "energy_kwh": round(energy_kwh, 6),
        "energy_source": job.energy_source,
        "co2e_g": round(energy_kwh * intensity, 4),
        "carbon_intensity_g_per_kwh": intensity,
        "datacenter": job.datacenter_id,
        "country": dc.country if dc is not None else None,
        "operator_country": dc.operator_country if dc is not None else None,
        "certifications": sorted(dc.certifications) if dc is not None else [],
        "train_loss": job.train_loss,
        "trained_at": utcnow().isoformat(),
    }  # fmt: skip


async def _files_used(session: AsyncSession, job: FineTuningJobRow) -> list[dict[str, Any]]:
    """The job's training and validation files as the lineage records them."""
    files_used = []
    for entry in [
        *job.training_files,
        *([{"file_id": job.validation_file_id, "weight": None}] if job.validation_file_id else []),
    ]:
        row = await session.get(FileRow, entry["file_id"])
        if row is not None:
            files_used.append({
                "file_id": row.id, "role": "validation" if row.id == job.validation_file_id else "training",
                "sha256": row.sha256, "bytes": row.bytes, "samples": row.num_lines,
                "weight": entry["weight"], "datacenter": row.datacenter_id,
            })  # fmt: skip
    return files_used


async def _evaluations(session: AsyncSession, job: FineTuningJobRow) -> list[Any]:
    """The evaluations the job reported, oldest first (before training, then after)."""
    return [
        e.data["evaluation"]
        for e in (
            await session.execute(
                select(FineTuningEventRow)
                .where(FineTuningEventRow.job_id == job.id)
                .order_by(FineTuningEventRow.seq)
            )
        ).scalars()
        if e.data and "evaluation" in e.data
    ]


def _capabilities(base: ModelRow, job: FineTuningJobRow) -> list[str]:
    """The base model's, and `reasoning` when the job taught it to think first: the
    magistral grader, or supervised data whose replies are mostly `<think>` first."""
    capabilities = [c for c in base.capabilities if c != "embeddings"]
    grader = job.resolved.get("grader") or {}
    thinks = (
        grader.get("type") == "magistral" or (job.resolved.get("thinking_fraction") or 0) >= 0.5
    )
    if thinks and "reasoning" not in capabilities:
        capabilities.append("reasoning")
    return capabilities
