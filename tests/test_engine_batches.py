"""The engine applies a claimed batch of work items in one transaction per kind of work.

These tests claim items by hand (as a worker does) and hand them to the engine, to check
what a batch must keep from one-item-at-a-time: a worker fenced out of one item still
applies the rest, one bad item holds back only itself, and several items of one
notification in one batch apply in due order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from gateway.core.clock import ManualClock
from gateway.store.cascade import CascadeStore, PlanCache, SubmitRecord
from gateway.store.queries import Queries
from gateway.store.work_queue import WorkQueue
from lab.simulator.settings import FaultSettings, LatencyRange, ProviderLatencies
from providers.base import DeliveryEvent
from router.domain import DeliveryOutcome, NotificationId
from router.planner import Plan
from tests.cascade_harness import delivered_notifications, phone_where
from tests.router.test_router_cascade import make_plan

LEASE = timedelta(seconds=30)


async def _states(db, ids: list[str]) -> list[str]:
    rows = await db.fetch(
        "SELECT notification_id::text AS id, state FROM kaskad_notifications"
        " WHERE notification_id::text = ANY($1)",
        ids,
    )
    by_id = {r["id"]: r["state"] for r in rows}
    return [by_id[i] for i in ids]


async def test_a_worker_fenced_out_of_one_item_applies_the_rest_of_its_batch(start_cascade, db) -> None:
    clock = ManualClock(datetime.now(UTC))
    cascade = await start_cascade(clock=clock)
    ids = [(await cascade.send(phone_where(lambda p: p.on_vk, skip=i))).notification_id for i in range(3)]
    queue = WorkQueue(cascade.app.pool, Queries())

    mine = await queue.claim(clock.now(), 10, "worker-a", LEASE)
    assert len(mine) == 3
    # Worker A stalls past its lease; worker B takes one of its items over.
    [taken] = await queue.claim(clock.now() + LEASE + timedelta(seconds=1), 1, "worker-b", LEASE)

    await cascade.app.engine.process(mine)
    expected = ["accepted" if i == str(taken.notification_id) else "in_progress" for i in ids]
    assert await _states(db, ids) == expected
    assert (
        await db.fetchval(
            "SELECT lease_owner FROM kaskad_work_items WHERE work_item_id = $1", taken.work_item_id
        )
        == "worker-b"
    )

    await cascade.app.engine.process([taken])
    assert await _states(db, ids) == ["in_progress"] * 3


async def test_one_bad_item_holds_back_only_itself(start_cascade, db) -> None:
    clock = ManualClock(datetime.now(UTC))
    cascade = await start_cascade(clock=clock)
    ids = [(await cascade.send(phone_where(lambda p: p.on_vk, skip=i))).notification_id for i in range(3)]
    # A timer a newer version might write, which this version cannot read.
    bad = await db.fetchval(
        """INSERT INTO kaskad_work_items (notification_id, kind, payload, due_at, created_at)
           VALUES ($1::uuid, 'timer', $2::jsonb, $3, $3) RETURNING work_item_id""",
        ids[1],
        json.dumps({"kind": "no_such_timer"}),
        clock.now() - timedelta(seconds=1),
    )
    queue = WorkQueue(cascade.app.pool, Queries())
    items = await queue.claim(clock.now(), 10, "worker-a", LEASE)
    assert len(items) == 4

    await cascade.app.engine.process(items)
    assert await _states(db, ids) == ["in_progress"] * 3  # the bad timer did not stop ids[1] either
    row = await db.fetchrow("SELECT done_at, lease_owner FROM kaskad_work_items WHERE work_item_id = $1", bad)
    assert row["done_at"] is None and row["lease_owner"] == "worker-a"  # retried once its lease expires
    done = await db.fetchval(
        "SELECT count(*) FROM kaskad_work_items WHERE kind = 'start' AND done_at IS NOT NULL"
    )
    assert done == 3


async def test_items_of_one_notification_in_one_batch_apply_in_due_order(start_cascade, db) -> None:
    clock = ManualClock(datetime.now(UTC))
    # No grace for overdue waits: the wait must fire, not be put off. VK reports after 2 s
    # of wall time, so its report cannot be in before the test moves the clock past the wait.
    # VK without its status lookup: the wait that runs out moves on instead of asking first.
    cascade = await start_cascade(
        clock=clock,
        overdue_wait_grace=timedelta(0),
        latencies=ProviderLatencies(vk=LatencyRange(2.0, 2.0), read=LatencyRange(0.01, 0.05)),
        providers={"vk": {"status_query": False}},
    )
    sent = await cascade.send(phone_where(lambda p: p.on_vk))
    await cascade.app.runner.run_until_idle()  # start, then the VK submit
    clock.advance(timedelta(hours=1))  # past the step's wait ...
    await cascade.sim("POST", "/_sim/settle")  # ... before VK's delivery report is applied
    queue = WorkQueue(cascade.app.pool, Queries())
    items = await queue.claim(clock.now(), 50, "worker-a", LEASE)
    kinds = [i.kind for i in sorted(items, key=lambda i: i.due_at)]
    assert kinds[0] == "timer" and set(kinds[1:]) == {"event"}  # delivered (and read, if it came)

    await cascade.app.engine.process(items)
    assert await _states(db, [sent.notification_id]) == ["delivered"]
    # The wait came first and moved the cascade on to its next step; the late report then
    # ended the cascade and closed that step's submit before it was sent. (The other way
    # round, nothing would have followed VK.)
    attempts = await db.fetch(
        "SELECT channel, submitted_at FROM kaskad_attempts"
        " WHERE notification_id = $1::uuid ORDER BY step_index",
        sent.notification_id,
    )
    assert len(attempts) == 2 and attempts[0]["channel"] == "vk"
    assert attempts[1]["submitted_at"] is None
    pending = "SELECT count(*) FROM kaskad_work_items WHERE done_at IS NULL AND kind <> 'timer'"
    assert await db.fetchval(pending) == 0


def test_billing_rounds_keep_each_attempts_bills_in_order_and_apart() -> None:
    from gateway.cascade.engine import in_rounds

    items = [("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3), ("b", 2)]
    rounds = in_rounds(items, key=lambda item: item[0])
    assert rounds == [[("a", 1), ("b", 1), ("c", 1)], [("a", 2), ("b", 2)], [("a", 3)]]
    assert all(len({k for k, _ in r}) == len(r) for r in rounds)
    assert in_rounds([], key=lambda item: item) == []


async def test_the_plan_is_stored_once_and_rows_with_a_copy_of_it_still_read(start_cascade, db) -> None:
    clock = ManualClock(datetime.now(UTC))
    cascade = await start_cascade(clock=clock)
    sent = await cascade.send(phone_where(lambda p: p.on_vk))
    pool = cascade.app.pool
    queue = WorkQueue(pool, Queries())
    await cascade.app.engine.process(await queue.claim(clock.now(), 10, "worker-a", LEASE))

    row = await db.fetchrow(
        "SELECT cascade::text AS cascade, route::text AS route FROM kaskad_notifications"
        " WHERE notification_id = $1::uuid",
        sent.notification_id,
    )
    progress = json.loads(row["cascade"])
    assert progress["started"] and "plan" not in progress  # the plan is the route, stored once

    # A row from before the plan was stored apart: a copy of it inside the cascade.
    await db.execute(
        "UPDATE kaskad_notifications SET cascade = cascade || jsonb_build_object('plan', route)"
        " WHERE notification_id = $1::uuid",
        sent.notification_id,
    )
    fresh = CascadeStore(pool, Queries(), queue)  # nothing cached: the plan comes from the row
    async with pool.acquire() as conn, conn.transaction():
        [record] = (await fresh.lock_many(conn, [NotificationId(uuid.UUID(sent.notification_id))])).values()
    assert record.cascade.plan == Plan.from_dict(json.loads(row["route"]))
    assert record.cascade.started and record.cascade.current_step == 0


def test_the_plan_cache_decodes_on_a_miss_only_and_keeps_the_latest() -> None:
    plan = make_plan()
    route = json.dumps(plan.to_dict())
    a, b, c = (NotificationId(uuid.uuid4()) for _ in range(3))
    cache = PlanCache(size=2)

    assert cache.plan(a, route) == plan
    assert cache.plan(a, "not decoded: a hit") is cache.plan(a, route)
    cache.plan(b, route)
    cache.plan(a, route)  # a is the latest again; b is the oldest
    cache.plan(c, route)

    assert len(cache) == 2
    assert cache.plan(a, "still cached") == plan
    with pytest.raises(json.JSONDecodeError):
        cache.plan(b, "evicted: decoded again")


@contextlib.asynccontextmanager
async def _an_attempt_whose_submit_is_unanswered(start_cascade):
    """A gateway on a manual clock whose one notification (to a VK user) has its first attempt
    row, and a worker that has sent its message and still waits for the provider's answer, so
    no submit result is recorded: (clock, pool, cascade store, the attempt).

    Processing a start calls its provider in the same batch, so the provider must hold its
    answer; and it sends no report of its own, so only the test's reports arrive."""
    clock = ManualClock(datetime.now(UTC))
    cascade = await start_cascade(
        clock=clock,
        faults=FaultSettings(timeout_rate=1.0, stall_s=600, drop_callback_rate=1.0),
        providers={"vk": {"transport": {"read_timeout_s": 600, "max_attempts": 1}}},
    )
    sent = await cascade.send(phone_where(lambda p: p.on_vk))
    pool, store = cascade.app.pool, cascade.app.cascades
    starts = await WorkQueue(pool, Queries()).claim(clock.now(), 10, "worker-a", LEASE)
    worker = asyncio.create_task(cascade.app.engine.process(starts))
    try:
        for _ in range(1000):
            if cascade.simulator.state.counters.get("vk_stalled") or worker.done():
                break
            await asyncio.sleep(0.01)
        assert not worker.done() and cascade.simulator.state.counters.get("vk_stalled") == 1
        notification_id = NotificationId(uuid.UUID(sent.notification_id))
        async with pool.acquire() as conn:
            [attempt] = (await store.attempts_by_steps(conn, [(notification_id, 0, 1)])).values()
        assert attempt.provider_message_id is None
        yield clock, pool, store, attempt
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker


