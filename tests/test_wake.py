"""Waking other gateways' workers with LISTEN/NOTIFY (gateway/store/wake.py), on real PostgreSQL.

The worker gateways here poll once an hour, so a notification that starts moving can
only have been woken by the accept-only gateway's NOTIFY.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg

from gateway.store.postgres import connect_pool
from gateway.store.queries import Queries
from gateway.store.wake import WAKE_CHANNEL, WakeNotifier
from tests.cascade_harness import Cascade, phone_where

AN_HOUR = timedelta(hours=1)


async def _state(db: asyncpg.Connection, notification_id: str) -> str:
    sql = "SELECT state FROM kaskad_notifications WHERE notification_id = $1::uuid"
    return str(await db.fetchval(sql, notification_id))


async def _started_elsewhere(front: Cascade, db: asyncpg.Connection) -> str:
    """Send through ``front`` and wait (bounded) until some worker has started the cascade."""
    sent = await front.send(phone_where(lambda p: p.on_vk))
    for _ in range(400):
        if await _state(db, sent.notification_id) != "accepted":
            return sent.notification_id
        await asyncio.sleep(0.025)
    raise AssertionError("no worker started the notification: nobody was woken")


async def _listener_pids(db: asyncpg.Connection) -> list[int]:
    rows = await db.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    return [r["pid"] for r in rows]


async def test_an_accept_on_an_accept_only_gateway_wakes_another_gateways_worker(start_cascade, db) -> None:
    await start_cascade(workers=1, worker_poll_interval=AN_HOUR)  # runs the cascade
    front = await start_cascade(workers=0)  # accepts only
    assert front.app.wake_notifier is not None and front.app.wake_listener is None

    notification_id = await _started_elsewhere(front, db)

    assert await front.app.runner.run_once() == 0  # the front ran nothing itself
    assert await _state(db, notification_id) in ("in_progress", "delivered", "read")


async def test_the_listener_comes_back_after_its_connection_is_lost(start_cascade, db) -> None:
    await start_cascade(workers=1, worker_poll_interval=AN_HOUR)
    front = await start_cascade(workers=0)
    [listener] = await _listener_pids(db)

    await db.execute("SELECT pg_terminate_backend($1)", listener)
    for _ in range(400):
        again = await _listener_pids(db)
        if again and again != [listener]:
            break
        await asyncio.sleep(0.025)
    else:
        raise AssertionError("the worker gateway did not listen again")

    await _started_elsewhere(front, db)


async def test_a_burst_of_commits_costs_one_notification(database_url: str) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    listening = await asyncpg.connect(database_url)
    await listening.add_listener(WAKE_CHANNEL, lambda *args: heard.put_nowait(args[3]))
    pool = await connect_pool(database_url, 1, 2)
    try:
        notifier = WakeNotifier(pool, Queries())
        for _ in range(50):
            notifier.notify()  # fifty accepts committed in one go
        await notifier.aclose()
        notifier.notify()  # a later commit gets its own
        await notifier.aclose()
        await pool.execute("SELECT pg_notify($1, 'end')", WAKE_CHANNEL)  # delivered after both

        payloads = [await asyncio.wait_for(heard.get(), 10) for _ in range(3)]
        assert payloads == ["", "", "end"]
    finally:
        await pool.close()
        await listening.close()
