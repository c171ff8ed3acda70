"""The spans of the usage rollups, and how a time range is tiled by them.

A range [since, until) is answered with the coarsest whole buckets that fit inside it:
months in the middle, then days, then hours towards its ends, and raw records only for
the parts of an hour at each end (at most two pieces, each shorter than an hour). The
pieces never overlap and together cover the range exactly, so sums over them are the sums
over the range. `None` is an open end. Everything is UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum


class Span(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


SPANS = (Span.HOUR, Span.DAY, Span.MONTH)  # finest first


def start_of(moment: datetime, span: Span) -> datetime:
    """The start of the bucket of `span` that holds `moment`."""
    hour = moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    if span is Span.HOUR:
        return hour
    day = hour.replace(hour=0)
    return day if span is Span.DAY else day.replace(day=1)


def next_start(start: datetime, span: Span) -> datetime:
    """The start of the bucket after the one starting at `start`."""
    if span is Span.HOUR:
        return start + timedelta(hours=1)
    if span is Span.DAY:
        return start + timedelta(days=1)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)


def _ceil(moment: datetime, span: Span) -> datetime:
    start = start_of(moment, span)
    return start if start == moment else next_start(start, span)


@dataclass(frozen=True)
class Piece:
    """Part of a range, answered from buckets of `span`, or from raw records when `span`
    is None (`open_only`: only the records not settled yet, which rollups leave out)."""

    span: Span | None
    since: datetime | None
    until: datetime | None
    open_only: bool = False


def _inner(
    since: datetime | None, until: datetime | None, span: Span
) -> tuple[datetime | None, datetime | None] | None:
    """The whole buckets of `span` inside the range, or None if there is none."""
    first = None if since is None else _ceil(since, span)
    end = None if until is None else start_of(until, span)
    if first is not None and end is not None and first >= end:
        return None
    return first, end


def cover(since: datetime | None, until: datetime | None, coarsest: Span) -> list[Piece]:
    """Pieces that tile [since, until), none coarser than `coarsest`, plus one piece for
    the records still open inside the part that rollups answer (they count as requests
    but are in no rollup until they settle)."""
    since = None if since is None else since.astimezone(UTC)
    until = None if until is None else until.astimezone(UTC)
    pieces: list[Piece] = []
    finer: Span | None = None
    rolled: tuple[datetime | None, datetime | None] | None = None
    for span in SPANS[: SPANS.index(coarsest) + 1]:
        inner = _inner(since, until, span)
        if inner is None:
            break
        first, end = inner
        if since is not None and first is not None and since < first:
            pieces.append(Piece(finer, since, first))
        if until is not None and end is not None and end < until:
            pieces.append(Piece(finer, end, until))
        since, until, finer = first, end, span
        rolled = rolled or inner
    pieces.append(Piece(finer, since, until))
    if rolled is not None:
        pieces.append(Piece(None, *rolled, open_only=True))
    return pieces
