"""The Redis connection: hot data and shared limits, never the truth.

Kaskad keeps working when Redis is down (PostgreSQL is the truth); this object tracks
whether Redis answers, so health checks can report the service as degraded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)


class RedisLink:
    def __init__(self, url: str, key_prefix: str, gather_delay: float = 0.0005) -> None:
        self.client: aioredis.Redis = aioredis.Redis.from_url(
            url, socket_connect_timeout=1.0, socket_timeout=1.0, health_check_interval=10
        )
        self.key_prefix = key_prefix
        self.healthy = False
        self._queued: list[tuple[list[str], asyncio.Future[list[bytes | None] | None]]] = []
        self._reader: asyncio.Task[None] | None = None
        self._gather_delay = gather_delay
        self._last_read = float("-inf")

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
        """Several GETs in one round trip; None when Redis is down or fails (callers fall back).

        Concurrent calls share round trips: while one ``MGET`` is under way, the keys of
        the calls arriving meanwhile are gathered into the next one, and a call that finds
        no read under way waits ``gather_delay`` for others to join it, but only when the
        last read ended less than that long ago (a busy gateway): an idle one reads at once.
        A busy accept path reads from Redis for every request, and each command costs the
        event loop far more than each key does.
        """
        if not self.healthy:
            return None
        future: asyncio.Future[list[bytes | None] | None] = asyncio.get_running_loop().create_future()
        self._queued.append((keys, future))
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_queued(), name="kaskad-redis-mget")
        return await future

    async def _read_queued(self) -> None:
        batch: list[tuple[list[str], asyncio.Future[list[bytes | None] | None]]] = []
        try:
            if self._gather_delay and time.monotonic() - self._last_read < self._gather_delay:
                await asyncio.sleep(self._gather_delay)  # a batching window, not a business timer
            while self._queued:
                batch, self._queued = self._queued, []
                try:
                    values = await self.client.mget([key for keys, _ in batch for key in keys])
                except (RedisError, OSError) as exc:
                    log.warning("Redis read failed, falling back: %s", exc)
                    values = None
                start = 0
                for keys, future in batch:
                    if not future.done():
                        future.set_result(
                            None
                            if values is None
                            else [
                                v.encode() if isinstance(v, str) else v
                                for v in values[start : start + len(keys)]
                            ]
                        )
                    start += len(keys)
        finally:
            self._reader = None
            self._last_read = time.monotonic()
            for _, future in [*batch, *self._queued]:  # only when interrupted: nobody waits forever
                if not future.done():
                    future.set_result(None)
            self._queued = []

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
        [value] = await self.add_many([(key, amount)], ttl_seconds)
        return value

    async def add_many(self, adds: Sequence[tuple[str, int]], ttl_seconds: int) -> list[int]:
        """:meth:`add` for each (key, amount) in order, in one round trip; the count after each.

        A key may come more than once: each add sees the ones before it, as separate calls would.
        """
        if not adds:
            return []
        if self._redis.healthy:
            try:
                async with self._redis.client.pipeline(transaction=True) as pipe:
                    for key, amount in adds:
                        full = self._redis.key(key)
                        pipe.incrby(full, amount)
                        pipe.expire(full, ttl_seconds)
                    replies = await pipe.execute()
                return [int(value) for value in replies[::2]]
            except (RedisError, OSError) as exc:
                log.warning("Redis count failed, counting in this process: %s", exc)
        return [self._add_locally(key, amount, ttl_seconds) for key, amount in adds]

    def _add_locally(self, key: str, amount: int, ttl_seconds: int) -> int:
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
