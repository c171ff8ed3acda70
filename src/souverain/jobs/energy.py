"""The energy accountant: turns each replica's cumulative energy into closed intervals,
attributed to the requests settled in them, the rest kept as idle energy.

The replica observer hands it each replica's latest reading, at least twice an interval;
every `interval_s` (and when a replica goes away) it closes the replica's interval at its
last reading: measured = last reading - first reading, split by `energy.attribution.attribute`
among the requests settled by the time of that last reading. A request settled after it
belongs to the next interval: its energy is in readings not taken yet, so closing at "now"
would hand it a share of an interval that never saw it (zero joules, as readings come
only with each long poll).
A request's settlement reaches the database through its server's usage journal
(`gateway/journal`), a few milliseconds after the moment it records, seconds when the
database is busy. So an interval that is due is cut at its last reading, and written
`settle_s` later (`energy_settle_s`): the requests settled before the cut are in the
database by then, and the energy their work put in that reading is theirs, not idle
energy, with the interval after it, which never saw their work, leaving them zero.
If the actor restarts, its counter starts again from zero; the interval carries on from
where it was. Energy between the last close and a controller change-over is not seen.
A status the controller made up because the actor did not answer (`core.fleet.
unanswered_status`) carries no reading and is skipped: its 0 J, taken for a restarted
counter, would count everything read before it a second time.

A replica's start (placement to ready: the engine's process, the model's load) is its
owner's, not the first requests': a replica first seen starting is followed until its
first `ready` reading, and what its counter (cumulative since the actor started) holds
then is the start's energy; its interval is not closed meanwhile, so nothing of the start
is counted twice. It is written apart (`metering.energy.record_startup`: an interval of
kind `startup`, charged to the owner's energy budgets) and the serving intervals begin
there, with the engine process's CPU and wall-clock seconds from its spawn to that ready
(`ReplicaStatus.start_cpu_s`, read by the node's supervisor). Charging it to the requests
that woke the replica would tell a tenant, through its own energy, whether another had used
a shared model lately. A replica first seen already
ready (adopted after a change-over) has no start to account: its counter holds more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from souverain.core.fleet import ReplicaStatus, carries_reading
from souverain.db.tables import ReplicaRow, utcnow
from souverain.energy.attribution import attribute, weight
from souverain.metering import energy

log = logging.getLogger(__name__)


@dataclass
class OpenInterval:
    replica_id: str
    deployment_id: str
    datacenter_id: str
    source: str
    started_at: datetime
    start_j: float
    last_j: float
    read_at: datetime  # when `last_j` was read
    cut: tuple[datetime, float] | None = None  # the reading it closes at, once due


@dataclass(frozen=True)
class StartUp:
    """A replica's start, from its placement to its first ready reading."""

    replica_id: str
    deployment_id: str
    datacenter_id: str
    source: str
    placed_at: datetime
    ready_at: datetime
    energy_j: float
    cpu_s: float | None = None  # the engine process's, spawn to ready (the node's reading)
    engine_s: float | None = None  # wall clock, spawn to ready


