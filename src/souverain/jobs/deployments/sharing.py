"""Fine-tuned models served by shared replicas of their base: which adapter goes where.

A deployment of a fine-tuned model is `dedicated` (replicas of its own, the base started
with its one adapter) or `shared`: it has no replica of its own, and the controller puts
its adapter on the replicas of its base's deployments instead, beside other adapters, of
its own organisation and of others. The gateway then picks the adapter per request from the
authenticated model id (gateway/dialects.py); the client never names one.

Rules:
- a base deployment hosts an adapter if it is the platform's or the adapter owner's own
  (an organisation's private deployment never serves another's model), on llama.cpp's
  llama-server: one rule for every selection, catalog/hosting.py;
- an adapter goes only to a replica whose datacenter its owner's placement policy allows
  (the shared deployment's constraints ∩ its organisation's ceiling), so a replica's set
  depends on where it runs (`wanted_at`);
- a ready replica whose set is no longer the one wanted takes the new set while it serves
  where its engine can (souverain's llama-server: live_adapters.py), and a starting one
  there takes it once ready, unless it must drop an adapter at once; otherwise it is
  replaced, rolling: a new replica with the new set is placed, and the old one stops once
  enough new ones are ready (`to_stop`), so every model keeps answering;
- one adapter per model on a replica, however many shared deployments name it; at most
  `PER_REPLICA` adapters on a replica and `PER_ORG` of one organisation's: first those
  the replica holds already, then the oldest shared deployments (one past a cap waits, its
  status says why; an adapter woken after an idle unload never evicts one in use);
- a shared deployment scaled to zero is unloaded: by its owner (replicas 0), or by the
  controller while nobody asks for it (minimum 0, maximum 1: idle_adapters.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.catalog.hosting import SHARED as SHARED
from souverain.catalog.hosting import can_host as can_host
from souverain.catalog.hosting import serves_org
from souverain.core.fleet import ObjectGrant
from souverain.core.policy import Policy, Site, exclusion
from souverain.core.status import ReplicaState
from souverain.db.tables import DeploymentRow, ModelAdapterRow, ModelRow, ReplicaRow

DEDICATED = "dedicated"
PER_REPLICA = 32  # adapters one shared replica holds at most
PER_ORG = 8  # of which one organisation's, at most


@dataclass(frozen=True)
class Hosted:
    """A shared deployment's adapter, as a base deployment's reconciler sees it."""

    model_id: str
    deployment_id: str
    org_id: str | None
    policy: Policy
    grant: ObjectGrant | None
    error: str = ""  # why it cannot be loaded anywhere (erased, its key gone)


def is_active(deployment: DeploymentRow) -> bool:
    """A shared deployment whose adapter should be loaded now (`replicas` 1; an autoscaled
    one at 0 is idle, its adapter unloaded until a request asks for it: idle_adapters.py)."""
    return not deployment.deleted and deployment.replicas > 0


async def shared_of(
    session: AsyncSession, base: DeploymentRow
) -> list[tuple[DeploymentRow, ModelRow]]:
    """The shared deployments `base` may host: fine-tuned models of its model, owned by
    its organisation (or anyone's, for a platform deployment): `hosting.adapter_hosts`'s
    rule seen from the base, which the caller has found `can_host`."""
    query = (
        select(DeploymentRow, ModelRow)
        .join(ModelRow, ModelRow.id == DeploymentRow.model_id)
        .where(
            DeploymentRow.sharing == SHARED,
            DeploymentRow.deleted.is_(False),
            ModelRow.base_model_id == base.model_id,
        )
        .order_by(DeploymentRow.created_at, DeploymentRow.id)  # the oldest first, for caps
    )
    found = [(d, m) for d, m in (await session.execute(query)).all() if is_active(d)]
    return [(d, m) for d, m in found if serves_org(base, d.org_id)]


def wanted_at(site: Site, hosted: Iterable[Hosted], holding: Sequence[str] = ()) -> tuple[str, ...]:
    """The adapters a replica at `site` should hold, in a stable order: each model once,
    within the caps, those it is `holding` already first, then in `hosted`'s order (the
    oldest shared deployments first), so an adapter coming back never evicts one in use."""
    kept = set(holding)
    ranked = [h for h in hosted if h.model_id in kept] + [
        h for h in hosted if h.model_id not in kept
    ]
    chosen: dict[str, None] = {}
    per_org: dict[str | None, int] = {}
    for h in ranked:
        if h.error or h.model_id in chosen or exclusion(h.policy, site) is not None:
            continue
        if len(chosen) >= PER_REPLICA or per_org.get(h.org_id, 0) >= PER_ORG:
            continue
        chosen[h.model_id] = None
        per_org[h.org_id] = per_org.get(h.org_id, 0) + 1
    return tuple(sorted(chosen))


def held(replica: ReplicaRow) -> tuple[str, ...]:
    """The adapters a replica was started with (loaded or refused), in the engine's order."""
    return tuple(str(entry["model"]) for entry in replica.adapters or ())


