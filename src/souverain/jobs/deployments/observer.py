"""The replica observer: follows every replica's engine with a long poll and writes what
changed at once.

Each replica has one follower task that asks its actor "tell me when your status is newer
than version N". An engine that exits, answers its first generation, or falls into a crash
loop is therefore in the database within milliseconds, where every gateway sees it at its
next change check (`SOUVERAIN_REPLICA_REFRESH_S`). The observer is the only writer of a
replica's observed fields (state, url, node, restarts, reason); the deployment reconciler
reads them. A replica whose actor no longer exists is marked `lost`; the reconciler
replaces it. Entering and leaving `failed` are audited.
"""

from __future__ import annotations

import asyncio
import logging

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.fleet import ReplicaStatus
from souverain.core.status import ReplicaState
from souverain.db.tables import DeploymentRow, ReplicaRow, utcnow
from souverain.evidence import audit
from souverain.jobs.energy import EnergyAccountant
from souverain.jobs.facade import ClusterFacade

log = logging.getLogger(__name__)


class ReplicaObserver:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        cluster: ClusterFacade,
        *,
        energy: EnergyAccountant,
        poll_s: float = 10.0,
        scan_s: float = 0.5,
    ) -> None:
        self._sessions = sessions
        self._cluster = cluster
        self._energy = energy
        self._poll_s = poll_s
        self._scan_s = scan_s
        self._followers: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Follow every replica row, forever (cancelled when the controller stops leading)."""
        try:
            while True:
                await self.scan()
                await asyncio.sleep(self._scan_s)
        finally:
            for task in self._followers.values():
                task.cancel()
            await asyncio.gather(*self._followers.values(), return_exceptions=True)
            self._followers.clear()

    async def scan(self) -> None:
        async with self._sessions() as session:
            rows = (
                await session.execute(
                    select(ReplicaRow).where(ReplicaRow.state != ReplicaState.LOST)
                )
            ).scalars()
            wanted = {row.id: row for row in rows}
        for replica_id in list(self._followers):
            task = self._followers[replica_id]
            if replica_id not in wanted or task.done():
                task.cancel()
                del self._followers[replica_id]
        for replica_id, followed in wanted.items():
            if replica_id not in self._followers:
                self._followers[replica_id] = asyncio.create_task(self._follow(followed))

    async def _follow(self, replica: ReplicaRow) -> None:
        version = 0
        while True:
            try:
                status = await self._cluster.watch_replica(
                    replica.actor_name, version, self._poll_s
                )
            except Exception:
                log.exception("watching replica %s failed; retrying", replica.id)
                await asyncio.sleep(1.0)
                continue
            if status is None:
                await self._write(replica.id, None)
                return
            self._energy.observe(replica, status)
            if status.version != version:
                if not await self._write(replica.id, status):
                    return  # the row is gone
                version = status.version
            elif status.version == 0:  # the actor is not answering (restarting, node lost)
                await asyncio.sleep(1.0)

    async def _write(self, replica_id: str, status: ReplicaStatus | None) -> bool:
        """Write the observed status; False when the replica row no longer exists."""
        async with self._sessions.begin() as session:
            row = await session.get(ReplicaRow, replica_id)
            if row is None:
                return False
            changes = observed_fields(row, status)
            if not changes:
                return True
            await session.execute(
                update(ReplicaRow)
                .where(ReplicaRow.id == replica_id)
                .values(**changes, updated_at=utcnow())
            )
            await self._audit(session, row, changes)
        if status is None:
            log.warning("replica %s vanished from the cluster; it will be replaced", replica_id)
        elif changes.get("state") == "failed":
            log.error("replica %s failed: %s", replica_id, status.error)
        return True

    async def _audit(
        self, session: AsyncSession, row: ReplicaRow, changes: dict[str, object]
    ) -> None:
        new_state = changes.get("state")
        if new_state == "failed" or (row.state == "failed" and new_state == "ready"):
            action = "replica.failed" if new_state == "failed" else "replica.recovered"
            org_id = await session.scalar(
                select(DeploymentRow.org_id).where(DeploymentRow.id == row.deployment_id)
            )
            details: dict[str, object] = {"deployment": row.deployment_id}
            if new_state == "failed":
                details["reason"] = str(changes.get("reason", ""))[:500]
            await audit.record(
                session,
                actor=audit.SYSTEM_CONTROLLER,
                action=action,
                org_id=org_id,
                target_type="replica",
                target_id=row.id,
                details=details,
            )


def observed_fields(row: ReplicaRow, status: ReplicaStatus | None) -> dict[str, object]:
    """What differs between the row and what the actor reports (None: the actor is gone)."""
    if status is None:
        wanted: dict[str, object] = {
            "state": ReplicaState.LOST,
            "url": None,
            "reason": "replica actor gone",
        }
    else:
        wanted = {
            "state": status.state,
            "url": status.url if status.state == "ready" else None,
            "node_id": status.node_id or row.node_id,
            "engine_restarts": status.restarts,
            "reason": status.error,
        }
        if status.runtime is not None:
            wanted |= {"runtime": status.runtime, "slots": status.slots}
        if status.prompt_overhead is not None:
            fixed, per_message = status.prompt_overhead
            wanted |= {"prompt_overhead_fixed": fixed, "prompt_overhead_per_message": per_message}
        if status.adapters:  # a shared replica's, once the node checked them
            wanted["adapters"] = [
                {"model": a.model_id, "error": a.error, "lora": a.lora_id} for a in status.adapters
            ]
    return {key: value for key, value in wanted.items() if getattr(row, key) != value}
