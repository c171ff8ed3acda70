"""Usage records: exactly one per admitted request.

A record is written `open` when the request is admitted and settled exactly once, by a
guarded UPDATE (`WHERE status = 'open'`), so a late second settlement cannot double
count. Records a killed server left open are settled `interrupted` at the next start.
Every write that changes what a settled record adds to the usage rollups (settlement,
languages, attributed energy) changes the rollups in the same transaction
(`usage_rollups.py`); reports read them (`usage_reports.py`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, bindparam, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.db.tables import UsageRecordRow, utcnow
from souverain.metering import budgets, usage_rollups
from souverain.metering.usage_rollups import Changes

OPEN = usage_rollups.OPEN


@dataclass(frozen=True)
class Settlement:
    status: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tokens_counted_by: str = "engine"
    latency_ms: float | None = None
    ttft_ms: float | None = None
    deployment_id: str | None = None
    replica_id: str | None = None
    node_id: str | None = None
    datacenter_id: str | None = None
    country: str | None = None
    operator_country: str | None = None
    certifications: list[str] | None = None
    jurisdictions: list[str] | None = None
    error: str = ""
    cost: float = 0.0
    currency: str | None = None
    energy_estimate_j: float | None = None
    energy_source: str | None = None


@dataclass(frozen=True)
class OpenRecord:
    """What is known of a request when it is admitted; its usage record is written `open`."""

    id: str
    key_id: str
    user_id: str
    endpoint: str
    model: str
    stream: bool
    server_id: str
    org_id: str | None = None
    project_id: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    ledger_ids: tuple[str, ...] = ()
    reserved_tokens: int = 0
    reserved_cost: float = 0.0
    reserved_energy_j: float = 0.0
    batch_id: str | None = None  # a batch's line, settled by the batch runner


_OPEN_FIELDS = tuple(f.name for f in fields(OpenRecord))
SETTLEMENT_FIELDS = tuple(f.name for f in fields(Settlement))
LANGUAGE_FIELDS = ("prompt_language", "reasoning_language", "answer_language", "languages_agree")
# Written after settlement: energy by the energy accountant, languages by the language tagger.
_ATTRIBUTED_LATER = {"energy_j": None, "co2e_g": None} | dict.fromkeys(LANGUAGE_FIELDS)


def open_values(record: OpenRecord) -> dict[str, Any]:
    values = {name: getattr(record, name) for name in _OPEN_FIELDS}
    values["ledger_ids"] = list(record.ledger_ids)
    return values


def settlement_values(settlement: Settlement) -> dict[str, Any]:
    return {name: getattr(settlement, name) for name in SETTLEMENT_FIELDS}


def settlement_from(values: dict[str, Any]) -> Settlement:
    """A settlement read back (from the journal); unknown keys are ignored."""
    return Settlement(**{name: values[name] for name in SETTLEMENT_FIELDS if name in values})


def row_values(
    record: OpenRecord, settlement: Settlement | None = None, settled_at: datetime | None = None
) -> dict[str, Any]:
    """The one mapping from the typed record (and its settlement, if known) to a row."""
    outcome = settlement_values(settlement or Settlement(status=OPEN))
    return open_values(record) | outcome | _ATTRIBUTED_LATER | {"settled_at": settled_at}


_RECORDS: Table = UsageRecordRow.__table__  # type: ignore[assignment]
_SETTLED_COLUMNS = (*SETTLEMENT_FIELDS, "settled_at")
# Built once: the hot path only binds values (SQLAlchemy caches the compiled form). The
# writes that change what a settled record adds to the rollups return the row afterwards.
_OPEN_STATEMENT = insert(_RECORDS)
_SETTLE_STATEMENT = (
    update(_RECORDS)
    .where(_RECORDS.c.id == bindparam("record_id"), _RECORDS.c.status == OPEN)
    .values({column: bindparam(f"new_{column}") for column in _SETTLED_COLUMNS})
    .returning(*usage_rollups.RECORD_COLUMNS)
)
# Tagged once: a replayed tag finds the record tagged and changes nothing.
_LANGUAGES_STATEMENT = (
    update(_RECORDS)
    .where(
        _RECORDS.c.id == bindparam("record_id"),
        *(_RECORDS.c[column].is_(None) for column in LANGUAGE_FIELDS),
    )
    .values({column: bindparam(f"new_{column}") for column in LANGUAGE_FIELDS})
    .returning(*usage_rollups.RECORD_COLUMNS)
)
# Attributed once: `co2e_g` is written only with `energy_j`, so both were NULL before.
_ENERGY_STATEMENT = (
    update(_RECORDS)
    .where(_RECORDS.c.id == bindparam("record_id"), _RECORDS.c.energy_j.is_(None))
    .values(
        energy_j=bindparam("new_energy_j"),
        co2e_g=bindparam("new_co2e_g"),
        energy_source=bindparam("new_energy_source"),
    )
    .returning(*usage_rollups.RECORD_COLUMNS)
)
_UNTAGGED = dict.fromkeys(LANGUAGE_FIELDS)
_UNATTRIBUTED = {"energy_j": None, "co2e_g": None}


async def tag_languages(
    session: AsyncSession, *, tags: list[dict[str, Any]], changes: Changes | None = None
) -> None:
    """Write the languages of reasoning requests (each dict: id and LANGUAGE_FIELDS), once
    per record. `changes`: the caller's pending rollup changes (else written here)."""
    async with usage_rollups.gathering(session, changes) as gathered:
        for tag in tags:
            params = {"record_id": tag["id"]} | {f"new_{c}": tag.get(c) for c in LANGUAGE_FIELDS}
            row = (await session.execute(_LANGUAGES_STATEMENT, params)).first()
            if row is not None:
                gathered.revised(row._mapping, before=_UNTAGGED)


