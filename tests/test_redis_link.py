"""RedisLink.get_many: concurrent reads share round trips, each caller gets its own values."""

from __future__ import annotations

import asyncio
import uuid

from gateway.store.redis_link import RedisLink


async def test_concurrent_reads_each_get_their_own_values(redis_url: str) -> None:
    link = RedisLink(redis_url, f"link-{uuid.uuid4().hex[:6]}:")
    try:
        assert await link.check()
        keys = [link.key(f"k{i}") for i in range(30)]
        await link.client.mset({key: f"v{i}" for i, key in enumerate(keys) if i % 3})
        asks = [keys[i : i + 1 + i % 4] for i in range(25)]

        answers = await asyncio.gather(*(link.get_many(ask) for ask in asks))

        for ask, answer in zip(asks, answers, strict=True):
            expected = [
                None if int(k.rsplit("k", 1)[1]) % 3 == 0 else f"v{k.rsplit('k', 1)[1]}".encode() for k in ask
            ]
            assert answer == expected
        assert await link.get_many([]) == []
    finally:
        await link.aclose()


async def test_reads_fall_back_when_redis_is_down() -> None:
    link = RedisLink("redis://127.0.0.1:1/0", "down:")
    try:
        assert not await link.check()
        assert await link.get_many(["a", "b"]) is None
        link.healthy = True  # it answered a moment ago; the read itself fails now
        assert await asyncio.gather(link.get_many(["a"]), link.get_many(["b", "c"])) == [None, None]
    finally:
        await link.aclose()


async def test_an_idle_link_reads_at_once(redis_url: str) -> None:
    # Waiting for company pays only on a busy gateway: with no read lately, an hour's
    # gathering window is not waited for.
    link = RedisLink(redis_url, f"link-{uuid.uuid4().hex[:6]}:", gather_delay=3600)
    try:
        assert await link.check()
        await link.client.set(link.key("k"), "v")

        assert await link.get_many([link.key("k")]) == [b"v"]
    finally:
        await link.aclose()
