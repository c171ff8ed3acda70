"""The per-minute limits at a minute boundary, on a clock the test moves: a burst gets its
limit and not one request more, wherever the minute turns."""

from __future__ import annotations

import time

import pytest

from souverain.core.errors import RateLimitedError
from souverain.gateway.ratelimit import Limit, RateLimiter

MINUTE = 60 * 29_000_000  # a whole number of minutes since the epoch


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(MINUTE + 59.5)  # half a second before the minute turns
    monkeypatch.setattr(time, "time", fake)
    return fake


async def admitted(limiter: RateLimiter, limit: Limit, attempts: int) -> int:
    count = 0
    for _ in range(attempts):
        try:
            await limiter.admit([limit], tokens=10)
            count += 1
        except RateLimitedError:
            pass
    return count


async def test_a_burst_across_the_minute_boundary_gets_the_limit_and_no_more(
    clock: Clock,
) -> None:
    limiter = RateLimiter("memory://")
    limit = Limit("key", "k", "requests", 4)
    assert await admitted(limiter, limit, 6) == 4
    clock.now += 1.0  # the next minute, a second after the burst
    assert await admitted(limiter, limit, 6) == 0
    clock.now += 60.0  # a minute without requests: the whole limit again
    assert await admitted(limiter, limit, 6) == 4


async def test_the_previous_minute_fades_as_the_window_slides(clock: Clock) -> None:
    limiter = RateLimiter("memory://")
    limit = Limit("key", "k", "requests", 6)
    clock.now = MINUTE + 1.0  # six requests early in a minute
    assert await admitted(limiter, limit, 6) == 6
    clock.now = MINUTE + 60 + 30.0  # half of that minute is still inside the window
    assert await admitted(limiter, limit, 6) == 3


async def test_a_refusal_says_when_to_retry(clock: Clock) -> None:
    limiter = RateLimiter("memory://")
    limit = Limit("key", "k", "requests", 2)
    await admitted(limiter, limit, 2)
    clock.now += 1.0
    with pytest.raises(RateLimitedError) as refused:
        await limiter.admit([limit], tokens=1)
    assert 1.0 <= refused.value.retry_after_s <= 60.0
    assert "limit 2" in refused.value.message
