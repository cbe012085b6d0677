"""The providers' circuit breakers shared by every gateway process through Redis.

One hash per provider holds its consecutive failures and, once tripped, the time its
breaker is open until (wall-clock milliseconds, so every process reads the same moment);
a tripped breaker past that time is half-open, and its one probe is whoever sets the
probe key first (``SET NX`` with an expiry, so a probe whose process died frees the slot).
Every step is one Lua script, atomic in Redis. With Redis down, each process's own
breaker decides (``providers.breaker.ProviderBreaker``), the best that can be done
without shared state.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import timedelta

from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from gateway.store.redis_link import RedisLink
from providers.breaker import BreakerState, BreakerStoreUnavailable, SharedView

# Each script answers {state (0 closed, 1 half-open, 2 open), retry in ms, failures, probe}.
# KEYS[1]: the provider's hash (fails, open_until), KEYS[2]: its probe token; ARGV[1]: now in ms.
_READ = """
local h = redis.call('HMGET', KEYS[1], 'open_until', 'fails')
local fails = tonumber(h[2] or '0')
if not h[1] then return {0, 0, fails, 0} end
local now, open_until = tonumber(ARGV[1]), tonumber(h[1])
if now < open_until then return {2, open_until - now, fails, 0} end
"""

_ALLOW = (
    _READ
    + """
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {1, 0, fails, 1} end
return {1, math.max(redis.call('PTTL', KEYS[2]), 0), fails, 0}
"""
)

_PEEK = (
    _READ
    + """
return {1, math.max(redis.call('PTTL', KEYS[2]), 0), fails, 0}
"""
)

# ARGV: now, probe token ('' for none), threshold, cool-down ms, key ttl ms.
_FAILURE = """
local now, cool = tonumber(ARGV[1]), tonumber(ARGV[4])
local open_until = redis.call('HGET', KEYS[1], 'open_until')
if open_until then
    if ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2] then
        redis.call('HSET', KEYS[1], 'open_until', now + cool)
        redis.call('DEL', KEYS[2])
        redis.call('PEXPIRE', KEYS[1], ARGV[5])
        return {2, cool, 0, 0}
    end
    -- A call admitted before the breaker opened: the probe decides, not it.
    open_until = tonumber(open_until)
    if now < open_until then return {2, open_until - now, 0, 0} end
    return {1, math.max(redis.call('PTTL', KEYS[2]), 0), 0, 0}
end
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
if fails >= tonumber(ARGV[3]) then
    redis.call('HSET', KEYS[1], 'open_until', now + cool, 'fails', 0)
    return {2, cool, 0, 0}
end
return {0, 0, fails, 0}
"""

# ARGV: now, probe token ('' for none).
_SUCCESS = """
local open_until = redis.call('HGET', KEYS[1], 'open_until')
local probe = ARGV[2] ~= '' and redis.call('GET', KEYS[2]) == ARGV[2]
if open_until and not probe and tonumber(ARGV[1]) < tonumber(open_until) then
    -- A slow call admitted before the breaker opened: the probe decides, not it.
    return {2, tonumber(open_until) - tonumber(ARGV[1]), 0, 0}
end
redis.call('DEL', KEYS[1])
if probe or open_until then redis.call('DEL', KEYS[2]) end
return {0, 0, 0, 0}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""

_STATES = (BreakerState.CLOSED, BreakerState.HALF_OPEN, BreakerState.OPEN)


class RedisBreakerStore:
    """:class:`providers.breaker.BreakerStore` in Redis, under the gateway's key prefix.

    ``now``: wall-clock seconds (every process must agree on it, unlike a monotonic clock);
    tests inject their own. ``key_ttl``: an idle provider's keys expire after this."""

    def __init__(
        self,
        redis: RedisLink,
        now: Callable[[], float] = time.time,
        key_ttl: timedelta = timedelta(days=1),
    ) -> None:
        self._redis = redis
        self._now = now
        self._key_ttl_ms = int(key_ttl.total_seconds() * 1000)
        client = redis.client
        self._allow = client.register_script(_ALLOW)
        self._peek = client.register_script(_PEEK)
        self._failure = client.register_script(_FAILURE)
        self._success = client.register_script(_SUCCESS)
        self._release = client.register_script(_RELEASE)

    async def allow(self, provider: str, token: str, probe_ttl_s: float) -> SharedView:
        return await self._view(self._allow, provider, [token, _ms(probe_ttl_s)])

    async def failure(
        self, provider: str, token: str | None, threshold: int, cool_down_s: float
    ) -> SharedView:
        args: list[str | int] = [token or "", threshold, _ms(cool_down_s), self._key_ttl_ms]
        return await self._view(self._failure, provider, args)

    async def success(self, provider: str, token: str | None) -> SharedView:
        return await self._view(self._success, provider, [token or ""])

    async def release(self, provider: str, token: str) -> None:
        await self._run(self._release, [self._redis.key("breaker", provider, "probe")], [token])

    async def read(self, provider: str) -> SharedView:
        return await self._view(self._peek, provider, [])

    async def _view(self, script: AsyncScript, provider: str, args: Sequence[str | int]) -> SharedView:
        keys = [self._redis.key("breaker", provider), self._redis.key("breaker", provider, "probe")]
        state, retry_ms, failures, probe = await self._run(script, keys, [_ms(self._now()), *args])
        return SharedView(_STATES[int(state)], int(retry_ms) / 1000, int(failures), bool(probe))

    async def _run(self, script: AsyncScript, keys: list[str], args: list[str | int]) -> list[int]:
        if not self._redis.healthy:
            raise BreakerStoreUnavailable("Redis is unreachable")
        try:
            reply = await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise BreakerStoreUnavailable(f"Redis failed: {exc}") from exc
        return [int(value) for value in reply] if isinstance(reply, list) else []


def _ms(seconds: float) -> int:
    return int(seconds * 1000)
