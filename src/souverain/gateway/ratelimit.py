"""Rate limits per key and per project: requests and tokens per minute.

Counters live in the `limits` library's storage: in memory for one server process, or
Redis (SOUVERAIN_RATE_LIMIT_STORAGE=redis://…) so that every server process shares them.
The strategy is `limits`' sliding window counter, which refills continuously like a token
bucket. It estimates the last minute from the current fixed minute plus the previous one
weighted by how much of it is still inside the window; `limits` rounds that share down,
so a burst that crossed a minute boundary got one request more than its limit (4 at
12:00:59, then a fifth at 12:01:00 because 4 × 0.99 < 4). Here the share is rounded up:
a burst gets exactly its limit wherever it falls. Tokens count the estimated prompt plus
`max_tokens` at admission, as OpenAI documents for its own limits.

Refusals are 429 with `Retry-After`; every answer carries OpenAI-style
`x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers for the tightest limit.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, RateLimitItemPerMinute
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string

from souverain.core.errors import RateLimitedError


@dataclass(frozen=True)
class Limit:
    scope: str  # "key" | "project"
    subject: str  # key id or project id
    kind: str  # "requests" | "tokens"
    per_minute: int


def _storage_uri(uri: str) -> str:
    return uri if uri.startswith("async+") else f"async+{uri}"


def _reset_text(seconds: float) -> str:
    seconds = max(0.0, seconds)
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:.0f}s" if minutes else f"{rest:.2g}s"


class _SlidingWindow(SlidingWindowCounterRateLimiter):
    """The sliding window counter with the previous minute's share rounded up."""

    def _weighted_count(
        self,
        item: RateLimitItem,
        previous_count: int,
        previous_expires_in: float,
        current_count: int,
    ) -> float:
        share = previous_count * previous_expires_in / item.get_expiry()
        return math.ceil(share - 1e-9) + current_count  # 2.0000000001 is still 2


class RateLimiter:
    def __init__(self, storage: str, *, crashes_per_10_minutes: int = 3) -> None:
        options = {"implementation": "redispy"} if "redis" in storage else {}
        self._limiter = _SlidingWindow(storage_from_string(_storage_uri(storage), **options))
        self._items: dict[int, RateLimitItem] = {}
        self._crashes = RateLimitItemPerMinute(crashes_per_10_minutes, multiples=10)

    async def check_crashes(self, key_id: str) -> None:
        """A key whose requests broke engines too often is refused for a while (429): one
        tenant must not keep a shared model down for every other one."""
        if not await self._limiter.test(self._crashes, "souverain", f"crashes:{key_id}"):
            stats = await self._limiter.get_window_stats(
                self._crashes, "souverain", f"crashes:{key_id}"
            )
            wait = max(1.0, stats.reset_time - time.time())
            raise RateLimitedError(
                f"Requests from this key made the model engine fail {self._crashes.amount} times "
                f"in 10 minutes; this key is paused. Retry in {math.ceil(wait)}s.",
                retry_after_s=wait,
            )

    async def note_crash(self, key_id: str) -> None:
        await self._limiter.hit(self._crashes, "souverain", f"crashes:{key_id}")

    def _item(self, per_minute: int) -> RateLimitItem:
        if per_minute not in self._items:
            self._items[per_minute] = RateLimitItemPerMinute(per_minute)
        return self._items[per_minute]

    async def admit(self, limits: list[Limit], *, tokens: int) -> dict[str, str]:
        """Take one request and `tokens` from every limit, or raise 429. Returns headers."""
        if not limits:
            return {}
        for limit in limits:
            cost = 1 if limit.kind == "requests" else tokens
            if cost > limit.per_minute:
                raise RateLimitedError(
                    f"This request needs {cost} {limit.kind} but the {limit.scope} limit is "
                    f"{limit.per_minute} per minute; lower max_tokens.",
                    retry_after_s=60,
                )
            if not await self._limiter.test(self._item(limit.per_minute), *_ids(limit), cost=cost):
                raise await self._refusal(limit)
        for limit in limits:
            cost = 1 if limit.kind == "requests" else tokens
            await self._limiter.hit(self._item(limit.per_minute), *_ids(limit), cost=cost)
        return await self.headers(limits)

    async def _refusal(self, limit: Limit) -> RateLimitedError:
        stats = await self._limiter.get_window_stats(self._item(limit.per_minute), *_ids(limit))
        wait = max(1.0, stats.reset_time - time.time())
        return RateLimitedError(
            f"Rate limit reached for {limit.kind} per minute on this {limit.scope} "
            f"(limit {limit.per_minute}). Retry in {math.ceil(wait)}s.",
            retry_after_s=wait,
            headers=await self.headers([limit]),
        )

    async def headers(self, limits: list[Limit]) -> dict[str, str]:
        headers: dict[str, str] = {}
        for kind in ("requests", "tokens"):
            tightest = min(
                (lim for lim in limits if lim.kind == kind),
                key=lambda lim: lim.per_minute,
                default=None,
            )
            if tightest is None:
                continue
            stats = await self._limiter.get_window_stats(
                self._item(tightest.per_minute), *_ids(tightest)
            )
            headers[f"x-ratelimit-limit-{kind}"] = str(tightest.per_minute)
            headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, stats.remaining))
            headers[f"x-ratelimit-reset-{kind}"] = _reset_text(stats.reset_time - time.time())
        return headers


def _ids(limit: Limit) -> tuple[str, str, str]:
    return ("souverain", f"{limit.scope}:{limit.subject}", limit.kind)
