"""What a deployment served over a window: requests, tokens, cost and energy, in all and per
replica, and on a shared replica per adapter, as far as the caller may see.

Nothing is split here: a replica's measured energy is split among every request it settled
in an interval by weighted tokens, whatever model each asked for (`jobs/energy.py`), so a
shared replica's energy goes to the base model's callers and to each adapter's in
proportion to their tokens, as on a dedicated replica. A request's usage record is its
caller's, and only a fine-tuned model's own organisation reaches it, so an adapter's
requests and energy are its owner's. Each record names the deployment it was served for
(a fine-tuned model's shared deployment, not the base whose replica ran it) and the
replica: a shared deployment's usage is its records, and a base replica's splits by the
deployment its records name.

Who sees what: the records the usage reports show the caller (`usage_reports.seen_by`:
operators every one; a tenant its organisation's, its project's for a project key, its
own for a key without the manage or audit scope). Of a shared replica, a tenant sees its
own adapters one by one and nothing of other organisations' use, not even a total: a
platform deployment is visible to every tenant, and a total of the rest, polled, would
show another organisation's traffic as it happens.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, case, func, select, true
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.principal import Principal
from souverain.db.tables import DeploymentRow, ReplicaRow, UsageRecordRow, utcnow
from souverain.jobs.deployments import service
from souverain.metering.usage import OPEN
from souverain.metering.usage_reports import seen_by

MAX_HOURS = 31 * 24  # a window reads raw records (the rollups have no replica): bounded


@dataclass(frozen=True)
class Sums:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    energy_j: float = 0.0  # attributed where the replica's interval has closed, else estimated
    co2e_g: float = 0.0
    energy_estimated: int = 0  # requests whose energy is still the gateway's estimate

    def __add__(self, other: Sums) -> Sums:
        return Sums(*(a + b for a, b in zip(self._values(), other._values(), strict=True)))

    def _values(self) -> tuple[Any, ...]:
        return (self.requests, self.prompt_tokens, self.completion_tokens, self.cost,
                self.energy_j, self.co2e_g, self.energy_estimated)  # fmt: skip


@dataclass(frozen=True)
class AdapterUsage:
    """A fine-tuned model's requests on a shared replica (under its shared deployment)."""

    model_id: str
    deployment_id: str
    sums: Sums


@dataclass
class ReplicaUsage:
    replica_id: str
    model: Sums = Sums()  # requests for the deployment's own model
    adapters: list[AdapterUsage] = field(default_factory=list)


@dataclass(frozen=True)
class DeploymentUsage:
    deployment_id: str
    since: datetime
    until: datetime
    total: Sums  # the requests served for this deployment (its usage records)
    replicas: list[ReplicaUsage]


async def deployment_usage(
    session: AsyncSession, *, principal: Principal, ref: str, hours: int
) -> DeploymentUsage:
    """The deployment's usage over the last `hours`: its own requests in all and per
    replica; for a deployment with replicas, each current replica's adapters too."""
    deployment = await service.get_deployment(session, principal=principal, ref=ref)
    until = utcnow()
    since = until - timedelta(hours=hours)
    window = (UsageRecordRow.created_at >= since, UsageRecordRow.created_at < until,
              UsageRecordRow.status != OPEN)  # fmt: skip
    mine = _mine(principal)
    own = await _grouped(session, [UsageRecordRow.deployment_id == deployment.id, mine, *window])
    total = sum(own.values(), Sums())
    current = await _current(session, deployment.id)
    if not current:  # a shared deployment (or one at zero): where its requests ran
        replicas = _by_replica(own, deployment.id)
    else:
        held = await _grouped(session, [UsageRecordRow.replica_id.in_(current), mine, *window])
        replicas = await _replicas(session, deployment.id, current, held)
    return DeploymentUsage(deployment.id, since, until, total, replicas)


Key = tuple[str | None, str | None]  # (replica, deployment served for)


async def _grouped(session: AsyncSession, where: list[ColumnElement[bool]]) -> dict[Key, Sums]:
    """Sums of the records `where` selects, per replica and deployment."""
    r = UsageRecordRow
    joules = func.coalesce(r.energy_j, r.energy_estimate_j, 0)
    estimated = case((r.energy_j.is_(None), 1), else_=0)
    query = (
        select(
            r.replica_id, r.deployment_id, func.count(),
            *(func.coalesce(func.sum(column), 0) for column in (
                r.prompt_tokens, r.completion_tokens, r.cost, joules, r.co2e_g, estimated)),
        )
        .where(*where)
        .group_by(r.replica_id, r.deployment_id)
    )  # fmt: skip
    return {
        (replica, deployment): Sums(
            int(n), int(p), int(c), float(cost), float(j), float(g), int(estimates)
        )
        for replica, deployment, n, p, c, cost, j, g, estimates in (
            await session.execute(query)
        ).all()
    }


def _mine(principal: Principal) -> ColumnElement[bool]:
    """The records the caller may see one by one, as a condition."""
    conditions = [
        getattr(UsageRecordRow, column).is_(None)
        if value is None
        else getattr(UsageRecordRow, column) == value
        for column, value in seen_by(principal)
    ]
    return and_(true(), *conditions)


async def _current(session: AsyncSession, deployment_id: str) -> list[str]:
    """The deployment's replicas, oldest first."""
    query = (
        select(ReplicaRow.id)
        .where(ReplicaRow.deployment_id == deployment_id)
        .order_by(ReplicaRow.created_at, ReplicaRow.id)
    )
    return list((await session.execute(query)).scalars())


def _by_replica(own: dict[Key, Sums], deployment_id: str) -> list[ReplicaUsage]:
    replicas: dict[str, ReplicaUsage] = {}
    for (replica_id, _), sums in sorted(own.items(), key=lambda item: str(item[0][0])):
        if replica_id is not None:
            found = replicas.setdefault(replica_id, ReplicaUsage(replica_id))
            found.model += sums
    return list(replicas.values())


async def _replicas(
    session: AsyncSession, deployment_id: str, current: list[str], held: dict[Key, Sums]
) -> list[ReplicaUsage]:
    """Each current replica's requests, of the records `held` (the caller's own only):
    the deployment's own model's and each adapter's."""
    adapters: defaultdict[tuple[str, str], Sums] = defaultdict(Sums)
    replicas = {replica_id: ReplicaUsage(replica_id) for replica_id in current}
    for (replica_id, served_for), sums in held.items():
        replica = replicas[str(replica_id)]
        if served_for == deployment_id:
            replica.model += sums
        elif served_for is not None:
            adapters[(replica.replica_id, served_for)] += sums
    models = await _models_of(session, {served_for for _, served_for in adapters})
    for (replica_id, served_for), sums in sorted(adapters.items()):
        replicas[replica_id].adapters.append(
            AdapterUsage(models.get(served_for, "?"), served_for, sums)
        )
    return list(replicas.values())


async def _models_of(session: AsyncSession, deployment_ids: set[str]) -> dict[str, str]:
    if not deployment_ids:
        return {}
    query = select(DeploymentRow.id, DeploymentRow.model_id).where(
        DeploymentRow.id.in_(deployment_ids)
    )
    return {deployment_id: model_id for deployment_id, model_id in await session.execute(query)}
