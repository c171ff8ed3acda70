"""Model cards in the shape of the EU AI Act's Annex XI technical documentation
(general-purpose AI models, Section 1): what the model is, where its data came from, how
it was trained, with what compute and energy, and where. For a fine-tuned model every
figure comes from its lineage, written by the job that trained it; for a registered
model, from the registry."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog import evaluations, models
from souverain.core.principal import Principal
from souverain.db.tables import ModelArtifactRow, ModelRow


async def card(session: AsyncSession, *, principal: Principal, ref: str) -> dict[str, Any]:
    model = await models.get_model(session, principal=principal, ref=ref)
    artifact = (
        (
            await session.execute(
                select(ModelArtifactRow).where(ModelArtifactRow.model_id == model.id)
            )
        )
        .scalars()
        .first()
    )
    lineage = model.lineage or {}
    base = lineage.get("base_model") or {}
    return {
        "model": {"id": model.id, "name": model.name, "owner_org_id": model.owner_org_id},
        "1_general_description": {
            "description": model.description,
            "tasks": list(model.capabilities),
            "architecture": "LoRA adapter on " + base.get("name", "?") if lineage else model.engine,
            "context_length": model.context_length,
            "license": base.get("license") or (artifact.license if artifact else None),
            "release_date": model.created_at.date().isoformat() if model.created_at else None,
            "distribution": "served by souverain (/v1), weights not distributed",
        },
        "2_development": _development(lineage, artifact),
        "3_evaluation": await _evaluation(session, principal=principal, model=model),
    }  # fmt: skip


def _development(lineage: dict[str, Any], artifact: ModelArtifactRow | None) -> dict[str, Any]:
    """Annex XI 2: how the model was made (a fine-tune's lineage, or the artefact's source)."""
    return {
        "base_model": lineage.get("base_model") or None,
        "design": {
            "method": lineage.get("method"),
            "adapter": lineage.get("adapter"),
            "hyperparameters": lineage.get("hyperparameters"),
            "steps": lineage.get("steps"),
            "tokens_seen": lineage.get("tokens_seen"),
            "final_train_loss": lineage.get("train_loss"),
            **({"grader": lineage.get("grader"), "started_from": lineage.get("started_from")}
               if lineage.get("method") == "reinforcement" else {}),
        } if lineage else None,
        "training_data": {
            "provenance": "files uploaded by the owning organisation (purpose fine-tune); "
            "stored encrypted, decrypted only on the training node, wiped after the job",
            "files": lineage.get("data", []),
        } if lineage else {"provenance": artifact.source if artifact else None},
        "compute": {
            "wall_time_s": lineage.get("wall_s"),
            "cpu_hours": lineage.get("cpu_hours"),
            "gpu_hours": lineage.get("gpu_hours"),
        } if lineage else None,
        "energy": {
            "kwh": lineage.get("energy_kwh"),
            "source": lineage.get("energy_source"),
            "co2e_g": lineage.get("co2e_g"),
            "carbon_intensity_g_per_kwh": lineage.get("carbon_intensity_g_per_kwh"),
        } if lineage else None,
        "where_trained": {
            "datacenter": lineage.get("datacenter"),
            "country": lineage.get("country"),
            "operator_country": lineage.get("operator_country"),
            "certifications": lineage.get("certifications"),
        } if lineage else None,
        "job_id": lineage.get("job_id"),
        "trained_at": lineage.get("trained_at"),
    }  # fmt: skip


async def _evaluation(
    session: AsyncSession, *, principal: Principal, model: ModelRow
) -> dict[str, Any]:
    """pass@1, format rate, mean reward, language consistency on held-out files: before
    and after training (reinforcement jobs with a validation file), and the evaluations
    the reader's organisation ran of this model."""
    return {
        "training": (model.lineage or {}).get("evaluation"),
        "evaluations": [
            {"id": job.id, "file_id": job.training_files[0]["file_id"],
             "grader": job.resolved.get("grader"),
             "finished_at": job.finished_at.isoformat() if job.finished_at else None,
             "result": result}
            for job, result in await evaluations.evaluations_of(
                session, principal=principal, model=model
            )
            if job.status == "succeeded"
        ],
    }  # fmt: skip


def markdown(doc: dict[str, Any]) -> str:
    general, dev = doc["1_general_description"], doc["2_development"]
    lines = [f"# Model card: {doc['model']['name']}", "",
             "Technical documentation after the EU AI Act, Annex XI, Section 1.", "",
             "## 1. General description", ""]  # fmt: skip
    lines += [f"- **{k.replace('_', ' ').capitalize()}**: {v}" for k, v in general.items()]
    lines += ["", "## 2. Development", ""]
    for key, value in [*dev.items(), ("evaluation", doc.get("3_evaluation"))]:
        title = key.replace("_", " ").capitalize()
        if isinstance(value, dict):
            lines += [f"### {title}", ""]
            for k, v in value.items():
                if isinstance(v, list):
                    lines.append(f"- **{k}**:")
                    lines += [f"  - {item}" for item in v]
                else:
                    lines.append(f"- **{k}**: {v}")
            lines.append("")
        else:
            lines.append(f"- **{title}**: {value}")
    return "\n".join(lines) + "\n"
