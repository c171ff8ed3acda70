"""Usage records: exactly one per admitted request.

A record is written `open` when the request is admitted and settled exactly once, by a
guarded UPDATE (`WHERE status = 'open'`), so a late second settlement cannot double
count. Records a killed server left open are settled `interrupted` at the next start.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, Table, bindparam, case, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import InvalidRequestError
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.db.tables import UsageRecordRow, utcnow
from souverain.services import budgets, orgs
from souverain.services.access import check_scope

OPEN = "open"
GROUPS = {"day", "model", "project", "key", "datacenter", "status", "language"}


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
# Built once: the hot path only binds values (SQLAlchemy caches the compiled form).
_OPEN_STATEMENT = insert(_RECORDS)
_SETTLE_STATEMENT = (
    update(_RECORDS)
    .where(_RECORDS.c.id == bindparam("record_id"), _RECORDS.c.status == OPEN)
    .values({column: bindparam(f"new_{column}") for column in _SETTLED_COLUMNS})
)


_LANGUAGES_STATEMENT = (
    update(_RECORDS)
    .where(_RECORDS.c.id == bindparam("record_id"))
    .values({column: bindparam(f"new_{column}") for column in LANGUAGE_FIELDS})
)


async def tag_languages(session: AsyncSession, *, tags: list[dict[str, Any]]) -> None:
    """Write the languages of reasoning requests (each dict: id and LANGUAGE_FIELDS)."""
    if tags:
        await session.execute(
            _LANGUAGES_STATEMENT,
            [
                {"record_id": tag["id"]} | {f"new_{c}": tag.get(c) for c in LANGUAGE_FIELDS}
                for tag in tags
            ],
        )


async def open_record(session: AsyncSession, *, record: OpenRecord) -> None:
    """Insert a usage record in state `open` (the caller's transaction commits it)."""
    await session.execute(_OPEN_STATEMENT, [row_values(record)])


async def insert_rows(
    session: AsyncSession, *, rows: list[dict[str, Any]], if_absent: bool
) -> None:
    """Insert rows made by `row_values` (open, or already settled); `if_absent` skips ids
    already stored."""
    if not if_absent:
        await session.execute(_OPEN_STATEMENT, rows)
        return
    dialect = session.get_bind().dialect.name
    insert_for = postgresql_insert if dialect == "postgresql" else sqlite_insert
    await session.execute(insert_for(_RECORDS).on_conflict_do_nothing(index_elements=["id"]), rows)


def _settle_params(record_id: str, settlement: Settlement, settled_at: datetime) -> dict[str, Any]:
    params = {f"new_{name}": value for name, value in settlement_values(settlement).items()}
    return params | {"new_settled_at": settled_at, "record_id": record_id}


async def settle_unbudgeted(
    session: AsyncSession, *, record_id: str, settlement: Settlement, settled_at: datetime
) -> bool:
    """A journaled settlement: the same guarded UPDATE as `settle_record`, no budget."""
    result = await session.execute(
        _SETTLE_STATEMENT, _settle_params(record_id, settlement, settled_at)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def settle_record(
    session: AsyncSession,
    *,
    record_id: str,
    settlement: Settlement,
    reservation: tuple[list[str], budgets.Amounts] | None = None,
) -> bool:
    """Settle once, and move its budget reservation to `used` in the same transaction.
    `reservation` (ledger ids, amounts) saves reading it back when the caller knows it.
    Returns False when the record was already settled."""
    result = await session.execute(
        _SETTLE_STATEMENT, _settle_params(record_id, settlement, utcnow())
    )
    if not result.rowcount:  # type: ignore[attr-defined]
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
    settled = 0
    for record in list((await session.execute(query)).scalars()):
        interrupted = Settlement(status="interrupted", error="server stopped before settlement")
        changed = await session.execute(
            update(UsageRecordRow)
            .where(UsageRecordRow.id == record.id, UsageRecordRow.status == OPEN)
            .values(**settlement_values(interrupted), settled_at=utcnow())
        )
        if not changed.rowcount:  # type: ignore[attr-defined]
            continue
        settled += 1
        if record.ledger_ids:
            reserved = budgets.Amounts(
                record.reserved_tokens, record.reserved_cost, record.reserved_energy_j
            )
            await budgets.settle(
                session, ledger_ids=list(record.ledger_ids), reserved=reserved, used=reserved
            )
    return settled


@dataclass(frozen=True)
class UsageFilter:
    org_ref: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    model: str | None = None
    project: str | None = None  # project id
    key: str | None = None  # key id


async def list_records(
    session: AsyncSession, *, principal: Principal, where: UsageFilter, limit: int
) -> list[UsageRecordRow]:
    query = await _scoped(session, principal=principal, where=where)
    query = query.order_by(UsageRecordRow.created_at.desc()).limit(limit)
    return list((await session.execute(query)).scalars())


@dataclass(frozen=True)
class Group:
    key: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost: float
    energy_j: float
    co2e_g: float
    language_tagged: int = 0  # reasoning requests whose languages could be compared
    language_consistent: int = 0  # of those, prompt, thinking and answer in one language

    @property
    def language_consistency(self) -> float | None:
        return self.language_consistent / self.language_tagged if self.language_tagged else None


async def aggregate(
    session: AsyncSession, *, principal: Principal, where: UsageFilter, group_by: str
) -> list[Group]:
    if group_by not in GROUPS:
        raise InvalidRequestError(f"group_by must be one of {sorted(GROUPS)}", param="group_by")
    column = {
        "day": func.date(UsageRecordRow.created_at),
        "model": UsageRecordRow.model,
        "project": UsageRecordRow.project_id,
        "key": UsageRecordRow.key_id,
        "datacenter": UsageRecordRow.datacenter_id,
        "status": UsageRecordRow.status,
        # per model and prompt language: "model · fr"
        "language": UsageRecordRow.model
        + " · "
        + func.coalesce(UsageRecordRow.prompt_language, "?"),
    }[group_by]
    scoped = (await _scoped(session, principal=principal, where=where)).subquery()
    grouped: Any = column.label("grouped")
    query = (
        select(
            grouped,
            func.count(),
            func.coalesce(func.sum(UsageRecordRow.prompt_tokens), 0),
            func.coalesce(func.sum(UsageRecordRow.completion_tokens), 0),
            func.coalesce(func.sum(UsageRecordRow.cost), 0.0),
            func.coalesce(
                func.sum(func.coalesce(UsageRecordRow.energy_j, UsageRecordRow.energy_estimate_j)),
                0.0,
            ),
            func.coalesce(func.sum(UsageRecordRow.co2e_g), 0.0),
            func.count(UsageRecordRow.languages_agree),
            func.coalesce(
                func.sum(case((UsageRecordRow.languages_agree.is_(True), 1), else_=0)), 0
            ),
        )
        .where(UsageRecordRow.id.in_(select(scoped.c.id)))
        .group_by(grouped)
        .order_by(grouped)
    )
    if group_by == "language":
        query = query.where(UsageRecordRow.languages_agree.is_not(None))
    return [
        Group(
            str(key) if key is not None else "-",
            int(n),
            int(p),
            int(c),
            float(cost),
            float(joules),
            float(grams),
            int(tagged),
            int(consistent),
        )
        for key, n, p, c, cost, joules, grams, tagged, consistent in (
            await session.execute(query)
        ).all()
    ]


async def _scoped(
    session: AsyncSession, *, principal: Principal, where: UsageFilter
) -> Select[UsageRecordRow]:
    check_scope(principal, Scope.READ)
    query = select(UsageRecordRow)
    if where.org_ref is not None:
        org = await orgs.get_org(session, principal=principal, ref=where.org_ref)
        query = query.where(UsageRecordRow.org_id == org.id)
    if not principal.is_operator:
        query = query.where(UsageRecordRow.org_id == principal.org_id)
        if principal.project_id is not None:
            query = query.where(UsageRecordRow.project_id == principal.project_id)
        if not (principal.has(Scope.MANAGE) or principal.has(Scope.AUDIT)):
            query = query.where(UsageRecordRow.user_id == principal.user_id)
    if where.since is not None:
        query = query.where(UsageRecordRow.created_at >= as_utc(where.since))
    if where.until is not None:
        query = query.where(UsageRecordRow.created_at < as_utc(where.until))
    if where.model is not None:
        query = query.where(UsageRecordRow.model == where.model)
    if where.project is not None:
        query = query.where(UsageRecordRow.project_id == where.project)
    if where.key is not None:
        query = query.where(UsageRecordRow.key_id == where.key)
    return query


def as_utc(moment: datetime) -> datetime:
    """Read a naive time as UTC, as ISO 8601 without an offset is commonly meant."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


async def count_records(session: AsyncSession, *, status: str | None = None) -> int:
    query = select(func.count()).select_from(UsageRecordRow)
    if status is not None:
        query = query.where(UsageRecordRow.status == status)
    return int((await session.execute(query)).scalar_one())