def _delivered(attempt, provider_message_id: str, event_key: str, at: datetime) -> DeliveryEvent:
    """The provider's report that this attempt's message was delivered, naming the message only."""
    return DeliveryEvent(
        provider=attempt.provider,
        channel=attempt.channel,
        provider_message_id=provider_message_id,
        kind=DeliveryOutcome.DELIVERED,
        occurred_at=at,
        event_key=event_key,
    )


async def test_a_nul_in_a_submit_receipt_is_stored_replaced_and_its_report_still_matches(
    start_cascade, db
) -> None:
    async with _an_attempt_whose_submit_is_unanswered(start_cascade) as (clock, pool, store, attempt):
        async with pool.acquire() as conn, conn.transaction():
            receipt = SubmitRecord(attempt, provider_message_id="m\x00id", detail="said \x00 this")
            await store.record_submits(conn, [receipt], clock.now())

        stored = await db.fetchrow(
            "SELECT provider_message_id, detail FROM kaskad_attempts WHERE attempt_id = $1",
            attempt.attempt_id,
        )
        assert (stored["provider_message_id"], stored["detail"]) == ("m\ufffdid", "said \ufffd this")
        # The provider's report names the message the same way: it finds its attempt.
        report = _delivered(attempt, "m\x00id", "delivered-1", clock.now())
        assert await store.record_events([report], clock.now()) == 1
        assert await db.fetchval("SELECT attempt_id FROM kaskad_delivery_events") == attempt.attempt_id


