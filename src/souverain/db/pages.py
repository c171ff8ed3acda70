"""One way to page through a list: newest first, by a cursor naming the last object seen.

Every list route pages the same way (`server/pagination.py` bounds `limit` and reads
`after`): rows ordered by (created_at, id) descending, the page after the cursor's row,
and one row more than asked to know whether there are more, so `has_more` is exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.ext.asyncio import AsyncSession

from souverain.core.errors import NotFoundError

Row = TypeVar("Row")


@dataclass(frozen=True)
class Page(Generic[Row]):
    rows: list[Row]
    has_more: bool


async def page_of(
    session: AsyncSession,
    query: Select[Any],
    *,
    table: type[Row],
    limit: int,
    after: str | None,
) -> Page[Row]:
    """The page of `query` (already filtered to what the caller sees) after the row whose
    id is `after`; an `after` the caller cannot see is not found, like any other id."""
    columns: Any = table
    if after is not None:
        anchor: Any = (await session.execute(query.where(columns.id == after))).scalar_one_or_none()
        if anchor is None:
            raise NotFoundError(f"No such object to list after: {after}", param="after")
        query = query.where(
            or_(
                columns.created_at < anchor.created_at,
                and_(columns.created_at == anchor.created_at, columns.id < anchor.id),
            )
        )
    query = query.order_by(columns.created_at.desc(), columns.id.desc()).limit(limit + 1)
    rows: list[Row] = list((await session.execute(query)).scalars())
    return Page(rows[:limit], len(rows) > limit)
