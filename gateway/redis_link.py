"""The Redis connection: hot data and shared limits, never the truth.

Kaskad keeps working when Redis is down (PostgreSQL is the truth); this object tracks
whether Redis answers, so health checks can report the service as degraded.
"""

from __future__ import annotations

import logging

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
