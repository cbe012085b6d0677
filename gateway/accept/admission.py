"""Backpressure at the door: refuse new work before the backlog or a client's share grows unbounded.

Two limits, both answered with ``RESOURCE_EXHAUSTED`` and a ``RetryInfo`` delay, before
anything is written (so a refused call loses nothing: the caller retries it later):

- **Backlog.** When more work items are due than ``max_backlog``, the workers are behind;
  accepting more would only grow the queue (and memory) without bound. The count is
  sampled every second by a background task, not queried on every call.
- **Per-client quota.** Each calling service may accept at most
  ``client_quota_per_second`` notifications per second, counted in Redis so every gateway
  process shares the limit. With Redis down, each process counts on its own.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.core.clock import Clock
from gateway.core.errors import ResourceExhausted
from gateway.core.telemetry import QueueSnapshot
from gateway.store.redis_link import RedisLink, SharedCounters
from gateway.store.work_queue import WorkQueue
from router.domain import ClientId


class Admission:
    def __init__(
        self,
        queue: WorkQueue,
        redis: RedisLink,
        clock: Clock,
        *,
        max_backlog: int,
        client_quota_per_second: int,
    ) -> None:
        self._queue = queue
        self._clock = clock
        self._max_backlog = max_backlog
        self._quota = client_quota_per_second
        self.backlog = 0
        self._oldest_due_age: timedelta | None = None
        self._counters = SharedCounters(redis)

    async def sample(self) -> int:
        """Refresh the backlog figure (the sampler task calls this every second)."""
        now = self._clock.now()
        sampled = await self._queue.backlog(now)
        self.backlog = sampled.due
        self._oldest_due_age = None if sampled.oldest_due is None else now - sampled.oldest_due
        return self.backlog

    def snapshot(self) -> QueueSnapshot:
        """The last sampled queue figures, for the work-queue gauges."""
        return QueueSnapshot(due=self.backlog, oldest_due_age=self._oldest_due_age)

    async def admit(self, client_id: ClientId, count: int) -> None:
        """Let ``count`` new notifications of this client in, or raise :class:`ResourceExhausted`."""
        if self._max_backlog and self.backlog + count > self._max_backlog:
            raise ResourceExhausted(
                f"Kaskad is behind: {self.backlog} work items are due "
                f"(limit {self._max_backlog}); retry later",
                retry_after=timedelta(seconds=2),
            )
        if self._quota:
            await self._take_quota(client_id, count, self._clock.now())
        # Count what this process lets in until the next sample, so a burst cannot overshoot.
        self.backlog += count

    async def _take_quota(self, client_id: ClientId, count: int, now: datetime) -> None:
        window = int(now.timestamp())
        used = await self._count(client_id, window, count)
        if used > self._quota:
            retry = timedelta(seconds=window + 1 - now.timestamp())
            raise ResourceExhausted(
                f"this client is over its quota of {self._quota} notifications per second; retry later",
                retry_after=max(retry, timedelta(milliseconds=100)),
            )

    async def _count(self, client_id: ClientId, window: int, count: int) -> int:
        return await self._counters.add(f"quota:{client_id}:{window}", count, ttl_seconds=5)
