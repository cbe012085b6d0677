"""Counters shared through Redis (quotas, rate limits), and their fallback when Redis is down."""

from __future__ import annotations

import uuid

from gateway.redis_link import RedisLink, SharedCounters


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
