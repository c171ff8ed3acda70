"""Which base deployments may host a fine-tuned model's adapter: one rule, one query.

A fine-tuned model served by shared replicas (jobs/deployments/sharing.py) has its adapter
loaded by replicas of deployments of its base model. A deployment hosts an organisation's
adapter when:
- it is a deployment of that base model, not deleted, not itself a shared one;
- its replicas can hold adapters at all (`can_host`: a base model on llama.cpp's
  llama-server; llama-cpp-python serves one adapter fixed at start, embeddings none);
- it is the platform's (it serves any organisation's adapters) or the adapter owner's
  own (`serves_org`: an organisation's private deployment never serves another's model).

A deployment scaled to zero (stopped, or idle at minimum 0) is still a host: whether it
is worth waking or reconciling is each caller's question (the succeeded job's serving,
the controller's wake-up, the gateway's wake list). The rule sits in the catalog, below
jobs/, because the gateway's wake list applies it too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.db.tables import DeploymentRow, ModelRow

SHARED = "shared"  # a deployment whose model's adapter rides on its base's replicas


class Owner(NamedTuple):
    """Whose adapter, of which base: a fine-tuned model's base model and organisation."""

    base_model_id: str
    org_id: str | None


def hosts_adapters(engine: str, engine_args: Mapping[str, object]) -> bool:
    """Whether a base model's deployment can hold fine-tuned models' adapters: on llama.cpp's
    llama-server (llama-cpp-python serves one adapter, fixed at start), not for embeddings."""
    return (
        engine == "llamacpp"
        and engine_args.get("runtime") != "llama-cpp-python"
        and not engine_args.get("embedding")
    )


def can_host(deployment: DeploymentRow, model: ModelRow) -> bool:
    """Whether a deployment's replicas may hold adapters: a base model's, on llama.cpp's
    llama-server (llama-cpp-python serves one adapter, fixed at start)."""
    return model.base_model_id is None and hosts_adapters(deployment.engine, deployment.engine_args)


def serves_org(host: DeploymentRow, org_id: str | None) -> bool:
    """Whether a deployment that holds adapters may hold this organisation's: the
    platform's holds anyone's, an organisation's only its own."""
    return host.org_id is None or host.org_id == org_id


async def adapter_hosts(
    session: AsyncSession, owners: Iterable[Owner]
) -> dict[Owner, list[DeploymentRow]]:
    """For each owner, the deployments that may host its adapters (the rule above), the
    oldest first; one query for them all."""
    wanted = set(owners)
    if not wanted:
        return {}
    query = (
        select(DeploymentRow, ModelRow)
        .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
        .where(
            DeploymentRow.model_id.in_({owner.base_model_id for owner in wanted}),
            DeploymentRow.deleted.is_(False),
            DeploymentRow.sharing != SHARED,
        )
        .order_by(DeploymentRow.created_at, DeploymentRow.id)
    )
    holding = [d for d, m in (await session.execute(query)).all() if can_host(d, m)]
    return {
        owner: [
            d for d in holding if d.model_id == owner.base_model_id and serves_org(d, owner.org_id)
        ]
        for owner in wanted
    }
