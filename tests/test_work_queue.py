"""The durable work queue: SKIP LOCKED claims, leases, fencing tokens, injected time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from gateway.cascade.worker import WorkRunner, WorkSignal
from gateway.core.clock import ManualClock
from gateway.store.postgres import connect_pool
from gateway.store.queries import Queries
from gateway.store.work_queue import Lease, LeaseLost, WorkItem, WorkQueue
from router.domain import NotificationId
from tests.tcp_proxy import TcpProxy

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
LEASE = timedelta(seconds=30)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await connect_pool(database_url, 1, 6)
    yield p
    await p.close()


async def _notification(conn: asyncpg.Connection) -> NotificationId:
    client_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO kaskad_clients VALUES ($1, $2, $3)", client_id, f"c{client_id.hex[:8]}", T0
    )
    notification_id = uuid.uuid4()
    await conn.execute(
        """INSERT INTO kaskad_notifications (notification_id, client_id, idempotency_key,
               request_hash, phone, bodies, channels, ack_policy, deadline, currency, state,
               route, created_at, updated_at)
           VALUES ($1, $2, 'k', '\\x00', '+79161234567', '{}', '{sms}', 'delivered', $3, 'RUB',
               'accepted', '{"steps": [], "expected_cost": "0", "currency": "RUB"}', $3, $3)""",
        notification_id,
        client_id,
        T0,
    )
    return NotificationId(notification_id)


async def test_due_items_are_claimed_once_across_workers(pool) -> None:
    queue = WorkQueue(pool, Queries())
    async with pool.acquire() as conn:
        nid = await _notification(conn)
        for i in range(40):
            await queue.schedule(conn, nid, "start", T0 + timedelta(seconds=i % 2), T0)
        await queue.schedule(conn, nid, "later", T0 + timedelta(hours=1), T0)

    batches = await asyncio.gather(
        *(queue.claim(T0 + timedelta(seconds=1), 7, f"worker-{w}", LEASE) for w in range(8))
    )
    claimed = [item.work_item_id for batch in batches for item in batch]
    assert len(claimed) == len(set(claimed)) == 40  # every due item exactly once
    assert all(item.kind == "start" for batch in batches for item in batch)


async def test_expired_lease_is_taken_over_and_stale_worker_is_fenced(pool) -> None:
    queue = WorkQueue(pool, Queries())
    async with pool.acquire() as conn:
        await queue.schedule(conn, await _notification(conn), "start", T0, T0)

    [first] = await queue.claim(T0, 10, "worker-a", LEASE)
    assert await queue.claim(T0 + LEASE - timedelta(seconds=1), 10, "worker-b", LEASE) == []
    [second] = await queue.claim(T0 + LEASE, 10, "worker-b", LEASE)
    assert second.work_item_id == first.work_item_id
    assert second.fencing_token == first.fencing_token + 1

    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(LeaseLost):
            await queue.complete(conn, first, T0 + LEASE)
    async with pool.acquire() as conn, conn.transaction():
        await queue.complete(conn, second, T0 + LEASE)
    assert await queue.claim(T0 + 10 * LEASE, 10, "worker-c", LEASE) == []


async def test_released_item_runs_again_at_its_new_time(pool) -> None:
    queue = WorkQueue(pool, Queries())
    async with pool.acquire() as conn:
        await queue.schedule(conn, await _notification(conn), "submit", T0, T0)
    [item] = await queue.claim(T0, 10, "worker-a", LEASE)
    assert await queue.release(item, T0 + timedelta(seconds=5))
    assert await queue.claim(T0 + timedelta(seconds=4), 10, "worker-a", LEASE) == []
    [again] = await queue.claim(T0 + timedelta(seconds=5), 10, "worker-a", LEASE)
    assert again.attempts == 2
    backlog = await queue.backlog(T0 + timedelta(seconds=5))
    assert backlog.due == 1 and backlog.oldest_due == T0 + timedelta(seconds=5)


async def test_items_of_cascades_under_way_are_claimed_before_new_starts(pool) -> None:
    """Under a backlog, reports, submits and timers go before older start items."""
    queue = WorkQueue(pool, Queries())
    async with pool.acquire() as conn:
        nid = await _notification(conn)
        for i in range(5):  # the oldest due items are new cascades' starts
            await queue.schedule(conn, nid, "start", T0 + timedelta(seconds=i), T0)
        for kind, second in (("event", 12), ("submit", 10), ("timer", 11)):
            await queue.schedule(conn, nid, kind, T0 + timedelta(seconds=second), T0)
        await queue.schedule(conn, nid, "timer", T0 + timedelta(hours=1), T0)  # not due

    now = T0 + timedelta(seconds=20)
    first = await queue.claim(now, 4, "worker-a", LEASE)  # a batch comes back in no set order
    assert sorted(i.kind for i in first) == ["event", "start", "submit", "timer"]
    assert [i.due_at for i in first if i.kind == "start"] == [T0]  # then the starts, oldest first
    rest = await queue.claim(now, 10, "worker-b", LEASE)
    assert sorted(i.due_at for i in rest) == [T0 + timedelta(seconds=s) for s in range(1, 5)]
    assert await queue.claim(now, 10, "worker-c", LEASE) == []


async def test_a_worker_warns_once_while_postgres_is_away_and_says_when_it_is_back(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    # Every poll fails alike while the database is away: one warning, not a traceback a poll.
    proxy = await TcpProxy.for_url(database_url)
    pool = await connect_pool(proxy.url_for(database_url), 1, 2)

    async def handler(items: Sequence[WorkItem]) -> None:
        raise AssertionError("nothing is due")

    runner = WorkRunner(
        WorkQueue(pool, Queries()), handler, ManualClock(T0), batch_size=10, lease=Lease("w", LEASE)
    )

    def worker_records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "gateway.cascade.worker"]

    async def until(levels: list[int]) -> None:
        for _ in range(400):  # bounded: a worker that never logs fails the test
            if [r.levelno for r in worker_records()] == levels:
                return
            await asyncio.sleep(0.025)
        raise AssertionError(worker_records())

    try:
        with caplog.at_level(logging.INFO, logger="gateway.cascade.worker"):
            polling = asyncio.create_task(runner.run_forever(timedelta(milliseconds=10), WorkSignal()))
            await asyncio.sleep(0.1)  # some polls that find nothing due
            await proxy.cut()
            await until([logging.WARNING])
            await asyncio.sleep(0.3)  # about thirty more failed polls: still one warning
            await proxy.restore()
            await until([logging.WARNING, logging.INFO])
            polling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await polling
        assert not any(r.exc_info for r in worker_records())
    finally:
        await pool.close()
        await proxy.close()
