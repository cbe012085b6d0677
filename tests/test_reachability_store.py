"""What the reachability store writes inside engine transactions, on real PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import asyncpg

from gateway.app import KaskadApp
from gateway.reachability_store import Observation
from router.domain import Channel
from router.reachability import DeliveryOutcome

PHONE = "+79161234567"


async def _waits_for_a_lock(db: asyncpg.Connection, pid: int) -> None:
    for _ in range(400):
        waiting = await db.fetchval("SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid)
        if waiting == "Lock":
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the second transaction never waited for the first")


async def test_two_transactions_observing_one_person_both_count(app: KaskadApp, db) -> None:
    now = datetime.now(UTC)
    first = Observation(PHONE, Channel.VK, DeliveryOutcome.DELIVERED, now)
    second = Observation(PHONE, Channel.VK, DeliveryOutcome.DELIVERED, now + timedelta(seconds=1))
    async with app.pool.acquire() as a, app.pool.acquire() as b:
        in_a, in_b = a.transaction(), b.transaction()
        await in_a.start()
        await app.reachability.observe_many(a, [first])
        await in_b.start()
        observing = asyncio.ensure_future(app.reachability.observe_many(b, [second]))
        await _waits_for_a_lock(db, b.get_server_pid())  # it read nothing stale: it waits
        await in_a.commit()
        await observing
        await in_b.commit()

    model = await db.fetchval("SELECT model::text FROM kaskad_reachability WHERE channel = 'vk'")
    assert json.loads(model)["successes"] == 2