class EnergyAccountant:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        *,
        interval_s: float,
        prompt_weight: float,
        completion_weight: float,
        settle_s: float = 0.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._interval_s = interval_s
        self._settle_s = settle_s  # a cut is written this long after its reading
        self._weights = (prompt_weight, completion_weight)
        self._clock = clock
        self._open: dict[str, OpenInterval] = {}
        self._retired: set[str] = set()
        self._starting: dict[str, float] = {}  # first seen before ready -> first reading
        self._starts: list[StartUp] = []  # ended starts, written at the next close

    @property
    def interval_s(self) -> float:
        return self._interval_s

    def observe(self, replica: ReplicaRow, status: ReplicaStatus) -> None:
        if not carries_reading(status):  # its 0 J would read as a restarted counter
            return
        now = self._clock()
        if status.measured_at is not None:  # when the node read it; never later than now
            now = min(now, status.measured_at)
        interval = self._open.get(replica.id)
        if interval is None:
            self._open[replica.id] = OpenInterval(
                replica.id, replica.deployment_id, replica.datacenter_id, status.energy_source, now,
                status.energy_j, status.energy_j, now,
            )  # fmt: skip
            if status.state != "ready":
                self._starting[replica.id] = status.energy_j
            return
        if status.energy_j < interval.last_j:  # the actor restarted: its counter began again
            shift = status.energy_j - interval.last_j
            interval.start_j += shift
            if interval.cut is not None:
                interval.cut = (interval.cut[0], interval.cut[1] + shift)
        interval.last_j, interval.read_at = status.energy_j, now
        interval.source = status.energy_source
        if status.state == "ready" and replica.id in self._starting:
            # before the first reading, and since (across a restart of the counter)
            used = self._starting.pop(replica.id) + interval.last_j - interval.start_j
            placed_at = replica.created_at or interval.started_at
            self._starts.append(
                StartUp(replica.id, replica.deployment_id, replica.datacenter_id,
                        status.energy_source, placed_at, now, used,
                        status.start_cpu_s, status.start_wall_s)
            )  # fmt: skip
            interval.started_at, interval.start_j = now, status.energy_j  # serving from here

    def retire(self, replica_id: str) -> None:
        """The replica is going away: close its interval at the next `close_due`."""
        self._starting.pop(replica_id, None)  # a start that never ended: its energy is idle
        if replica_id in self._open:
            self._retired.add(replica_id)

    async def close_all(self) -> None:
        """Close every open interval now (the controller is stopping its replicas)."""
        self._retired.update(self._open)
        await self.close_due()

    async def close_due(self) -> None:
        while self._starts:
            start = self._starts[0]
            try:
                async with self._sessions.begin() as session:
                    await energy.record_startup(
                        session,
                        interval=energy.Interval(
                            start.replica_id, start.deployment_id, start.datacenter_id,
                            start.source, start.placed_at, start.ready_at, start.energy_j,
                        ),
                        cpu_s=start.cpu_s,
                        engine_s=start.engine_s,
                    )  # fmt: skip
            except Exception:
                log.exception("recording the start of replica %s failed", start.replica_id)
                break
            self._starts.pop(0)
        now = self._clock()
        for replica_id, interval in list(self._open.items()):
            retired = replica_id in self._retired
            cut = (now, interval.last_j) if retired else self._cut(replica_id, interval, now)
            if cut is None:
                continue
            ends_at, ends_j = cut
            try:
                await self._close(interval, ends_at, ends_j)
            except Exception:
                log.exception("closing the energy interval of replica %s failed", replica_id)
                continue
            if retired:
                del self._open[replica_id]
                self._retired.discard(replica_id)
            else:
                interval.started_at, interval.start_j, interval.cut = ends_at, ends_j, None

    def _cut(
        self, replica_id: str, interval: OpenInterval, now: datetime
    ) -> tuple[datetime, float] | None:
        """Where the interval closes now, or None while it is not due or its cut is less
        than `settle_s` old (the journals may still be writing what settled before it).
        A replica going away closes at once instead: what it settled since is its last."""
        if interval.cut is None:
            if (
                replica_id in self._starting  # the start is written whole once it ends
                or (now - interval.started_at).total_seconds() < self._interval_s
                or interval.read_at <= interval.started_at  # nothing read since the last close
            ):
                return None
            interval.cut = (interval.read_at, interval.last_j)
        return interval.cut if (now - interval.cut[0]).total_seconds() >= self._settle_s else None

    async def _close(self, interval: OpenInterval, ends_at: datetime, ends_j: float) -> None:
        measured = max(0.0, ends_j - interval.start_j)
        prompt_weight, completion_weight = self._weights
        async with self._sessions.begin() as session:
            served = await energy.unattributed(
                session, replica_id=interval.replica_id, until=ends_at
            )
            split = attribute(
                measured, served, prompt_weight=prompt_weight, completion_weight=completion_weight
            )
            weights = {
                s.record_id: weight(
                    s, prompt_weight=prompt_weight, completion_weight=completion_weight
                )
                for s in served
            }
            await energy.record_interval(
                session,
                interval=energy.Interval(
                    interval.replica_id,
                    interval.deployment_id,
                    interval.datacenter_id,
                    interval.source,
                    interval.started_at,
                    ends_at,
                    measured,
                ),
                split=split,
                weights=weights,
            )
