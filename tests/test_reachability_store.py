"""What the reachability store writes inside engine transactions, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg

from gateway.runtime.app import KaskadApp
from gateway.store.cascade import CascadeWrites
from gateway.store.reachability import Observation
from router.domain import Channel, DeliveryOutcome
from tests.conftest import waits_for_a_lock

PHONE = "+79161234567"


async def observe(app: KaskadApp, conn: asyncpg.Connection, observations: list[Observation]) -> None:
    """What an engine transaction does with outcomes: lock and read the people, then write."""
    learnt = await app.reachability.learn(conn, observations)
    await app.cascades.write_batch(conn, CascadeWrites(learnt=learnt), datetime.now(UTC), None)


async def test_two_transactions_observing_one_person_both_count(app: KaskadApp, db) -> None:
    now = datetime.now(UTC)
    first = Observation(PHONE, Channel.VK, DeliveryOutcome.DELIVERED, now)
    second = Observation(PHONE, Channel.VK, DeliveryOutcome.DELIVERED, now + timedelta(seconds=1))
    async with app.pool.acquire() as a, app.pool.acquire() as b:
        in_a, in_b = a.transaction(), b.transaction()
        await in_a.start()
        await observe(app, a, [first])
        await in_b.start()
        observing = asyncio.ensure_future(observe(app, b, [second]))
        await waits_for_a_lock(db, b.get_server_pid())  # it read nothing stale: it waits
        await in_a.commit()
        await observing
        await in_b.commit()

    model = await db.fetchval("SELECT model::text FROM kaskad_reachability WHERE channel = 'vk'")
    assert json.loads(model)["successes"] == 2


async def test_concurrent_misses_share_one_read_and_refill_redis(app: KaskadApp) -> None:
    store = app.reachability
    now = datetime.now(UTC)
    phones = [f"+7916555{i:04d}" for i in range(5)]
    async with app.pool.acquire() as conn, conn.transaction():
        await observe(app, conn, [Observation(phones[0], Channel.VK, DeliveryOutcome.DELIVERED, now)])
    reads: list[list[str]] = []
    read_people = store._read_people

    async def counted(keys: list[str]) -> dict:
        reads.append(sorted(keys))
        return await read_people(keys)

    store._read_people = counted  # type: ignore[method-assign]
    keys = [store.recipient_key(p) for p in phones]

    found = await asyncio.gather(*(store.recipient_from_hot(k, None) for k in keys))

    assert reads == [sorted(keys)]  # five misses, one read
    assert found[0].channels[Channel.VK].successes == 1
    assert not any(f.channels for f in found[1:])
    hot = await app.redis.get_many([store.hot_key(k) for k in keys])
    assert hot is not None and all(h is not None for h in hot)  # refilled, in one pipeline


async def test_a_failed_read_of_misses_fails_each_caller_and_the_next_read_works(app: KaskadApp) -> None:
    store = app.reachability
    read_people = store._read_people

    async def broken(keys: list[str]) -> dict:
        raise asyncpg.InterfaceError("connection lost")

    store._read_people = broken  # type: ignore[method-assign]
    keys = [store.recipient_key(f"+7916666{i:04d}") for i in range(3)]
    misses = (store.recipient_from_hot(k, None) for k in keys)
    outcomes = await asyncio.gather(*misses, return_exceptions=True)
    assert all(isinstance(o, asyncpg.InterfaceError) for o in outcomes), outcomes

    store._read_people = read_people  # type: ignore[method-assign]
    assert not (await store.recipient_from_hot(keys[0], None)).channels


async def test_a_refill_read_before_an_outcome_does_not_overwrite_it(app: KaskadApp) -> None:
    # A planner misses, reads the person's rows, and is slow to refill Redis; meanwhile an
    # outcome commits. Its stale refill must not become the hot copy for the next 24 hours.
    store = app.reachability
    phone = "+79165550001"
    key = store.recipient_key(phone)
    read_people = store._read_people
    read, go_on = asyncio.Event(), asyncio.Event()

    async def slow(keys: list[str]) -> dict:
        found = await read_people(keys)
        read.set()
        await go_on.wait()
        return found

    store._read_people = slow  # type: ignore[method-assign]
    planning = asyncio.ensure_future(store.recipient_from_hot(key, None))
    await read.wait()
    refill = store._miss_reader
    assert refill is not None
    learnt = [Observation(phone, Channel.VK, DeliveryOutcome.DELIVERED, datetime.now(UTC))]
    async with app.pool.acquire() as conn:
        async with conn.transaction():
            await observe(app, conn, learnt)
        await store.committed(learnt)
    go_on.set()
    assert not (await planning).channels  # what it read before the outcome
    await refill  # its refill, after the callers had their answer
    store._read_people = read_people  # type: ignore[method-assign]

    assert (await store.recipient(phone)).channels[Channel.VK].successes == 1
