"""Usage rollups: the sums of the usage records per hour, day and month, kept with them.

Invariant: each rollup row holds exactly the sums (requests, tokens, cost, energy, CO2e,
language consistency) of the *settled* usage records created in its bucket with its
dimensions. Open records are in no rollup: they enter at settlement.

A settled record's contribution changes only through writes that happen once, each a
guarded UPDATE that returns the row as it is afterwards: settlement (open to settled),
language tagging (untagged to tagged) and energy attribution (estimate to attributed).
The row before such a change is the row after it without what the change wrote, so the
change of contribution is known without reading the record first, and no other writer
can slip in between. `Changes` sums what a transaction changes per rollup row; its
`write` is one upsert that adds in the database (so concurrent transactions never lose an
increment) taking the rows in key order (so two writers never wait on each other in a
cycle). Callers write it once, after their other writes, in the same transaction.

Each record counts at two levels: `key` keeps every dimension; `org` leaves out key, user
and project (''), so that the questions that do not ask about them read several times
fewer rows of days and months (hours are only read at the ends of a range, few enough at
the key level, so they have no org level). No level above the organisation: a
platform-wide row would be one that every settlement of the platform waits on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import Column, FunctionElement, Table
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from souverain.core.usage_spans import SPANS, Span, start_of
from souverain.db.tables import UsageRecordRow, UsageRollupRow

ROLLUPS: Table = UsageRollupRow.__table__  # type: ignore[assignment]
_RECORDS: Table = UsageRecordRow.__table__  # type: ignore[assignment]
OPEN = "open"
# Dimensions copied from the record ('' for NULL); `language_tagged` is derived.
DIMENSIONS = ("org_id", "project_id", "key_id", "user_id", "model", "datacenter_id", "status",
              "prompt_language")  # fmt: skip
KEY_LEVEL, ORG_LEVEL = "key", "org"
BELOW_ORG = frozenset({"project_id", "key_id", "user_id"})  # '' at the org level
# What a record's contribution is computed from: UPDATE and INSERT statements return it.
RECORD_COLUMNS: tuple[Column[Any], ...] = tuple(
    _RECORDS.c[name]
    for name in ("created_at", *DIMENSIONS, "languages_agree", "prompt_tokens",
                 "completion_tokens", "cost", "energy_j", "energy_estimate_j", "co2e_g")
)  # fmt: skip


@dataclass(frozen=True, order=True)
class Bucket:
    """A rollup row's key."""

    span: str
    level: str
    org_id: str
    starts_at: datetime
    project_id: str
    key_id: str
    user_id: str
    model: str
    datacenter_id: str
    status: str
    prompt_language: str
    language_tagged: bool


@dataclass(frozen=True)
class Sums:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    energy_j: float = 0.0  # attributed where known, else the estimate at completion
    co2e_g: float = 0.0
    language_consistent: int = 0

    def plus(self, other: Sums, sign: int = 1) -> Sums:
        return Sums(*(getattr(self, f) + sign * getattr(other, f) for f in MEASURES))

    def is_zero(self) -> bool:
        return all(getattr(self, f) == 0 for f in MEASURES)


MEASURES = tuple(f.name for f in fields(Sums))
KEY = tuple(f.name for f in fields(Bucket))


def contributions(record: Mapping[Any, Any]) -> dict[Bucket, Sums]:
    """What one record adds to the rollups: a row per span and level; nothing while open."""
    if record["status"] == OPEN:
        return {}
    dimensions = {name: record[name] or "" for name in DIMENSIONS}
    agree = record["languages_agree"]
    sums = Sums(
        requests=1,
        prompt_tokens=record["prompt_tokens"] or 0,
        completion_tokens=record["completion_tokens"] or 0,
        cost=record["cost"] or 0.0,
        energy_j=_first_known(record["energy_j"], record["energy_estimate_j"]),
        co2e_g=record["co2e_g"] or 0.0,
        language_consistent=1 if agree is True else 0,
    )
    levels = {KEY_LEVEL: dimensions, ORG_LEVEL: dimensions | dict.fromkeys(BELOW_ORG, "")}
    return {
        Bucket(
            span=span.value,
            level=level,
            starts_at=start_of(record["created_at"], span),
            language_tagged=agree is not None,
            **kept,
        ): sums
        for span in SPANS
        for level, kept in levels.items()
        if level in levels_of(span)
    }


def levels_of(span: Span) -> tuple[str, ...]:
    return (KEY_LEVEL,) if span is Span.HOUR else (KEY_LEVEL, ORG_LEVEL)


def _first_known(*values: float | None) -> float:
    return next((v for v in values if v is not None), 0.0)


class Changes:
    """What the writes of one transaction change in the rollups, summed per row."""

    def __init__(self) -> None:
        self._sums: dict[Bucket, Sums] = {}

    def settled(self, record: Mapping[Any, Any]) -> None:
        """`record` (as it is now) has just been settled, or inserted settled."""
        self._add(record, 1)

    def revised(self, record: Mapping[Any, Any], *, before: Mapping[Any, Any]) -> None:
        """`record` (as it is now) was changed once: `before` holds what the change
        overwrote (e.g. the languages, all NULL until tagged)."""
        self._add({**record, **before}, -1)
        self._add(record, 1)

    def _add(self, record: Mapping[Any, Any], sign: int) -> None:
        for bucket, sums in contributions(record).items():
            self._sums[bucket] = self._sums.get(bucket, Sums()).plus(sums, sign)

    async def write(self, session: AsyncSession) -> None:
        """One upsert adding every change, rows in key order; then nothing is pending."""
        rows = [
            {**_key_values(bucket), **_sum_values(sums)}
            for bucket, sums in sorted(self._sums.items())
            if not sums.is_zero()
        ]
        self._sums = {}
        if rows:
            await session.execute(_UPSERTS[session.get_bind().dialect.name], rows)


@asynccontextmanager
async def gathering(session: AsyncSession, changes: Changes | None) -> AsyncIterator[Changes]:
    """The caller's `changes` (it writes them later), or new ones written when the block
    ends without an error."""
    if changes is not None:
        yield changes
        return
    own = Changes()
    yield own
    await own.write(session)


def _key_values(bucket: Bucket) -> dict[str, Any]:
    return {name: getattr(bucket, name) for name in KEY}


def _sum_values(sums: Sums) -> dict[str, Any]:
    return {name: getattr(sums, name) for name in MEASURES}


def _upsert(insert_for: Any) -> Any:
    statement = insert_for(ROLLUPS)
    return statement.on_conflict_do_update(
        index_elements=list(KEY),
        set_={name: ROLLUPS.c[name] + statement.excluded[name] for name in MEASURES},
    )


_UPSERTS = {"postgresql": _upsert(postgresql_insert), "sqlite": _upsert(sqlite_insert)}


class utc_day(FunctionElement[Any]):
    """The UTC date of a time, on SQLite (which stores UTC text) and PostgreSQL (whose
    `date()` would use the session's time zone)."""

    inherit_cache = True


@compiles(utc_day)
def _utc_day(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element: utc_day, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date(timezone('UTC', {compiler.process(element.clauses, **kw)}))"