async def attribute_energy(
    session: AsyncSession,
    *,
    record_id: str,
    energy_j: float,
    co2e_g: float,
    source: str,
    changes: Changes | None = None,
) -> bool:
    """Write the energy attributed to a settled record, once. False if it already had one."""
    params = {"record_id": record_id, "new_energy_j": energy_j, "new_co2e_g": co2e_g,
              "new_energy_source": source}  # fmt: skip
    async with usage_rollups.gathering(session, changes) as gathered:
        row = (await session.execute(_ENERGY_STATEMENT, params)).first()
        if row is not None:
            gathered.revised(row._mapping, before=_UNATTRIBUTED)
    return row is not None


async def open_record(session: AsyncSession, *, record: OpenRecord) -> None:
    """Insert a usage record in state `open` (the caller's transaction commits it)."""
    await session.execute(_OPEN_STATEMENT, [row_values(record)])


async def insert_rows(
    session: AsyncSession,
    *,
    rows: list[dict[str, Any]],
    if_absent: bool,
    changes: Changes | None = None,
) -> None:
    """Insert rows made by `row_values` (open, or already settled); `if_absent` skips ids
    already stored. Rows inserted settled enter the rollups."""
    statement: Any = _OPEN_STATEMENT
    if if_absent:
        dialect = session.get_bind().dialect.name
        insert_for = postgresql_insert if dialect == "postgresql" else sqlite_insert
        statement = insert_for(_RECORDS).on_conflict_do_nothing(index_elements=["id"])
    async with usage_rollups.gathering(session, changes) as gathered:
        inserted = await session.execute(statement.returning(*usage_rollups.RECORD_COLUMNS), rows)
        for row in inserted:
            gathered.settled(row._mapping)


def _settle_params(record_id: str, settlement: Settlement, settled_at: datetime) -> dict[str, Any]:
    params = {f"new_{name}": value for name, value in settlement_values(settlement).items()}
    return params | {"new_settled_at": settled_at, "record_id": record_id}