_SUBMITS = (
    "SELECT fencing_token, attempts, lease_owner, done_at IS NOT NULL AS done"
    " FROM kaskad_work_items WHERE notification_id = $1::uuid AND kind = 'submit'"
)


async def _one_claimed_start(start_cascade):
    """A gateway on a manual clock, one notification to a VK user, its start item claimed."""
    clock = ManualClock(datetime.now(UTC))
    cascade = await start_cascade(clock=clock)
    sent = await cascade.send(phone_where(lambda p: p.on_vk))
    queue = WorkQueue(cascade.app.pool, Queries())
    [start] = await queue.claim(clock.now(), 10, "worker-a", LEASE)
    assert start.kind == "start"
    return clock, cascade, sent, queue, start


async def test_a_start_calls_its_provider_at_once_under_a_lease_taken_when_the_submit_was_added(
    start_cascade, db
) -> None:
    clock, cascade, sent, queue, start = await _one_claimed_start(start_cascade)

    await cascade.app.engine.process([start])
    # The provider was called in the same batch: no claim ever found the submit item.
    [submit] = await db.fetch(_SUBMITS, sent.notification_id)
    assert (submit["fencing_token"], submit["attempts"], submit["done"]) == (1, 1, True)
    attempt = await db.fetchrow(
        "SELECT status, provider_message_id FROM kaskad_attempts WHERE notification_id = $1::uuid",
        sent.notification_id,
    )
    assert attempt["status"] == "awaiting_report" and attempt["provider_message_id"]
    assert not [i for i in await queue.claim(clock.now(), 10, "worker-b", LEASE) if i.kind == "submit"]
    await cascade.settle()
    assert await delivered_notifications(cascade, db) == Counter({sent.notification_id: 1})