def must_unload(
    replica: ReplicaRow, site: Site, hosted: Iterable[Hosted], erased: Set[str]
) -> str | None:
    """Why a replica may not keep one of its adapters a moment longer (None: it may serve
    on until its replacement is ready): the adapter was erased with its organisation's
    keys, or its owner's policy (the shared deployment's constraints ∩ its organisation's
    ceiling) now excludes the replica's site."""
    kept = set(held(replica))
    if kept & erased:
        return "an adapter it holds was erased"
    allowed = {h.model_id for h in hosted if not h.error and exclusion(h.policy, site) is None}
    for h in hosted:
        if h.model_id in kept and h.model_id not in allowed:
            return f"its owner's policy no longer allows {h.model_id} at {site.id}"
    return None


def to_stop(
    stale: Sequence[ReplicaRow], fresh: Sequence[ReplicaRow], desired: int,
    *, urgent: Set[str] = frozenset(),
) -> list[ReplicaRow]:  # fmt: skip
    """Replicas with an outdated set that can stop now: any that is not serving or is
    `urgent` (by id: it holds an adapter it may not keep, `must_unload`; its clear copy
    goes now, whatever the others wait for), and the serving ones once as many replicas
    with the wanted set are ready as are wanted."""
    ready = sum(1 for r in fresh if r.state == ReplicaState.READY)
    if ready >= desired:
        return list(stale)
    return [r for r in stale if r.state != ReplicaState.READY or r.id in urgent]


async def erased(session: AsyncSession, replicas: Iterable[ReplicaRow]) -> set[str]:
    """The adapters these replicas hold whose sealed object's row is gone (crypto-erasure
    of their organisation, or their model deleted)."""
    ids = {model_id for replica in replicas for model_id in held(replica)}
    if not ids:
        return set()
    query = select(ModelAdapterRow.model_id).where(ModelAdapterRow.model_id.in_(ids))
    return ids - set((await session.execute(query)).scalars())


def entries(model_ids: Iterable[str]) -> list[dict[str, object]]:
    """A new replica's `adapters` column: asked for, not yet reported by the node."""
    return [{"model": model_id, "error": None} for model_id in model_ids]


@dataclass(frozen=True)
class Served:
    """Where a shared deployment's adapter is, from the replicas of its base."""

    ready: int  # ready replicas that loaded it
    starting: int  # replicas asked to load it, not ready yet
    refused: str  # a node's reason for refusing it, if one did
    full: str = ""  # why a ready replica without it cannot take it (a cap), if so


def served(
    model_id: str, replicas: Iterable[ReplicaRow], org_models: Set[str] = frozenset()
) -> Served:
    """Where the adapter is; `org_models`: its organisation's shared models (for the cap)."""
    ready = starting = 0
    refused = full = ""
    for replica in replicas:
        entry = next((e for e in replica.adapters or () if e.get("model") == model_id), None)
        if entry is None:
            full = full or _full(replica, org_models)
            continue
        if entry.get("error"):
            refused = str(entry["error"])
        elif replica.state == ReplicaState.READY and entry.get("error") == "":
            ready += 1
        elif replica.state == ReplicaState.STARTING:
            starting += 1
    return Served(ready, starting, refused, full)


def _full(replica: ReplicaRow, org_models: Set[str]) -> str:
    if replica.state != ReplicaState.READY:
        return ""
    return cap_reached(set(held(replica)), org_models)


def cap_reached(kept: Set[str], org_models: Set[str]) -> str:
    """Why a replica holding `kept` takes no other adapter of the organisation whose shared
    models are `org_models` (`PER_REPLICA`, `PER_ORG`); "" when it has room."""
    if len(kept) >= PER_REPLICA:
        return f"the shared replicas of its base hold {PER_REPLICA} adapters already"
    if len(kept & org_models) >= PER_ORG:
        return f"its organisation has {PER_ORG} adapters on its base's shared replicas already"
    return ""


async def org_models(session: AsyncSession, org_id: str | None) -> set[str]:
    """The models of an organisation's shared deployments."""
    query = select(DeploymentRow.model_id).where(
        DeploymentRow.sharing == SHARED,
        DeploymentRow.deleted.is_(False),
        DeploymentRow.org_id == org_id,
    )
    return set((await session.execute(query)).scalars())


async def host_replicas(session: AsyncSession, model: ModelRow) -> list[ReplicaRow]:
    """The replicas of the deployments of a fine-tuned model's base."""
    query = (
        select(ReplicaRow)
        .join(DeploymentRow, DeploymentRow.id == ReplicaRow.deployment_id)
        .where(DeploymentRow.model_id == model.base_model_id, DeploymentRow.deleted.is_(False))
    )
    return list((await session.execute(query)).scalars())


def shared_status(found: Served) -> tuple[str, str]:
    """A shared deployment's status and reason."""
    if found.ready:
        return "ready", f"served by {found.ready} shared replica(s) of its base"
    if found.refused:
        return "failed", f"the adapter was refused: {found.refused}"
    if found.starting:
        return "starting", "a shared replica of its base is starting with the adapter"
    if found.full:
        return "pending", f"waiting: {found.full} (loaded adapters keep their room)"
    return "pending", "waiting for a replica of its base model that may hold the adapter"
