"""A range is tiled exactly by rollup buckets and raw pieces: every instant of it falls in
exactly one piece, rollup pieces hold whole buckets of their span, and raw records are
read only for less than an hour at each end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from souverain.core.usage_spans import SPANS, Piece, Span, cover, next_start, start_of

MOMENTS = st.datetimes(
    min_value=datetime(2025, 11, 1), max_value=datetime(2027, 2, 1), timezones=st.just(UTC)
)
# Instants near bucket edges are where a tiling goes wrong.
EDGES = st.builds(
    lambda moment, span, nudge: start_of(moment, span) + timedelta(microseconds=nudge),
    MOMENTS, st.sampled_from(SPANS), st.sampled_from([-1, 0, 1]),
)  # fmt: skip
ENDS = st.one_of(st.none(), MOMENTS, EDGES)


def holds(piece: Piece, moment: datetime) -> bool:
    return (piece.since is None or piece.since <= moment) and (
        piece.until is None or moment < piece.until
    )


def inside(since: datetime | None, until: datetime | None, moment: datetime) -> bool:
    return holds(Piece(None, since, until), moment)


class TestCover:
    @settings(max_examples=400)
    @given(since=ENDS, until=ENDS, coarsest=st.sampled_from(SPANS), probes=st.lists(EDGES))
    def test_every_instant_falls_in_exactly_one_piece(
        self,
        since: datetime | None,
        until: datetime | None,
        coarsest: Span,
        probes: list[datetime],
    ) -> None:
        pieces = cover(since, until, coarsest)
        tiles = [p for p in pieces if not p.open_only]
        for moment in [
            *probes,
            *(p.since for p in tiles if p.since),
            *(p.until for p in tiles if p.until),
        ]:
            expected = 1 if inside(since, until, moment) else 0
            assert sum(holds(p, moment) for p in tiles) == expected, (moment, pieces)

    @settings(max_examples=400)
    @given(since=ENDS, until=ENDS, coarsest=st.sampled_from(SPANS))
    def test_rollup_pieces_hold_whole_buckets_and_raw_ones_less_than_an_hour(
        self, since: datetime | None, until: datetime | None, coarsest: Span
    ) -> None:
        pieces = cover(since, until, coarsest)
        raw = [p for p in pieces if p.span is None and not p.open_only]
        rolled = [p for p in pieces if p.span is not None]
        for piece in rolled:
            assert piece.span is not None and SPANS.index(piece.span) <= SPANS.index(coarsest)
            for end in (piece.since, piece.until):
                assert end is None or start_of(end, piece.span) == end
        if rolled:
            assert len(raw) <= 2
            assert all(p.since and p.until and p.until - p.since < timedelta(hours=1) for p in raw)
        [opened] = [p for p in pieces if p.open_only] or [None]
        if rolled:  # open records are read where rollups answer, and only there
            assert opened is not None
            assert opened.since == min((p.since for p in rolled), key=_early, default=None)
            assert opened.until == max((p.until for p in rolled), key=_late, default=None)
        else:
            assert opened is None and raw == [Piece(None, since, until)]

    def test_a_month_seen_by_day(self) -> None:
        since = datetime(2026, 10, 30, 22, 15, tzinfo=UTC)
        until = datetime(2027, 1, 2, 0, 0, 30, tzinfo=UTC)
        pieces = cover(since, until, Span.MONTH)
        assert pieces == [
            Piece(None, since, datetime(2026, 10, 30, 23, tzinfo=UTC)),
            Piece(None, datetime(2027, 1, 2, tzinfo=UTC), until),
            Piece(Span.HOUR, datetime(2026, 10, 30, 23, tzinfo=UTC), datetime(2026, 10, 31, tzinfo=UTC)),
            Piece(Span.DAY, datetime(2026, 10, 31, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)),
            Piece(Span.DAY, datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 1, 2, tzinfo=UTC)),
            Piece(Span.MONTH, datetime(2026, 11, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
            Piece(None, datetime(2026, 10, 30, 23, tzinfo=UTC), datetime(2027, 1, 2, tzinfo=UTC),
                  open_only=True),
        ]  # fmt: skip

    def test_months_roll_over_the_year(self) -> None:
        assert next_start(datetime(2026, 12, 1, tzinfo=UTC), Span.MONTH) == datetime(
            2027, 1, 1, tzinfo=UTC
        )


def _early(moment: datetime | None) -> datetime:
    return moment or datetime.min.replace(tzinfo=UTC)


def _late(moment: datetime | None) -> datetime:
    return moment or datetime.max.replace(tzinfo=UTC)
