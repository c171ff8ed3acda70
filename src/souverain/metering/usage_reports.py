"""Usage reports: sums per day, model, project, key, datacenter, status or language, and
the latest records, as far as the caller may see.

Sums come from the usage rollups (`usage_rollups.py`): whole months, days and hours
inside the asked range, and the raw records only where rollups cannot answer: the parts of
an hour at each end of the range, and records not settled yet. So their cost grows with
the length of the range and the number of distinct dimensions, not with the number of
records. The latest records themselves (and the CSV export) are read from the records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Table,
    case,
    false,
    func,
    literal_column,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.access import check_scope
from souverain.core.errors import InvalidRequestError
from souverain.core.principal import Principal
from souverain.core.roles import Scope
from souverain.core.usage_spans import Piece, Span, cover
from souverain.db.tables import UsageRecordRow
from souverain.metering import startups, usage_rollups
from souverain.metering.usage import OPEN, as_utc
from souverain.tenancy import orgs

GROUPS = {"day", "model", "project", "key", "datacenter", "status", "language"}
_RECORDS: Table = UsageRecordRow.__table__  # type: ignore[assignment]


@dataclass(frozen=True)
class UsageFilter:
    org_ref: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    model: str | None = None
    project: str | None = None  # project id
    key: str | None = None  # key id


@dataclass(frozen=True)
class _Scope:
    """What a principal may see of what it asked for: dimensions that must equal a value
    (None: NULL), and the time range."""

    equal: tuple[tuple[str, str | None], ...]
    since: datetime | None
    until: datetime | None


async def list_records(
    session: AsyncSession, *, principal: Principal, where: UsageFilter, limit: int
) -> list[UsageRecordRow]:
    """The latest records themselves: always read from the records."""
    scope = await _scope_of(session, principal=principal, where=where)
    query = (
        select(UsageRecordRow)
        .where(*_record_conditions(scope, Piece(None, scope.since, scope.until)))
        .order_by(UsageRecordRow.created_at.desc())
        .limit(limit)
    )
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


_R, _U = _RECORDS.c, usage_rollups.ROLLUPS.c
# What each group_by groups on, in the records and in the rollups (where '' is NULL).
# language: reasoning requests per model and prompt language, "model · fr".
_RECORD_GROUPS: dict[str, ColumnElement[Any]] = {
    "day": usage_rollups.utc_day(_R.created_at),
    "model": _R.model,
    "project": _R.project_id,
    "key": _R.key_id,
    "datacenter": _R.datacenter_id,
    "status": _R.status,
    "language": _R.model + " · " + func.coalesce(_R.prompt_language, "?"),
}
_ROLLUP_GROUPS: dict[str, ColumnElement[Any]] = {
    "day": usage_rollups.utc_day(_U.starts_at),
    "model": _U.model,
    "project": func.nullif(_U.project_id, ""),
    "key": _U.key_id,
    "datacenter": func.nullif(_U.datacenter_id, ""),
    "status": _U.status,
    "language": _U.model + " · " + func.coalesce(func.nullif(_U.prompt_language, ""), "?"),
}
_GROUPED_COLUMN = {"project": "project_id", "key": "key_id"}
_SUMMED = ("requests", "prompt_tokens", "completion_tokens", "cost", "energy_j", "co2e_g",
           "language_tagged", "language_consistent")  # fmt: skip


async def aggregate(
    session: AsyncSession,
    *,
    principal: Principal,
    where: UsageFilter,
    group_by: str,
    from_records: bool = False,
) -> list[Group]:
    """Sums per group, from the rollups: whole months, days and hours inside the range
    (no coarser than days for `day`), the raw records only for the parts of an hour at its
    ends and for records not settled yet, all in one query. `from_records`: all of it from
    the raw records, the reference the rollups are tested and measured against."""
    if group_by not in GROUPS:
        raise InvalidRequestError(f"group_by must be one of {sorted(GROUPS)}", param="group_by")
    scope = await _scope_of(session, principal=principal, where=where)
    if from_records:
        pieces = [Piece(None, scope.since, scope.until)]
    else:
        pieces = cover(scope.since, scope.until, Span.DAY if group_by == "day" else Span.MONTH)
    parts = [_part(piece, scope, group_by) for piece in pieces]
    sums = (union_all(*parts) if len(parts) > 1 else parts[0]).subquery()
    query = (
        select(sums.c.grouped, *(func.coalesce(func.sum(sums.c[name]), 0) for name in _SUMMED))
        .group_by(sums.c.grouped)
        .order_by(sums.c.grouped)
    )
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


def _part(piece: Piece, scope: _Scope, group_by: str) -> Select[Any]:
    """The rows one piece adds: records one by one, or rollup rows."""
    if piece.span is None:
        query = select(
            _RECORD_GROUPS[group_by].label("grouped"),
            literal_column("1").label("requests"),
            _R.prompt_tokens,
            _R.completion_tokens,
            _R.cost,
            func.coalesce(_R.energy_j, _R.energy_estimate_j).label("energy_j"),
            _R.co2e_g,
            case((_R.languages_agree.is_not(None), 1), else_=0).label("language_tagged"),
            case((_R.languages_agree.is_(True), 1), else_=0).label("language_consistent"),
        ).where(*_record_conditions(scope, piece))
        if group_by == "language":
            query = query.where(_R.languages_agree.is_not(None))
        return query
    query = select(
        _ROLLUP_GROUPS[group_by].label("grouped"),
        _U.requests,
        _U.prompt_tokens,
        _U.completion_tokens,
        _U.cost,
        _U.energy_j,
        _U.co2e_g,
        case((_U.language_tagged, _U.requests), else_=0).label("language_tagged"),
        _U.language_consistent,
    ).where(
        _U.span == piece.span.value,
        _U.level == _level(scope, group_by, piece.span),
        *map(_rollup_equal, scope.equal),
    )
    if piece.since is not None:
        query = query.where(_U.starts_at >= piece.since)
    if piece.until is not None:
        query = query.where(_U.starts_at < piece.until)
    if group_by == "language":
        query = query.where(_U.language_tagged.is_(True))
    return query


async def startups_of(
    session: AsyncSession, *, principal: Principal, where: UsageFilter
) -> startups.Starts | None:
    """The starts of the organisation's own deployments in the range, apart from the
    requests' energy: for a caller who sees the organisation's whole usage (an operator:
    every deployment's, or the organisation's asked for). None when the question is
    narrowed to a project, a key or a user: deployments belong to none of them."""
    scope = await _scope_of(session, principal=principal, where=where)
    names = {name for name, _ in scope.equal}
    if not names <= {"org_id", "model"}:
        return None
    orgs = {value for name, value in scope.equal if name == "org_id"}
    if len(orgs) > 1:  # an organisation and another: nothing is both's
        return startups.Starts()
    return await startups.of_organisation(
        session, org_id=next(iter(orgs), None), since=scope.since, until=scope.until,
        model=where.model, everyone=not orgs,
    )  # fmt: skip


def _level(scope: _Scope, group_by: str, span: Span) -> str:
    """The org level (fewer rows) where there is one, unless the question names a key, a
    user or a project."""
    named = {name for name, _ in scope.equal} | {_GROUPED_COLUMN.get(group_by, "")}
    if named & usage_rollups.BELOW_ORG:
        return usage_rollups.KEY_LEVEL
    return usage_rollups.levels_of(span)[-1]


def _record_conditions(scope: _Scope, piece: Piece) -> list[ColumnElement[bool]]:
    conditions = [_R[name] == value for name, value in scope.equal]
    if piece.since is not None:
        conditions.append(_R.created_at >= piece.since)
    if piece.until is not None:
        conditions.append(_R.created_at < piece.until)
    if piece.open_only:
        conditions.append(_R.status == OPEN)
    return conditions


def _rollup_equal(condition: tuple[str, str | None]) -> ColumnElement[bool]:
    name, value = condition
    if value == "":  # '' is NULL in the rollups, while no record has ''
        return false()
    return _U[name] == (value or "")


def seen_by(principal: Principal) -> list[tuple[str, str | None]]:
    """What a caller's view of usage is narrowed to, as (record column, value) pairs (none:
    an operator sees every record): its organisation's, its project's for a project key,
    and its own for a key without the manage or audit scope."""
    if principal.is_operator:
        return []
    equal: list[tuple[str, str | None]] = [("org_id", principal.org_id)]
    if principal.project_id is not None:
        equal.append(("project_id", principal.project_id))
    if not (principal.has(Scope.MANAGE) or principal.has(Scope.AUDIT)):
        equal.append(("user_id", principal.user_id))
    return equal


async def _scope_of(session: AsyncSession, *, principal: Principal, where: UsageFilter) -> _Scope:
    check_scope(principal, Scope.READ)
    equal: list[tuple[str, str | None]] = []
    if where.org_ref is not None:
        org = await orgs.get_org(session, principal=principal, ref=where.org_ref)
        equal.append(("org_id", org.id))
    equal.extend(seen_by(principal))
    for name, value in (("model", where.model), ("project_id", where.project),
                        ("key_id", where.key)):  # fmt: skip
        if value is not None:
            equal.append((name, value))
    since = None if where.since is None else as_utc(where.since)
    until = None if where.until is None else as_utc(where.until)
    return _Scope(tuple(equal), since, until)
