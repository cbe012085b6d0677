"""Provider rate limits shared by every gateway process through Redis.

Providers cap how fast a sender may send (a VK group: about 50 messages per second) and
how often one person may be messaged (VK: 5 per person per day). Both are counted in
Redis so that all gateway processes share them:

- **Per second, per provider.** A submit that would exceed it is not sent: its work item
  is handed back with a due time in the next second (a durable timer, not a sleep).
- **Per person per day, per provider.** The planner treats a person who reached it as
  unavailable on that provider for the rest of the (UTC) day, and says so in the plan.

With Redis down, each process counts on its own: limits then hold per process, which
is the best that can be done without shared state, and is logged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from gateway.core.config import ConfigError
from gateway.store.redis_link import RedisLink, SharedCounters


@dataclass(frozen=True, slots=True)
class ProviderLimit:
    """0 means no limit (``concurrency``: the gateway-wide ``provider_concurrency``)."""

    per_second: int = 0
    per_recipient_per_day: int = 0
    # Calls in flight to the provider per gateway process.
    concurrency: int = 0


# From the providers' published limits (shared/domain.md); contracts may differ: configure.
DEFAULT_LIMITS: Mapping[str, ProviderLimit] = {
    "vk": ProviderLimit(per_second=50, per_recipient_per_day=5),
}


def limits_from_config(raw: Mapping[str, Mapping[str, object]]) -> dict[str, ProviderLimit]:
    """``[rate_limits.NAME]`` tables over the defaults; bad values stop the start."""
    limits = dict(DEFAULT_LIMITS)
    for provider, table in raw.items():
        unknown = set(table) - {"per_second", "per_recipient_per_day", "concurrency"}
        if unknown:
            raise ConfigError(f"rate_limits.{provider} has unknown keys: {', '.join(sorted(unknown))}")
        values: dict[str, int] = {}
        for key, value in table.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"rate_limits.{provider}.{key} must be a whole number >= 0 (0: no limit)")
            values[key] = value
        limits[provider] = ProviderLimit(**values)
    return limits


class ProviderRateLimits:
    def __init__(self, redis: RedisLink, limits: Mapping[str, ProviderLimit]) -> None:
        self._redis = redis
        self._limits = limits
        self._counters = SharedCounters(redis)

    def limit(self, provider: str) -> ProviderLimit:
        return self._limits.get(provider, ProviderLimit())

    async def acquire_many(self, providers: Sequence[str], now: datetime) -> list[timedelta | None]:
        """Take one send from this second's budget of each provider in order (a provider may
        come more than once), in one Redis round trip for the lot: None for a send within its
        budget, else the wait until the next second."""
        second = int(now.timestamp())
        budgeted = [p for p in providers if self.limit(p).per_second]
        used = iter(
            await self._counters.add_many([(f"rate:{p}:{second}", 1) for p in budgeted], ttl_seconds=5)
        )
        next_second = timedelta(seconds=second + 1 - now.timestamp())
        waits: list[timedelta | None] = []
        for provider in providers:
            per_second = self.limit(provider).per_second
            waits.append(None if not per_second or next(used) <= per_second else next_second)
        return waits

    async def recipient_full(self, provider: str, recipient_key: str, now: datetime) -> bool:
        """True when this person already got the provider's daily maximum today (UTC)."""
        per_day = self.limit(provider).per_recipient_per_day
        if not per_day:
            return False
        return await self._counters.read(self._day_key(provider, recipient_key, now)) >= per_day

    async def count_recipients(self, sent: Sequence[tuple[str, str]], now: datetime) -> None:
        """Count one message sent today to each (provider, recipient key), in one Redis round trip."""
        await self._counters.add_many(
            [(self._day_key(p, r, now), 1) for p, r in sent if self.limit(p).per_recipient_per_day],
            ttl_seconds=2 * 86400,
        )

    @staticmethod
    def _day_key(provider: str, recipient_key: str, now: datetime) -> str:
        # Not f"{now:%Y%m%d}": strftime showed in the accept path's profile.
        return f"daily:{provider}:{now.year:04d}{now.month:02d}{now.day:02d}:{recipient_key}"

    def daily_redis_key(self, provider: str, recipient_key: str, now: datetime) -> str:
        """The Redis key of this person's count today (for batched reads by the planner)."""
        return self._redis.key(self._day_key(provider, recipient_key, now))

    def is_full(self, provider: str, count: bytes | None) -> bool:
        """Whether a daily count read from Redis reached the provider's cap."""
        per_day = self.limit(provider).per_recipient_per_day
        return bool(per_day) and int(count or 0) >= per_day
