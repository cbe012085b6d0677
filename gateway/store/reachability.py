"""What Kaskad has learned about reaching people: PostgreSQL holds the truth, Redis a hot copy.

- Per recipient and channel: one row in ``kaskad_reachability``, updated in the same
  transaction as the outcome that taught it. The phone appears only as a keyed hash.
  The planner reads Redis first; on a miss or with Redis down it reads PostgreSQL and
  goes on (and refills Redis when it can). A refill must not put back what an outcome
  committed meanwhile made stale: after each commit the person's copy is replaced by a
  short-lived tombstone (an empty value, read as a miss), and a refill writes only
  where no value is (``SET NX``), so a refill read before the commit finds the tombstone.
- Channel-wide stats (the priors and the delivery-report latency): observations are
  buffered in memory and merged into ``kaskad_channel_stats`` every few seconds by
  :meth:`ReachabilityStore.flush`, because one row per channel updated by every outcome
  would serialise all cascades on a single lock. A crash loses at most the unflushed
  seconds of priors, never a person's facts.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg
from redis.exceptions import RedisError

from gateway.store import json_codec
from gateway.store.postgres import transient_as_unavailable
from gateway.store.queries import Queries
from gateway.store.redis_link import RedisLink
from router.domain import Channel, DeliveryOutcome
from router.reachability import ChannelReachability, ReachabilitySettings, RecipientReachability, TrafficStats

log = logging.getLogger(__name__)

_HOT_TTL_SECONDS = 24 * 3600
# Longer than any refill takes from its read of PostgreSQL to its write to Redis.
_TOMBSTONE_TTL_SECONDS = 10
_TOMBSTONE = b""


@dataclass(frozen=True, slots=True)
class Observation:
    """One outcome to learn from (see :class:`router.cascade.RecordObservation`)."""

    phone: str
    channel: Channel
    outcome: DeliveryOutcome
    at: datetime
    latency: timedelta | None = None
    reason: str | None = None
    after_timeout: bool = False


@dataclass(frozen=True, slots=True)
class ReachabilityRow:
    """A person's ``kaskad_reachability`` row for one channel, as :meth:`ReachabilityStore.learn`
    computed it: the model as JSON text."""

    recipient_key: str
    channel: str
    model: str
    updated_at: datetime


@dataclass
class _PendingTraffic:
    # (channel, outcome, latency, after_timeout)
    observations: list[tuple[Channel, DeliveryOutcome, timedelta | None, bool]] = field(default_factory=list)


class ReachabilityStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        queries: Queries,
        redis: RedisLink,
        hash_key: str,
        settings: ReachabilitySettings | None = None,
        traffic_refresh: timedelta = timedelta(seconds=5),
    ) -> None:
        self._pool = pool
        self._q = queries
        self._redis = redis
        self._hash_key = hash_key.encode()
        self.settings = settings or ReachabilitySettings()
        self._pending = _PendingTraffic()
        self._traffic = TrafficStats()
        self._traffic_loaded_at: datetime | None = None
        self._traffic_refresh = traffic_refresh
        self._missed: dict[str, list[asyncio.Future[RecipientReachability]]] = {}
        self._miss_reader: asyncio.Task[None] | None = None

    def recipient_key(self, phone: str) -> str:
        """A keyed hash standing for the phone number in reachability rows and Redis keys."""
        return hmac.new(self._hash_key, phone.encode(), hashlib.sha256).hexdigest()

    def hot_key(self, recipient_key: str) -> str:
        """The Redis key of this person's hot copy (for batched reads by the planner)."""
        return self._redis.key("reach", recipient_key)

    async def recipient(self, phone: str) -> RecipientReachability:
        """What is known about this person: Redis first, PostgreSQL when Redis misses or is down."""
        key = self.recipient_key(phone)
        values = await self._redis.get_many([self.hot_key(key)])
        return await self.recipient_from_hot(key, None if values is None else values[0])

    async def recipient_from_hot(self, key: str, cached: bytes | None) -> RecipientReachability:
        """From the hot copy already read from Redis, else from PostgreSQL (refilling Redis).

        The misses of concurrent accepts share reads: while one read is under way, the
        people missed meanwhile are gathered into the next one, and each read refills
        Redis in one pipeline. A busy accept path misses for every new recipient."""
        if cached:  # None: not in Redis; the tombstone: just learnt, read the truth
            return RecipientReachability.from_dict(json_codec.loads(cached))
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RecipientReachability] = loop.create_future()
        self._missed.setdefault(key, []).append(future)
        if self._miss_reader is None:
            self._miss_reader = asyncio.create_task(self._read_missed(), name="kaskad-reachability-misses")
        return await future

    async def _read_missed(self) -> None:
        batch: dict[str, list[asyncio.Future[RecipientReachability]]] = {}
        try:
            while self._missed:
                batch, self._missed = self._missed, {}
                try:
                    known = await self._read_people(list(batch))
                except Exception as exc:
                    for futures in batch.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(exc)
                    continue
                for key, futures in batch.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(known[key])
                await self._cache(known)  # after the callers have their answer
        finally:
            self._miss_reader = None
            for futures in [*batch.values(), *self._missed.values()]:  # only when interrupted
                for future in futures:
                    if not future.done():
                        future.cancel()
            self._missed = {}

    async def _read_people(self, keys: list[str]) -> dict[str, RecipientReachability]:
        with transient_as_unavailable():  # the accept path's read: its callers hear UNAVAILABLE
            async with self._pool.acquire() as conn:
                rows = await conn.fetch(self._q.get_reachabilities, keys)
        channels: dict[str, dict[Channel, ChannelReachability]] = {key: {} for key in keys}
        for r in rows:
            channels[r["recipient_key"]][Channel(r["channel"])] = ChannelReachability.from_dict(r["model"])
        return {key: RecipientReachability(known) for key, known in channels.items()}

    async def _cache(self, people: dict[str, RecipientReachability]) -> None:
        if not self._redis.healthy or not people:
            return
        try:
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for key, known in people.items():
                    # NX: an outcome committed since this read left a tombstone here.
                    pipe.set(
                        self.hot_key(key), json_codec.dumps(known.to_dict()), ex=_HOT_TTL_SECONDS, nx=True
                    )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("Redis write failed: %s", exc)

    async def learn(
        self, conn: asyncpg.Connection, observations: Sequence[Observation]
    ) -> list[ReachabilityRow]:
        """The people's rows after these outcomes (in order), for the caller to write in the same
        transaction (:meth:`gateway.store.cascade.CascadeStore.write_batch`). Once it has
        committed, pass the same observations to :meth:`committed`.

        One call reads the people's rows, each person locked before it until the caller's
        transaction ends (two transactions observing one person apply one after the other,
        and neither outcome is lost). Engine transactions take these locks last, after their
        notification rows, so no lock order can cross. Rows come sorted (person, channel).
        """
        if not observations:
            return []
        keys = {phone: self.recipient_key(phone) for phone in {o.phone for o in observations}}
        rows = await conn.fetch(self._q.locked_reachabilities, list(keys.values()))
        models = {(r["recipient_key"], r["channel"]): r["model"] for r in rows}
        updated: dict[tuple[str, str], ChannelReachability] = {}
        learnt_at: dict[tuple[str, str], datetime] = {}
        for o in observations:
            slot = (keys[o.phone], o.channel.value)
            current = updated.get(slot)
            if current is None:
                current = (
                    ChannelReachability.from_dict(models[slot]) if slot in models else ChannelReachability()
                )
            updated[slot] = current.observe(
                o.outcome, o.at, self.settings, o.reason, after_timeout=o.after_timeout, latency=o.latency
            )
            learnt_at[slot] = o.at
        return [
            ReachabilityRow(key, channel, json_codec.dumps(model.to_dict()), learnt_at[(key, channel)])
            for (key, channel), model in sorted(updated.items())
        ]

    async def committed(self, observations: Sequence[Observation]) -> None:
        """After the transaction of :meth:`learn` committed: the people's Redis copies
        become tombstones (a copy dropped earlier, or merely deleted, could be refilled from
        the old rows by a read under way), and the outcomes join the buffered channel-wide
        stats (added earlier, a rolled-back transaction retried would count them twice)."""
        if not observations:
            return
        self._pending.observations.extend(
            (o.channel, o.outcome, o.latency, o.after_timeout) for o in observations
        )
        if not self._redis.healthy:
            return
        keys = {self.hot_key(self.recipient_key(phone)) for phone in {o.phone for o in observations}}
        try:
            async with self._redis.client.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.set(key, _TOMBSTONE, ex=_TOMBSTONE_TTL_SECONDS)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("Redis write failed: %s", exc)

    async def traffic(self, now: datetime) -> TrafficStats:
        """Channel-wide stats, reloaded from PostgreSQL every few seconds."""
        if self._traffic_loaded_at is None or now - self._traffic_loaded_at >= self._traffic_refresh:
            with transient_as_unavailable():
                async with self._pool.acquire() as conn:
                    rows = await conn.fetch(self._q.get_channel_stats)
            self._traffic = TrafficStats.from_dict(
                {"version": 1, "channels": {r["channel"]: r["model"] for r in rows}}
            )
            self._traffic_loaded_at = now
        return self._traffic

    async def flush(self, now: datetime) -> int:
        """Merge buffered channel-wide observations into PostgreSQL; returns how many."""
        pending, self._pending = self._pending, _PendingTraffic()
        if not pending.observations:
            return 0
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(self._q.lock_channel_stats)
                stats = TrafficStats.from_dict(
                    {"version": 1, "channels": {r["channel"]: r["model"] for r in rows}}
                )
                for channel, outcome, latency, after_timeout in pending.observations:
                    stats = stats.observe(
                        channel, outcome, latency, self.settings, after_timeout=after_timeout
                    )
                for channel, channel_stats in stats.channels.items():
                    await conn.execute(
                        self._q.upsert_channel_stats, channel.value, channel_stats.to_dict(), now
                    )
        except BaseException:
            # Put them back so the next flush tries again.
            self._pending.observations[:0] = pending.observations
            raise
        self._traffic_loaded_at = None
        return len(pending.observations)
