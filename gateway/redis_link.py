"""The Redis connection: hot data and shared limits, never the truth.

Kaskad keeps working when Redis is down (PostgreSQL is the truth); this object tracks
whether Redis answers, so health checks can report the service as degraded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class RedisLink:
    def __init__(self, url: str, key_prefix: str) -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=1.0, health_check_interval=10
        )
        self.key_prefix = key_prefix
        self.healthy = False

    def key(self, *parts: str) -> str:
        return self.key_prefix + ":".join(parts)

    async def check(self) -> bool:
        """Ping Redis and remember the answer; logs only when the state changes."""
        try:
            ok = bool(await self.client.ping())
        except (RedisError, OSError) as exc:
            if self.healthy:
                log.warning("Redis is unreachable, running degraded: %s", exc)
            ok = False
        else:
            if not self.healthy:
                log.info("Redis is reachable")
        self.healthy = ok
        return ok

    async def get_many(self, keys: list[str]) -> list[bytes | None] | None:
        """Several GETs in one round trip; None when Redis is down or fails (callers fall back)."""
        if not self.healthy:
            return None
        try:
            values = await self.client.mget(keys)
        except (RedisError, OSError) as exc:
            log.warning("Redis read failed, falling back: %s", exc)
            return None
        return [v.encode() if isinstance(v, str) else v for v in values]

    async def aclose(self) -> None:
        await self.client.aclose()


class SharedCounters:
    """Expiring counters shared by every gateway process through Redis (quotas, rate limits).

    With Redis down each process counts on its own (logged): a limit then holds per process,
    the best that can be done without shared state. The local counts expire like Redis's.
    """

    def __init__(self, redis: RedisLink, clock: Callable[[], float] = time.monotonic) -> None:
        self._redis = redis
        self._clock = clock
        self._local: dict[str, tuple[int, float]] = {}

    async def add(self, key: str, amount: int, ttl_seconds: int) -> int:
        """Add ``amount`` to ``key``, which expires ``ttl_seconds`` after the last add; the new count."""
        if self._redis.healthy:
            full = self._redis.key(key)
            try:
                async with self._redis.client.pipeline(transaction=True) as pipe:
                    pipe.incrby(full, amount)
                    pipe.expire(full, ttl_seconds)
                    value, _ = await pipe.execute()
                return int(value)
            except (RedisError, OSError) as exc:
                log.warning("Redis count failed, counting in this process: %s", exc)
        now = self._clock()
        if len(self._local) > 10_000:  # bounded: drop what has expired
            self._local = {k: v for k, v in self._local.items() if v[1] > now}
        value, expires = self._local.get(key, (0, now))
        if expires <= now:
            value = 0
        self._local[key] = (value + amount, now + ttl_seconds)
        return value + amount

    async def read(self, key: str) -> int:
        if self._redis.healthy:
            try:
                return int(await self._redis.client.get(self._redis.key(key)) or 0)
            except (RedisError, OSError) as exc:
                log.warning("Redis read failed, counting in this process: %s", exc)
        value, expires = self._local.get(key, (0, 0.0))
        return value if expires > self._clock() else 0
