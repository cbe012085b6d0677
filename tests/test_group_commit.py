"""Group commit of accepts and delivery callbacks (gateway/store/group_commit.py), on real PostgreSQL.

A batch is made to fill by its size (the delay is set far beyond any test), so which calls
share a statement does not depend on timing. Rows written by one statement share one
transaction, which PostgreSQL shows as the same ``xmin``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import grpc
import pytest

from gateway.core.auth import hash_api_key
from gateway.core.config import Settings, load_settings
from gateway.core.model import NewNotification
from gateway.runtime.app import Backends, KaskadApp
from gateway.store.cascade import CascadeStore
from gateway.store.group_commit import AcceptBatcher, AcceptRow, Stored
from gateway.store.postgres import NotificationStore, connect_pool
from gateway.store.queries import Queries
from gateway.store.work_queue import WorkQueue
from kaskad.v1 import notification_pb2, notification_pb2_grpc
from providers.base import DeliveryEvent
from router.domain import AckPolicy, Channel, ClientId, DeliveryOutcome
from tests.conftest import create_key, waits_for_a_lock
from tests.test_accept import counts, send_request

NEVER = timedelta(hours=1)  # batches here fill by size, never by a delay (idle or not)


async def transactions(db: asyncpg.Connection) -> int:
    """How many transactions wrote the notifications and work items."""
    return await db.fetchval(
        "SELECT count(DISTINCT x) FROM (SELECT xmin::text AS x FROM kaskad_notifications "
        "UNION ALL SELECT xmin::text FROM kaskad_work_items) t"
    )


@pytest.fixture
async def batched(settings: Settings, database_url: str) -> AsyncIterator[tuple[KaskadApp, list]]:
    assert settings.database_url and settings.redis_url
    app = await KaskadApp.start(
        settings.with_overrides(accept_batch_size=8, accept_batch_delay=NEVER, accept_batch_idle_delay=NEVER),
        backends=Backends(settings.database_url, settings.redis_url),
    )
    auth = [("authorization", f"Bearer {await create_key(database_url, 'courier')}")]
    yield app, auth
    await app.stop()


async def send_all(app: KaskadApp, auth: list, requests: list) -> list:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
        stub = notification_pb2_grpc.NotificationServiceStub(ch)
        return await asyncio.gather(
            *(stub.SendNotification(r, metadata=auth) for r in requests), return_exceptions=True
        )


async def test_concurrent_sends_share_one_commit_and_are_all_readable(batched, db) -> None:
    app, auth = batched
    responses = await send_all(app, auth, [send_request() for _ in range(8)])

    assert not any(isinstance(r, BaseException) for r in responses), responses
    assert not any(r.duplicate for r in responses)
    assert len({r.notification_id for r in responses}) == 8
    assert await counts(db) == (8, 8)
    assert await transactions(db) == 1  # notifications and their start items: one statement
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
        stub = notification_pb2_grpc.NotificationServiceStub(ch)
        for sent in responses:
            got = await stub.GetNotification(
                notification_pb2.GetNotificationRequest(notification_id=sent.notification_id),
                metadata=auth,
            )
            assert got.notification.state == notification_pb2.NOTIFICATION_STATE_ACCEPTED
            assert list(got.notification.route.steps) == list(sent.route.steps)


async def test_duplicates_within_one_batch_get_the_first_ones_notification(batched, db) -> None:
    app, auth = batched
    repeated = send_request("same-key")
    responses = await send_all(app, auth, [repeated] * 5 + [send_request() for _ in range(3)])

    assert not any(isinstance(r, BaseException) for r in responses), responses
    same = responses[:5]
    assert len({r.notification_id for r in same}) == 1
    assert sum(not r.duplicate for r in same) == 1
    assert all(r.route == same[0].route for r in same)
    assert not any(r.duplicate for r in responses[5:])
    assert await counts(db) == (4, 4)
    assert await transactions(db) == 1


async def test_a_conflicting_payload_within_one_batch_is_already_exists(batched, db) -> None:
    app, auth = batched
    requests = [
        send_request("contested"),
        send_request("contested", text="Another text under the same key"),
        *(send_request() for _ in range(6)),
    ]
    responses = await send_all(app, auth, requests)

    first, second = responses[:2]
    winners = [r for r in (first, second) if not isinstance(r, BaseException)]
    losers = [r for r in (first, second) if isinstance(r, BaseException)]
    assert len(winners) == 1 and len(losers) == 1
    assert not winners[0].duplicate
    assert isinstance(losers[0], grpc.aio.AioRpcError)
    assert losers[0].code() == grpc.StatusCode.ALREADY_EXISTS
    assert not any(isinstance(r, BaseException) for r in responses[2:])
    assert await counts(db) == (7, 7)


async def test_a_batch_resolves_keys_committed_before_it(batched, db) -> None:
    app, auth = batched
    earlier = await send_all(app, auth, [send_request(f"k{i}") for i in range(8)])
    again = await send_all(
        app,
        auth,
        [send_request("k0"), send_request("k1", text="Changed"), *(send_request() for _ in range(6))],
    )

    assert again[0].duplicate and again[0].notification_id == earlier[0].notification_id
    assert isinstance(again[1], grpc.aio.AioRpcError)
    assert again[1].code() == grpc.StatusCode.ALREADY_EXISTS
    assert not any(isinstance(r, BaseException) or r.duplicate for r in again[2:])
    assert await counts(db) == (14, 14)


async def test_batch_size_one_is_a_statement_per_accept(settings: Settings, database_url, db) -> None:
    assert settings.database_url and settings.redis_url
    app = await KaskadApp.start(
        settings.with_overrides(accept_batch_size=1),
        backends=Backends(settings.database_url, settings.redis_url),
    )
    auth = [("authorization", f"Bearer {await create_key(database_url, 'courier')}")]
    try:
        responses = await send_all(app, auth, [send_request() for _ in range(4)] + [send_request("one")] * 3)
    finally:
        await app.stop()
    assert not any(isinstance(r, BaseException) for r in responses), responses
    assert sum(r.duplicate for r in responses) == 2
    assert await counts(db) == (5, 5)
    assert await transactions(db) == 5


def test_settings_from_the_environment() -> None:
    settings = load_settings(environ={"KASKAD_ACCEPT_BATCH_SIZE": "1", "KASKAD_ACCEPT_BATCH_DELAY": "0.001"})
    assert settings.accept_batch_size == 1
    assert settings.accept_batch_delay == timedelta(milliseconds=1)
    assert load_settings(environ={}).accept_batch_size > 1  # on by default


# The batcher itself, below the gRPC servicer: rows that no request could produce.

ROUTE = {"steps": [], "expected_cost": "0", "currency": "RUB", "skipped": []}


def row(client_id: uuid.UUID, key: str, text: str = "Your parcel is on its way") -> AcceptRow:
    now = datetime.now(UTC)
    new = NewNotification(
        client_id=ClientId(client_id),
        idempotency_key=key,
        request_hash=hashlib.sha256(text.encode()).digest(),
        phone="+79161234567",
        vk_user_id=None,
        viber_user_id=None,
        template_id=None,
        template_params=None,
        bodies={Channel.SMS: text},
        sms_body=text,
        channels=(Channel.SMS,),
        ack_policy=AckPolicy.DELIVERED,
        ack_timeout=None,
        deadline=now + timedelta(days=1),
        max_cost=None,
        currency="RUB",
        metadata={},
    )
    return AcceptRow(uuid.uuid4(), new, ROUTE, sms_baseline=Decimal("4.5"), now=now, traceparent=None)


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await connect_pool(database_url, 1, 4)
    yield pool
    await pool.close()


@pytest.fixture
async def client_id(pool: asyncpg.Pool) -> uuid.UUID:
    store = NotificationStore(pool)
    return await store.create_client("courier", hash_api_key("ksk_test"), "ksk_test", datetime.now(UTC))


async def test_a_failing_row_does_not_fail_the_others(pool, client_id, db) -> None:
    batcher = AcceptBatcher(pool.acquire, Queries(), 6, NEVER.total_seconds(), NEVER.total_seconds())
    unknown_client = uuid.uuid4()  # violates the foreign key: the whole statement fails
    rows = [row(client_id, f"ok-{i}") for i in range(4)]
    bad = [row(unknown_client, "bad"), row(unknown_client, "bad")]  # and its duplicate in the batch

    results = await asyncio.gather(*(batcher.insert(r) for r in [*rows, *bad]), return_exceptions=True)

    assert all(isinstance(r, Stored) and r.inserted for r in results[:4]), results
    assert [r.notification_id for r in results[:4]] == [r.notification_id for r in rows]  # type: ignore[union-attr]
    assert all(isinstance(r, asyncpg.ForeignKeyViolationError) for r in results[4:]), results[4:]
    assert await counts(db) == (4, 4)


async def test_close_writes_what_is_waiting(pool, client_id, db) -> None:
    batcher = AcceptBatcher(pool.acquire, Queries(), 100, NEVER.total_seconds(), NEVER.total_seconds())
    waiting = asyncio.ensure_future(batcher.insert(row(client_id, "pending")))
    await asyncio.sleep(0)  # it is queued, far from full and far from its delay
    assert not waiting.done()

    await batcher.aclose()

    assert (await waiting).inserted
    assert await counts(db) == (1, 1)


async def row_transactions(db: asyncpg.Connection, rows: list[AcceptRow]) -> list[str]:
    found = await db.fetch(
        "SELECT xmin::text AS x FROM kaskad_notifications WHERE notification_id = ANY($1::uuid[])",
        [r.notification_id for r in rows],
    )
    return [f["x"] for f in found]


async def test_an_idle_batcher_writes_a_lone_row_at_once(pool, client_id, db) -> None:
    # The delay for company is an hour: only the idle rule can let this row through.
    batcher = AcceptBatcher(pool.acquire, Queries(), 100, NEVER.total_seconds(), idle_delay=0.0)

    stored = await batcher.insert(row(client_id, "alone"))

    assert stored.inserted
    assert await counts(db) == (1, 1)


async def test_rows_arriving_while_a_batch_is_written_wait_for_company(
    pool, client_id, database_url, db
) -> None:
    batcher = AcceptBatcher(pool.acquire, Queries(), 3, NEVER.total_seconds(), idle_delay=0.0)
    blocker = await asyncpg.connect(database_url)
    try:
        # Holding the client's row makes the first batch's foreign-key check wait: a write under way.
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM kaskad_clients WHERE client_id = $1 FOR UPDATE", client_id)
            first = asyncio.ensure_future(batcher.insert(row(client_id, "first")))
            await waits_for_a_lock(db)
            later = [row(client_id, f"later-{i}") for i in range(2)]
            waiting = [asyncio.ensure_future(batcher.insert(r)) for r in later]
            await asyncio.sleep(0.05)
            assert not first.done() and not any(w.done() for w in waiting)
        assert (await first).inserted
        await asyncio.sleep(0.05)  # the write is done, but these wait for a third row or the delay
        assert not any(w.done() for w in waiting)

        third = row(client_id, "third")
        results = await asyncio.gather(*waiting, batcher.insert(third))
    finally:
        await blocker.close()

    assert all(r.inserted for r in results)
    assert len(set(await row_transactions(db, [*later, third]))) == 1  # one batch, filled by size


# Delivery callbacks: the same group commit, below the HTTP endpoint.


def event(key: str, units: int | None = None) -> DeliveryEvent:
    return DeliveryEvent(
        provider="vk",
        channel=Channel.VK,
        provider_message_id=f"m-{key}",
        kind=DeliveryOutcome.DELIVERED,
        occurred_at=datetime.now(UTC),
        event_key=key,
        billed_units=units,
    )


def batched_cascades(pool: asyncpg.Pool, size: int) -> CascadeStore:
    queries = Queries()
    return CascadeStore(
        pool, queries, WorkQueue(pool, queries), size, NEVER.total_seconds(), NEVER.total_seconds()
    )


async def event_transactions(db: asyncpg.Connection) -> list[str]:
    return [r["x"] for r in await db.fetch("SELECT DISTINCT xmin::text AS x FROM kaskad_delivery_events")]


async def test_concurrent_callbacks_share_one_commit(pool, db) -> None:
    store = batched_cascades(pool, size=3)
    callbacks = [[event("a")], [event("b"), event("c")], [event("d")]]

    new = await asyncio.gather(*(store.record_events(c, datetime.now(UTC)) for c in callbacks))

    assert new == [1, 2, 1]
    assert await db.fetchval("SELECT count(*) FROM kaskad_delivery_events") == 4
    assert len(await event_transactions(db)) == 1


async def test_an_event_repeated_within_one_batch_is_new_once(pool, db) -> None:
    await batched_cascades(pool, size=1).record_events([event("before")], datetime.now(UTC))  # earlier
    store = batched_cascades(pool, size=3)
    callbacks = [[event("x")], [event("x"), event("y")], [event("before")]]

    new = await asyncio.gather(*(store.record_events(c, datetime.now(UTC)) for c in callbacks))

    assert new == [1, 1, 0]  # "x" counts for the first callback that carried it
    assert await db.fetchval("SELECT count(*) FROM kaskad_delivery_events") == 3


async def test_a_failing_callback_does_not_fail_the_others(pool, db) -> None:
    store = batched_cascades(pool, size=3)
    too_many_units = 2**40  # not an int4: the shared statement fails as a whole
    callbacks = [[event("ok-1")], [event("bad", units=too_many_units)], [event("ok-2")]]

    results = await asyncio.gather(
        *(store.record_events(c, datetime.now(UTC)) for c in callbacks), return_exceptions=True
    )

    assert results[0] == 1 and results[2] == 1, results
    assert isinstance(results[1], asyncpg.DataError), results
    keys = {r["event_key"] for r in await db.fetch("SELECT event_key FROM kaskad_delivery_events")}
    assert keys == {"ok-1", "ok-2"}


async def test_closing_the_cascade_store_writes_waiting_callbacks(pool, db) -> None:
    store = batched_cascades(pool, size=100)
    waiting = asyncio.ensure_future(store.record_events([event("pending")], datetime.now(UTC)))
    await asyncio.sleep(0)
    assert not waiting.done()

    await store.aclose()

    assert await waiting == 1
    assert await db.fetchval("SELECT count(*) FROM kaskad_delivery_events") == 1


def test_callback_batching_from_the_environment() -> None:
    settings = load_settings(
        environ={"KASKAD_CALLBACK_BATCH_SIZE": "1", "KASKAD_CALLBACK_BATCH_DELAY": "0.005"}
    )
    assert settings.callback_batch_size == 1
    assert settings.callback_batch_delay == timedelta(milliseconds=5)
    assert load_settings(environ={}).callback_batch_size > 1  # on by default


async def test_a_reported_nul_is_stored_as_a_replacement_character(pool, db) -> None:
    store = batched_cascades(pool, size=1)
    reported = dataclasses.replace(event("nul\x00key"), detail="carrier said \x00 no")

    assert await store.record_events([reported], datetime.now(UTC)) == 1
    assert await store.record_events([reported], datetime.now(UTC)) == 0  # a retry is the same event

    row = await db.fetchrow("SELECT event_key, detail FROM kaskad_delivery_events")
    assert (row["event_key"], row["detail"]) == ("nul\ufffdkey", "carrier said \ufffd no")
