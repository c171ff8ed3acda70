"""One pagination for every list route: a bounded `limit` and an `after` cursor.

Lists are newest first; `after` names the last object of the previous page (an id the
caller cannot see is 404, like any other), and `has_more` is exact (`db/pages.py` reads one
row more than asked). Mistral's clients send `page` (only the first, 0) and `page_size`
instead; they are read here too, bounded by the same maximum.

The bounds, in one table: most lists follow OpenAI's (20 by default, at most 100);
files follow OpenAI's files list (up to 10,000: file objects are small), events go to 1,000
(a training run writes many, each a line).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from fastapi import Depends, Query

from souverain.core.schemas.common import ListPage, MistralList


@dataclass(frozen=True)
class Bounds:
    default: int
    maximum: int


OBJECTS = Bounds(default=20, maximum=100)  # batches, jobs, checkpoints
FILES = Bounds(default=1000, maximum=10_000)
EVENTS = Bounds(default=20, maximum=1000)


@dataclass(frozen=True)
class Cursor:
    limit: int
    after: str | None
    mistral: bool  # asked with Mistral's `page`/`page_size`: answer in Mistral's shape


def cursor(bounds: Bounds) -> Any:
    """The dependency reading a list's paging parameters within `bounds`."""

    def read(
        limit: int = Query(default=bounds.default, ge=1, le=bounds.maximum),
        after: str | None = Query(default=None, max_length=64),
        page: int | None = Query(default=None, ge=0, le=0, description="Mistral's; one page"),
        page_size: int | None = Query(
            default=None, ge=1, le=bounds.maximum, description="Mistral's"
        ),
    ) -> Cursor:
        mistral = page is not None or page_size is not None
        return Cursor(page_size or limit, None if mistral else after, mistral)

    return Depends(read)


class HasId(Protocol):
    @property
    def id(self) -> str: ...


Item = TypeVar("Item", bound=HasId)
Row = TypeVar("Row")


def list_page(data: Sequence[Item], *, has_more: bool) -> ListPage[Item]:
    return ListPage(
        data=list(data),
        has_more=has_more,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )


def mistral_list(rows: Sequence[Row], shown: Callable[[Row], Item]) -> MistralList[Item]:
    return MistralList(data=[shown(row) for row in rows], total=len(rows))