async def test_a_submit_leased_by_a_worker_that_died_before_calling_runs_after_the_lease(
    start_cascade, db
) -> None:
    clock, cascade, sent, queue, start = await _one_claimed_start(start_cascade)
    # The start's transaction commits, and the worker dies before it calls the provider.
    [(leased, _)] = await cascade.app.engine._apply([start])
    [row] = await db.fetch(_SUBMITS, sent.notification_id)
    assert row["lease_owner"] is not None and not row["done"]

    assert await queue.claim(clock.now(), 10, "worker-b", LEASE) == []  # still leased
    clock.advance(cascade.app.settings.work_lease + timedelta(seconds=1))
    [taken] = await queue.claim(clock.now(), 10, "worker-b", LEASE)
    assert taken.work_item_id == leased.work_item_id and taken.fencing_token == 2
    await cascade.app.engine.process([taken])
    await cascade.settle()
    assert await delivered_notifications(cascade, db) == Counter({sent.notification_id: 1})
    [row] = await db.fetch(_SUBMITS, sent.notification_id)
    assert row["done"]


async def test_a_report_that_beats_its_submits_response_waits_and_is_queued_once_the_submit_is_recorded(
    start_cascade, db
) -> None:
    async with _an_attempt_whose_submit_is_unanswered(start_cascade) as (clock, pool, store, attempt):
        # The report names the message only (no dedupe key), and comes before the submit's answer.
        report = _delivered(attempt, "early-1", "early-delivered-1", clock.now())
        assert await store.record_events([report], clock.now()) == 1
        events_queued = "SELECT count(*) FROM kaskad_work_items WHERE kind = 'event'"
        assert await db.fetchval("SELECT attempt_id FROM kaskad_delivery_events") is None
        assert await db.fetchval(events_queued) == 0

        async with pool.acquire() as conn, conn.transaction():
            submit = SubmitRecord(attempt, provider_message_id="early-1")
            await store.record_submits(conn, [submit], clock.now())

        assert await db.fetchval("SELECT attempt_id FROM kaskad_delivery_events") == attempt.attempt_id
        assert await db.fetchval(events_queued) == 1
