"""The accept path over a real gRPC channel, on real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.api.authentication import ClientAuthenticator
from gateway.core.clock import ManualClock
from gateway.core.config import Settings
from gateway.core.errors import Unauthenticated
from gateway.runtime.app import Backends, KaskadApp
from kaskad.v1 import common_pb2, notification_pb2, notification_pb2_grpc
from tests.conftest import create_key

PHONE = "+79161234567"


def send_request(key: str | None = None, **overrides: object) -> notification_pb2.SendNotificationRequest:
    fields: dict[str, object] = {
        "idempotency_key": key or f"order-{uuid.uuid4()}",
        "recipient": notification_pb2.Recipient(phone=PHONE),
        "text": "Your parcel 1234 is on its way",
    }
    fields.update(overrides)
    return notification_pb2.SendNotificationRequest(**fields)  # type: ignore[arg-type]


async def counts(db: asyncpg.Connection) -> tuple[int, int]:
    notifications = await db.fetchval("SELECT count(*) FROM kaskad_notifications")
    work = await db.fetchval("SELECT count(*) FROM kaskad_work_items")
    return notifications, work


def violations(error: grpc.aio.AioRpcError) -> list[str]:
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT must carry a google.rpc.Status"
    fields = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        assert detail.Unpack(bad_request)
        fields.extend(v.field for v in bad_request.field_violations)
    return fields


async def test_send_stores_notification_and_first_work_item(stub, auth, db) -> None:
    response = await stub.SendNotification(send_request(), metadata=auth)

    assert not response.duplicate
    assert [s.channel for s in response.route.steps] == [
        common_pb2.CHANNEL_VK,
        common_pb2.CHANNEL_VIBER,
        common_pb2.CHANNEL_SMS,
    ]
    assert all(s.HasField("expected_cost") for s in response.route.steps)
    row = await db.fetchrow(
        "SELECT state, phone, client_id FROM kaskad_notifications WHERE notification_id = $1",
        uuid.UUID(response.notification_id),
    )
    assert row["state"] == "accepted" and row["phone"] == PHONE
    assert row["client_id"] == await db.fetchval(
        "SELECT client_id FROM kaskad_clients WHERE name = 'courier'"
    )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM kaskad_work_items WHERE notification_id = $1 AND kind = 'start'",
            uuid.UUID(response.notification_id),
        )
        == 1
    )

    got = await stub.GetNotification(
        notification_pb2.GetNotificationRequest(notification_id=response.notification_id),
        metadata=auth,
    )
    assert got.notification.state == notification_pb2.NOTIFICATION_STATE_ACCEPTED
    assert got.notification.recipient.phone == "+7********67"  # masked, never the number
    assert list(got.notification.route.steps) == list(response.route.steps)


async def test_same_key_same_content_is_a_duplicate(stub, auth, db) -> None:
    request = send_request("order-1")
    first = await stub.SendNotification(request, metadata=auth)
    second = await stub.SendNotification(request, metadata=auth)

    assert second.duplicate and not first.duplicate
    assert second.notification_id == first.notification_id
    assert second.route == first.route
    assert await counts(db) == (1, 1)


async def test_same_key_other_content_is_already_exists(stub, auth, db) -> None:
    await stub.SendNotification(send_request("order-2"), metadata=auth)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendNotification(send_request("order-2", text="Something else"), metadata=auth)
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "order-2" in caught.value.details()
    assert await counts(db) == (1, 1)


async def test_keys_are_scoped_per_client(stub, auth, database_url, db) -> None:
    other = [("authorization", f"Bearer {await create_key(database_url, 'retailer')}")]
    a = await stub.SendNotification(send_request("shared-key"), metadata=auth)
    b = await stub.SendNotification(send_request("shared-key"), metadata=other)
    assert a.notification_id != b.notification_id and not b.duplicate
    # and one client cannot read the other's notification
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetNotification(
            notification_pb2.GetNotificationRequest(notification_id=a.notification_id),
            metadata=other,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert await counts(db) == (2, 2)


async def test_fifty_concurrent_sends_with_one_key_create_one_row(stub, auth, db) -> None:
    request = send_request("race-key")
    responses = await asyncio.gather(*(stub.SendNotification(request, metadata=auth) for _ in range(50)))
    assert len({r.notification_id for r in responses}) == 1
    assert sum(not r.duplicate for r in responses) == 1
    assert await counts(db) == (1, 1)


def _future(minutes: int) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.now(UTC) + timedelta(minutes=minutes))
    return stamp


BAD_REQUESTS = {
    "invalid phone": (send_request(recipient=notification_pb2.Recipient(phone="+7916")), "recipient.phone"),
    "phone not e164": (
        send_request(recipient=notification_pb2.Recipient(phone="89161234567")),
        "recipient.phone",
    ),
    "missing phone": (send_request(recipient=notification_pb2.Recipient()), "recipient.phone"),
    "empty text": (send_request(text="   "), "text"),
    "oversized text": (send_request(text="x" * 1001), "text"),
    "no content": (
        notification_pb2.SendNotificationRequest(
            idempotency_key="k", recipient=notification_pb2.Recipient(phone=PHONE)
        ),
        "text",
    ),
    "unknown template": (
        send_request(template=notification_pb2.TemplateContent(template_id="nope")),
        "template.template_id",
    ),
    "missing template param": (
        send_request(
            template=notification_pb2.TemplateContent(template_id="delivery_status", params={"order": "42"})
        ),
        "template.params[status]",
    ),
    "unknown channel": (send_request(channels=[common_pb2.CHANNEL_SMS, 42]), "channels[1]"),
    "unspecified channel": (send_request(channels=[0]), "channels[0]"),
    "negative ack timeout": (
        send_request(ack_timeout=duration_pb2.Duration(seconds=-5)),
        "ack_timeout",
    ),
    "deadline in the past": (send_request(deadline=_future(-5)), "deadline"),
    "missing idempotency key": (send_request(idempotency_key=""), "idempotency_key"),
    "max cost in another currency": (
        send_request(max_cost=common_pb2.Money(currency_code="USD", units=1)),
        "max_cost.currency_code",
    ),
    "max cost with mixed signs": (
        send_request(max_cost=common_pb2.Money(currency_code="RUB", units=1, nanos=-5)),
        "max_cost",
    ),
    "NUL in the text": (send_request(text="Your parcel\x00 is on its way"), "text"),
    "NUL in a template param": (
        send_request(
            template=notification_pb2.TemplateContent(
                template_id="delivery_status", params={"order": "42\x00", "status": "sent"}
            )
        ),
        "template.params[order]",
    ),
    "NUL in metadata": (send_request(metadata={"source": "crm\x00"}), "metadata[source]"),
    "deadline after 9999": (
        send_request(deadline=timestamp_pb2.Timestamp(seconds=253402300800)),
        "deadline",
    ),
    "deadline before year 1": (
        send_request(deadline=timestamp_pb2.Timestamp(seconds=-62135596801)),
        "deadline",
    ),
    "deadline with nanos out of range": (
        send_request(deadline=timestamp_pb2.Timestamp(seconds=_future(60).seconds, nanos=-1)),
        "deadline",
    ),
    "deadline beyond the maximum": (send_request(deadline=_future(31 * 24 * 60)), "deadline"),
    "ack timeout of int64 seconds": (
        send_request(ack_timeout=duration_pb2.Duration(seconds=2**63 - 1)),
        "ack_timeout",
    ),
    "ack timeout not normalised": (
        send_request(ack_timeout=duration_pb2.Duration(seconds=1, nanos=2_000_000_000)),
        "ack_timeout",
    ),
    "ack timeout with mixed signs": (
        send_request(ack_timeout=duration_pb2.Duration(seconds=5, nanos=-1)),
        "ack_timeout",
    ),
    "ack timeout of 10,000 years when read": (
        send_request(
            ack_timeout=duration_pb2.Duration(seconds=315576000000),
            ack_policy=notification_pb2.ACK_POLICY_READ,
        ),
        "ack_timeout",
    ),
    "ack timeout beyond the maximum": (
        send_request(ack_timeout=duration_pb2.Duration(seconds=31 * 86400)),
        "ack_timeout",
    ),
    "max cost beyond the column": (
        send_request(max_cost=common_pb2.Money(currency_code="RUB", units=2**63 - 1)),
        "max_cost",
    ),
    "max cost just beyond the column": (
        send_request(max_cost=common_pb2.Money(currency_code="RUB", units=100_000_000_000)),
        "max_cost",
    ),
    "max cost with nanos out of range": (
        send_request(max_cost=common_pb2.Money(currency_code="RUB", units=1, nanos=1_000_000_000)),
        "max_cost",
    ),
    "max cost without a currency code": (
        send_request(max_cost=common_pb2.Money(currency_code="рубль", units=1)),
        "max_cost.currency_code",
    ),
    "Arabic-Indic digits": (
        send_request(recipient=notification_pb2.Recipient(phone="+٧٩١٦١٢٣٤٥٦٧")),
        "recipient.phone",
    ),
    "Devanagari digits": (
        send_request(recipient=notification_pb2.Recipient(phone="+७९१६१२३४५६७")),
        "recipient.phone",
    ),
    "one Devanagari digit": (
        send_request(recipient=notification_pb2.Recipient(phone="+791612345६7")),
        "recipient.phone",
    ),
    "VK id in Arabic-Indic digits": (
        send_request(recipient=notification_pb2.Recipient(phone=PHONE, vk_user_id="١٢٣")),
        "recipient.vk_user_id",
    ),
    "zero-width text": (send_request(text="\u200b\u200b\u200b"), "text"),
    "text of format characters": (send_request(text="\u2060\ufeff \u00ad\u200d\n\t"), "text"),
    "text of a Hangul filler": (send_request(text="\u3164\u3164"), "text"),
    "unknown template param": (
        send_request(
            template=notification_pb2.TemplateContent(
                template_id="reminder", params={"what": "the parcel", "payload": "x" * 500}
            )
        ),
        "template.params[payload]",
    ),
    "template param over the cap": (
        send_request(
            template=notification_pb2.TemplateContent(template_id="reminder", params={"what": "x" * 1001})
        ),
        "template.params[what]",
    ),
    "template params over the total cap": (
        send_request(
            template=notification_pb2.TemplateContent(
                template_id="reminder", params={f"p{i}": "x" * 900 for i in range(5)}
            )
        ),
        "template.params",
    ),
    "too many template params": (
        send_request(
            template=notification_pb2.TemplateContent(
                template_id="reminder", params={f"p{i}": "x" for i in range(33)}
            )
        ),
        "template.params",
    ),
    "too many channels": (send_request(channels=[common_pb2.CHANNEL_SMS] * 17), "channels"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_input_is_invalid_argument_and_writes_nothing(case, stub, auth, db) -> None:
    request, field = BAD_REQUESTS[case]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendNotification(request, metadata=auth)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(caught.value)
    assert PHONE not in caught.value.details()
    if request.recipient.phone:  # nor any other number: not in the message, not in a violation
        status = rpc_status.from_call(caught.value)
        assert status is not None
        assert request.recipient.phone not in caught.value.details()
        assert request.recipient.phone.encode() not in status.SerializeToString()
    assert await counts(db) == (0, 0)


async def test_batch_over_limit_is_rejected_whole(stub, auth, db) -> None:
    batch = notification_pb2.SendNotificationBatchRequest(
        requests=[send_request(f"b-{i}") for i in range(1001)]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendNotificationBatch(batch, metadata=auth)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["requests"]
    assert await counts(db) == (0, 0)


async def test_batch_bad_item_does_not_fail_the_others(stub, auth, db) -> None:
    batch = notification_pb2.SendNotificationBatchRequest(
        requests=[
            send_request("b-0"),
            send_request("b-1", text=""),
            send_request("b-2"),
            send_request("b-0"),
        ]
    )
    response = await stub.SendNotificationBatch(batch, metadata=auth)
    assert [r.index for r in response.results] == [0, 1, 2, 3]
    assert [r.WhichOneof("result") for r in response.results] == [
        "response",
        "error",
        "response",
        "response",
    ]
    assert response.results[1].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert [v.field for v in response.results[1].error.field_violations] == ["text"]
    assert response.results[3].response.notification_id == response.results[0].response.notification_id
    assert await counts(db) == (2, 2)


async def test_template_renders_per_channel_and_params_are_data(stub, auth, db) -> None:
    request = send_request(
        template=notification_pb2.TemplateContent(
            template_id="delivery_status", params={"order": "{{ 7 * 7 }}", "status": "в пути"}
        ),
        channels=[common_pb2.CHANNEL_VK, common_pb2.CHANNEL_SMS],
    )
    response = await stub.SendNotification(request, metadata=auth)
    bodies = await db.fetchval(
        "SELECT bodies FROM kaskad_notifications WHERE notification_id = $1",
        uuid.UUID(response.notification_id),
    )
    assert json.loads(bodies) == {"vk": "Parcel {{ 7 * 7 }} is в пути", "sms": "Заказ {{ 7 * 7 }}: в пути"}


@pytest.mark.parametrize(
    "metadata",
    [[], [("authorization", "Bearer ksk_wrong")], [("authorization", "Basic abc")]],
    ids=["missing", "wrong", "not bearer"],
)
async def test_bad_key_is_unauthenticated(metadata, stub, api_key, db) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendNotification(send_request(), metadata=metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await counts(db) == (0, 0)


async def test_revoked_key_is_unauthenticated(app, stub, auth, db) -> None:
    await stub.SendNotification(send_request(), metadata=auth)
    await app.store.revoke_client("courier", app.clock.now())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendNotification(send_request(), metadata=auth)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await counts(db) == (1, 1)


async def test_unknown_notification_is_not_found(stub, auth) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetNotification(
            notification_pb2.GetNotificationRequest(notification_id=str(uuid.uuid4())),
            metadata=auth,
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetNotification(
            notification_pb2.GetNotificationRequest(notification_id="not-an-id"), metadata=auth
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["notification_id"]


async def test_cancel_stops_pending_work(stub, auth, db) -> None:
    sent = await stub.SendNotification(send_request(), metadata=auth)
    cancelled = await stub.CancelNotification(
        notification_pb2.CancelNotificationRequest(notification_id=sent.notification_id),
        metadata=auth,
    )
    assert cancelled.notification.state == notification_pb2.NOTIFICATION_STATE_CANCELLED
    assert await db.fetchval("SELECT count(*) FROM kaskad_work_items WHERE done_at IS NULL") == 0


async def test_notification_survives_a_restart(settings: Settings, database_url) -> None:
    assert settings.redis_url
    backends = Backends(database_url, settings.redis_url)
    first = await KaskadApp.start(settings, backends=backends)
    key = await create_key(database_url, "courier")
    auth = [("authorization", f"Bearer {key}")]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{first.grpc_port}") as ch:
            sent = await notification_pb2_grpc.NotificationServiceStub(ch).SendNotification(
                send_request("survivor"), metadata=auth
            )
    finally:
        await first.stop()

    second = await KaskadApp.start(settings, backends=backends)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{second.grpc_port}") as ch:
            stub = notification_pb2_grpc.NotificationServiceStub(ch)
            got = await stub.GetNotification(
                notification_pb2.GetNotificationRequest(notification_id=sent.notification_id),
                metadata=auth,
            )
            again = await stub.SendNotification(send_request("survivor"), metadata=auth)
    finally:
        await second.stop()
    assert got.notification.idempotency_key == "survivor"
    assert again.duplicate and again.notification_id == sent.notification_id


def retry_delay(error: grpc.aio.AioRpcError) -> float:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    raise AssertionError("RESOURCE_EXHAUSTED must carry RetryInfo")


async def test_over_the_backlog_bound_sends_are_refused_with_retry_info(
    settings: Settings, database_url, db
) -> None:
    assert settings.database_url and settings.redis_url
    app = await KaskadApp.start(
        settings.with_overrides(max_backlog=5), backends=Backends(settings.database_url, settings.redis_url)
    )
    auth = [("authorization", f"Bearer {await create_key(database_url, 'courier')}")]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            stub = notification_pb2_grpc.NotificationServiceStub(ch)
            accepted = [await stub.SendNotification(send_request(f"k{i}"), metadata=auth) for i in range(5)]
            await app.admission.sample()  # no workers here: all five start items are due
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SendNotification(send_request("k5"), metadata=auth)
            with pytest.raises(grpc.aio.AioRpcError) as batch:
                await stub.SendNotificationBatch(
                    notification_pb2.SendNotificationBatchRequest(requests=[send_request("k6")]),
                    metadata=auth,
                )
            # A retry of an accepted send is refused too while behind, but nothing accepted is lost.
            got = await stub.GetNotification(
                notification_pb2.GetNotificationRequest(notification_id=accepted[0].notification_id),
                metadata=auth,
            )
    finally:
        await app.stop()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert batch.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert retry_delay(caught.value) > 0
    assert got.notification.state == notification_pb2.NOTIFICATION_STATE_ACCEPTED
    assert await counts(db) == (5, 5)


async def test_a_client_over_its_quota_is_refused_until_the_next_second(
    settings: Settings, database_url, db
) -> None:
    assert settings.database_url and settings.redis_url
    clock = ManualClock(datetime.now(UTC).replace(microsecond=500_000))
    app = await KaskadApp.start(
        settings.with_overrides(client_quota_per_second=3),
        clock=clock,
        backends=Backends(settings.database_url, settings.redis_url),
    )
    courier = [("authorization", f"Bearer {await create_key(database_url, 'courier')}")]
    retailer = [("authorization", f"Bearer {await create_key(database_url, 'retailer')}")]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            stub = notification_pb2_grpc.NotificationServiceStub(ch)
            for i in range(3):
                await stub.SendNotification(send_request(f"q{i}"), metadata=courier)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.SendNotification(send_request("q3"), metadata=courier)
            await stub.SendNotification(send_request("r0"), metadata=retailer)
            clock.advance(timedelta(seconds=1))
            await stub.SendNotification(send_request("q3"), metadata=courier)
    finally:
        await app.stop()
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert 0 < retry_delay(caught.value) <= 1
    assert await counts(db) == (5, 5)


async def test_known_keys_are_cached_until_the_ttl_and_revocation_then_applies(app, api_key) -> None:
    now = [1000.0]
    auth = ClientAuthenticator(app.store, cache_ttl=2.0, clock=lambda: now[0])
    client_id = await auth.authenticate(api_key)
    await app.store.revoke_client("courier", app.clock.now())
    assert await auth.authenticate(api_key) == client_id  # remembered within the TTL
    now[0] += 2.0
    with pytest.raises(Unauthenticated):
        await auth.authenticate(api_key)
    with pytest.raises(Unauthenticated):
        await auth.authenticate("ksk_never_issued")


async def test_with_postgresql_gone_a_send_is_unavailable_not_internal(settings: Settings, auth, db) -> None:
    assert settings.database_url and settings.redis_url
    app = await KaskadApp.start(
        settings.with_overrides(auth_cache_ttl=timedelta(minutes=5)),  # the key stays known
        backends=Backends(settings.database_url, settings.redis_url),
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = notification_pb2_grpc.NotificationServiceStub(channel)
            await stub.SendNotification(send_request(), metadata=auth)
            await app.pool.close()  # PostgreSQL is gone for this gateway

            # A person Redis has no copy of: the plan reads PostgreSQL first, then the insert.
            other = send_request(recipient=notification_pb2.Recipient(phone="+79167770011"))
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await stub.SendNotification(other, metadata=auth)
    finally:
        await app.stop(grace=None)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value.details()
    assert await counts(db) == (1, 1)