async def settle_unbudgeted(
    session: AsyncSession,
    *,
    record_id: str,
    settlement: Settlement,
    settled_at: datetime,
    changes: Changes | None = None,
) -> bool:
    """A journaled settlement: the same guarded UPDATE as `settle_record`, no budget."""
    async with usage_rollups.gathering(session, changes) as gathered:
        row = (
            await session.execute(
                _SETTLE_STATEMENT, _settle_params(record_id, settlement, settled_at)
            )
        ).first()
        if row is not None:
            gathered.settled(row._mapping)
    return row is not None


async def settle_record(
    session: AsyncSession,
    *,
    record_id: str,
    settlement: Settlement,
    reservation: tuple[list[str], budgets.Amounts] | None = None,
) -> bool:
    """Settle once, and move its budget reservation to `used` and the record into the
    rollups in the same transaction. `reservation` (ledger ids, amounts) saves reading it
    back when the caller knows it. Returns False when the record was already settled."""
    row = (
        await session.execute(_SETTLE_STATEMENT, _settle_params(record_id, settlement, utcnow()))
    ).first()
    if row is None:
        return False
    if reservation is None:
        reservation = await _reservation_of(session, record_id)
    ledger_ids, reserved = reservation
    if ledger_ids:
        used = budgets.Amounts(
            tokens=settlement.prompt_tokens + settlement.completion_tokens,
            cost=settlement.cost,
            energy_j=settlement.energy_estimate_j or 0.0,
        )
        await budgets.settle(session, ledger_ids=list(ledger_ids), reserved=reserved, used=used)
    changes = Changes()
    changes.settled(row._mapping)
    await changes.write(session)  # last: every transaction takes rollup rows after the rest
    return True


async def _reservation_of(
    session: AsyncSession, record_id: str
) -> tuple[list[str], budgets.Amounts]:
    query = select(
        UsageRecordRow.ledger_ids,
        UsageRecordRow.reserved_tokens,
        UsageRecordRow.reserved_cost,
        UsageRecordRow.reserved_energy_j,
    ).where(UsageRecordRow.id == record_id)
    ledger_ids, tokens, cost, energy = (await session.execute(query)).one()
    return list(ledger_ids or []), budgets.Amounts(tokens, cost, energy)


async def settle_interrupted(session: AsyncSession, *, server_id: str | None = None) -> int:
    """Settle records left open by a server that died (None: every open record). Their
    budgets are charged the whole reservation: never less than the request may have used."""
    # A batch's lines are its runner's: it resumes them (and settles them) itself.
    query = select(UsageRecordRow).where(
        UsageRecordRow.status == OPEN, UsageRecordRow.batch_id.is_(None)
    )
    if server_id is not None:
        query = query.where(UsageRecordRow.server_id == server_id)
    interrupted = Settlement(status="interrupted", error="server stopped before settlement")
    changes, settled = Changes(), 0
    for record in list((await session.execute(query)).scalars()):
        row = (
            await session.execute(
                _SETTLE_STATEMENT, _settle_params(record.id, interrupted, utcnow())
            )
        ).first()
        if row is None:
            continue
        settled += 1
        changes.settled(row._mapping)
        if record.ledger_ids:
            reserved = budgets.Amounts(
                record.reserved_tokens, record.reserved_cost, record.reserved_energy_j
            )
            await budgets.settle(
                session, ledger_ids=list(record.ledger_ids), reserved=reserved, used=reserved
            )
    await changes.write(session)
    return settled


def as_utc(moment: datetime) -> datetime:
    """Read a naive time as UTC, as ISO 8601 without an offset is commonly meant."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


async def count_records(session: AsyncSession, *, status: str | None = None) -> int:
    query = select(func.count()).select_from(UsageRecordRow)
    if status is not None:
        query = query.where(UsageRecordRow.status == status)
    return int((await session.execute(query)).scalar_one())
