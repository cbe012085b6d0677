"""Counters shared through Redis (quotas, rate limits), and their fallback when Redis is down."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from gateway.store.rate_limits import ProviderLimit, ProviderRateLimits
from gateway.store.redis_link import RedisLink, SharedCounters


async def test_counts_are_shared_between_processes_through_redis(redis_url: str) -> None:
    prefix = f"counters-{uuid.uuid4().hex[:6]}:"
    first, second = RedisLink(redis_url, prefix), RedisLink(redis_url, prefix)
    try:
        assert await first.check() and await second.check()
        a, b = SharedCounters(first), SharedCounters(second)
        assert await a.add("k", 2, ttl_seconds=5) == 2
        assert await b.add("k", 3, ttl_seconds=5) == 5
        assert await a.read("k") == 5
        assert await b.read("other") == 0
    finally:
        await first.aclose()
        await second.aclose()


async def test_with_redis_down_each_process_counts_alone_and_counts_expire() -> None:
    link = RedisLink("redis://127.0.0.1:1/0", "down:")
    now = [100.0]
    try:
        assert not await link.check()
        counters = SharedCounters(link, clock=lambda: now[0])
        assert await counters.add("k", 1, ttl_seconds=5) == 1
        assert await counters.add("k", 1, ttl_seconds=5) == 2
        assert await counters.read("k") == 2
        now[0] += 5
        assert await counters.read("k") == 0
        assert await counters.add("k", 1, ttl_seconds=5) == 1
    finally:
        await link.aclose()


async def test_many_adds_in_one_round_trip_count_as_one_after_another(redis_url: str) -> None:
    link = RedisLink(redis_url, f"counters-{uuid.uuid4().hex[:6]}:")
    down = RedisLink("redis://127.0.0.1:1/0", "down:")
    try:
        assert await link.check() and not await down.check()
        for counters in (SharedCounters(link), SharedCounters(down)):  # shared, and the fallback
            assert await counters.add_many([("a", 1), ("b", 5), ("a", 2), ("a", 1)], ttl_seconds=5) == [
                1,
                5,
                3,
                4,
            ]
            assert await counters.add_many([], ttl_seconds=5) == []
            assert (await counters.read("a"), await counters.read("b")) == (4, 5)
    finally:
        await link.aclose()
        await down.aclose()


async def test_a_round_of_sends_takes_each_providers_budget_in_order(redis_url: str) -> None:
    link = RedisLink(redis_url, f"limits-{uuid.uuid4().hex[:6]}:")
    try:
        assert await link.check()
        limits = ProviderRateLimits(link, {"sms": ProviderLimit(per_second=2), "vk": ProviderLimit()})
        now = datetime(2026, 11, 26, 12, 0, 0, 250_000, tzinfo=UTC)

        waits = await limits.acquire_many(["sms", "vk", "sms", "sms", "vk"], now)

        # vk has no budget; the third sms of this second waits for the next one.
        assert waits == [None, None, None, timedelta(milliseconds=750), None]
    finally:
        await link.aclose()
