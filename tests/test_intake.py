"""The edge's checks over a real gRPC channel: batch isolation, one person per number,
configured maxima, garbage bytes and the cost report's timestamps."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from gateway.accept.intake import Intake, has_visible, normalise_phone
from gateway.accept.planning import RoutePlanner
from gateway.accept.templates import TemplateCatalog
from gateway.core.auth import ClientRole
from gateway.core.config import ConfigError, Settings, TemplateSettings, load_settings
from gateway.core.errors import InvalidArgument
from gateway.core.model import NewNotification, SendRequest, TemplateRequest
from gateway.runtime.app import Backends, KaskadApp
from kaskad.v1 import (
    common_pb2,
    cost_report_pb2,
    cost_report_pb2_grpc,
    notification_pb2,
    notification_pb2_grpc,
)
from providers.base import ProviderAdapter
from router.domain import AckPolicy, Channel, ClientId
from router.planner import Plan
from tests.conftest import create_key
from tests.test_accept import PHONE, counts, send_request, violations

INVALID = grpc.StatusCode.INVALID_ARGUMENT.value[0]
INTERNAL = grpc.StatusCode.INTERNAL.value[0]


async def test_one_out_of_range_deadline_fails_only_its_item(stub, auth, db) -> None:
    items = [send_request(f"b-{i}") for i in range(9)]
    items.insert(4, send_request("b-bad", deadline=timestamp_pb2.Timestamp(seconds=253402300800)))
    response = await stub.SendNotificationBatch(
        notification_pb2.SendNotificationBatchRequest(requests=items), metadata=auth
    )
    kinds = [r.WhichOneof("result") for r in response.results]
    assert kinds == ["response"] * 4 + ["error"] + ["response"] * 5
    bad = response.results[4].error
    assert bad.code == INVALID and [v.field for v in bad.field_violations] == ["deadline"]
    assert await counts(db) == (9, 9)


class _FailsForOneKey:
    """The real planner, but it breaks unexpectedly for one notification (a bug's stand-in)."""

    def __init__(self, planner: RoutePlanner, key: str) -> None:
        self._planner = planner
        self._key = key

    async def plan(self, new: NewNotification, now: datetime) -> Plan:
        if new.idempotency_key == self._key:
            raise RuntimeError("a bug in planning")
        return await self._planner.plan(new, now)

    def sms_baseline(self, new: NewNotification) -> Decimal:
        return self._planner.sms_baseline(new)


async def test_an_unexpected_error_in_one_item_is_that_items_internal_error(
    settings: Settings, database_url, db, caplog
) -> None:
    assert settings.database_url and settings.redis_url

    def planner(inner: RoutePlanner, adapters: Mapping[Channel, ProviderAdapter]) -> RoutePlanner:
        return _FailsForOneKey(inner, "b-broken")

    app = await KaskadApp.start(
        settings, backends=Backends(settings.database_url, settings.redis_url), route_planner=planner
    )
    auth = [("authorization", f"Bearer {await create_key(database_url, 'courier')}")]
    items = [send_request("b-0"), send_request("b-broken"), send_request("b-2")]
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            with caplog.at_level(logging.ERROR, logger="gateway.accept.desk"):
                response = await notification_pb2_grpc.NotificationServiceStub(channel).SendNotificationBatch(
                    notification_pb2.SendNotificationBatchRequest(requests=items), metadata=auth
                )
    finally:
        await app.stop(grace=None)
    assert [r.WhichOneof("result") for r in response.results] == ["response", "error", "response"]
    error = response.results[1].error
    assert error.code == INTERNAL
    assert "bug" not in error.message and "RuntimeError" not in error.message
    logged = [r for r in caplog.records if r.name == "gateway.accept.desk" and r.exc_info]
    assert len(logged) == 1 and "batch item 1" in logged[0].getMessage()
    assert await counts(db) == (2, 2)


@pytest.mark.parametrize("spelling", ["+7 916 123-45-67", "+7 (916) 123 45 67", "+7-916-1234567"])
async def test_a_number_written_with_separators_is_stored_as_one_person(spelling, stub, auth, db) -> None:
    first = await stub.SendNotification(send_request("same-person"), metadata=auth)
    again = await stub.SendNotification(
        send_request("same-person", recipient=notification_pb2.Recipient(phone=spelling)), metadata=auth
    )
    assert again.duplicate and again.notification_id == first.notification_id
    other = await stub.SendNotification(
        send_request("other-key", recipient=notification_pb2.Recipient(phone=spelling)), metadata=auth
    )
    phone = await db.fetchval(
        "SELECT phone FROM kaskad_notifications WHERE notification_id = $1", uuid.UUID(other.notification_id)
    )
    assert phone == PHONE
    assert await db.fetchval("SELECT count(DISTINCT phone) FROM kaskad_notifications") == 1


def test_phone_normalisation_takes_ascii_digits_only() -> None:
    assert normalise_phone("+7 (916) 123-45-67") == PHONE
    assert normalise_phone(PHONE) == PHONE
    for spelled in (
        "+٧٩١٦١٢٣٤٥٦٧",
        "+७९१६१२३४५६७",
        "+７９１６１２３４５６７",
        "+7\u00a0916 123 45 67",
        "79161234567",
    ):
        assert normalise_phone(spelled) is None


def test_visible_text() -> None:
    assert has_visible("ok") and has_visible(" 1 ") and has_visible("\u200b!") and has_visible("🙂")
    for blank in ("", "   ", "\u200b\u200c\u200d", "\u2060\ufeff\u00ad", "\n\t\r", "\u0301\u034f", "\u3164"):
        assert not has_visible(blank)


def test_a_template_rendering_nothing_visible_is_refused() -> None:
    intake = Intake(Settings(), TemplateCatalog({"bare": TemplateSettings("bare", "{{ a }}{{ b }}")}))
    request = SendRequest(
        idempotency_key="k",
        phone=PHONE,
        vk_user_id="",
        viber_user_id="",
        text=None,
        template=TemplateRequest("bare", {"a": "\u200b", "b": " \u2060"}),
        channels=(),
        ack_policy=AckPolicy.DELIVERED,
        ack_timeout=None,
        deadline=None,
        max_cost=None,
        metadata={},
    )
    with pytest.raises(InvalidArgument) as caught:
        intake.validate(ClientId(uuid.uuid4()), request, datetime.now(UTC))
    assert {v.field for v in caught.value.violations} == {"template.params"}
    ok = replace(request, template=TemplateRequest("bare", {"a": "\u200b", "b": "hi"}))
    assert intake.validate(ClientId(uuid.uuid4()), ok, datetime.now(UTC)).sms_body == "\u200bhi"


async def test_maxima_for_deadline_and_ack_timeout_are_configurable(
    settings: Settings, database_url, db
) -> None:
    assert settings.database_url and settings.redis_url
    app = await KaskadApp.start(
        settings.with_overrides(max_deadline=timedelta(hours=2), max_ack_timeout=timedelta(minutes=10)),
        backends=Backends(settings.database_url, settings.redis_url),
    )
    auth = [("authorization", f"Bearer {await create_key(database_url, 'courier')}")]

    def deadline(hours: float) -> timestamp_pb2.Timestamp:
        stamp = timestamp_pb2.Timestamp()
        stamp.FromDatetime(datetime.now(UTC) + timedelta(hours=hours))
        return stamp

    refused: dict[str, list[str]] = {}
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = notification_pb2_grpc.NotificationServiceStub(channel)
            await stub.SendNotification(
                send_request(
                    "within",
                    deadline=deadline(1.5),
                    ack_timeout=duration_pb2.Duration(seconds=600),
                    ack_policy=notification_pb2.ACK_POLICY_READ,
                ),
                metadata=auth,
            )
            for key, request in {
                "late": send_request("late", deadline=deadline(3)),
                "slow": send_request("slow", ack_timeout=duration_pb2.Duration(seconds=600, nanos=1000)),
            }.items():
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await stub.SendNotification(request, metadata=auth)
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                refused[key] = violations(caught.value)
    finally:
        await app.stop(grace=None)
    assert refused == {"late": ["deadline"], "slow": ["ack_timeout"]}
    assert await counts(db) == (1, 1)


def test_maxima_settings_are_read_from_the_environment() -> None:
    settings = load_settings(
        {"KASKAD_DEFAULT_DEADLINE": "3600", "KASKAD_MAX_DEADLINE": "7200", "KASKAD_MAX_ACK_TIMEOUT": "600"}
    )
    assert settings.max_deadline == timedelta(hours=2)
    assert settings.max_ack_timeout == timedelta(minutes=10)
    assert load_settings({}).max_deadline == timedelta(days=30) == load_settings({}).max_ack_timeout
    with pytest.raises(ConfigError, match="KASKAD_MAX_DEADLINE"):
        load_settings({"KASKAD_MAX_DEADLINE": "3600"})  # shorter than the default deadline
    with pytest.raises(ConfigError, match="KASKAD_MAX_ACK_TIMEOUT"):
        load_settings({"KASKAD_MAX_ACK_TIMEOUT": "0"})
    with pytest.raises(ConfigError, match="KASKAD_MAX_ACK_TIMEOUT"):
        load_settings({"KASKAD_MAX_ACK_TIMEOUT": str(11 * 365 * 86400)})


async def test_max_cost_at_the_columns_limit_is_stored_exactly(stub, auth, db) -> None:
    biggest = common_pb2.Money(currency_code="RUB", units=99_999_999_999, nanos=999_999_999)
    sent = await stub.SendNotification(send_request(max_cost=biggest), metadata=auth)
    stored = await db.fetchval(
        "SELECT max_cost FROM kaskad_notifications WHERE notification_id = $1",
        uuid.UUID(sent.notification_id),
    )
    assert stored == Decimal("99999999999.999999999")


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("/kaskad.v1.NotificationService/SendNotification", "SendNotificationRequest"),
        ("/kaskad.v1.NotificationService/SendNotificationBatch", "SendNotificationBatchRequest"),
        ("/kaskad.v1.NotificationService/GetNotification", "GetNotificationRequest"),
        ("/kaskad.v1.NotificationService/CancelNotification", "CancelNotificationRequest"),
        ("/kaskad.v1.CostReportService/GetCostReport", "GetCostReportRequest"),
    ],
)
async def test_garbage_bytes_are_invalid_argument_with_a_plain_message(
    method, message, channel, auth, db
) -> None:
    call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(b"\xff\xff\xff\xff", metadata=auth)  # a truncated varint: never a valid message
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == f"the request is not a valid {message} message"
    assert await counts(db) == (0, 0)


def _stamp(seconds: int, nanos: int = 0) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


@pytest.mark.parametrize(
    ("start", "end", "field"),
    [
        (_stamp(0), _stamp(253402300800), "end_time"),
        (_stamp(-62135596801), _stamp(0), "start_time"),
        (_stamp(0, -1), _stamp(86400), "start_time"),
        (_stamp(0), _stamp(86400, 1_000_000_000), "end_time"),
        (_stamp(-(2**63)), _stamp(2**63 - 1), "start_time"),
    ],
)
async def test_cost_report_timestamps_out_of_range_are_invalid_argument(
    start, end, field, channel, auth
) -> None:
    stub = cost_report_pb2_grpc.CostReportServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetCostReport(
            cost_report_pb2.GetCostReportRequest(start_time=start, end_time=end), metadata=auth
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in violations(caught.value)


async def test_cost_report_filters_with_nul_are_invalid_argument(channel, database_url) -> None:
    finance = [("authorization", f"Bearer {await create_key(database_url, 'books', ClientRole.FINANCE)}")]
    stub = cost_report_pb2_grpc.CostReportServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetCostReport(
            cost_report_pb2.GetCostReportRequest(
                start_time=_stamp(0), end_time=_stamp(86400), providers=["vk\x00"], clients=["x" * 200]
            ),
            metadata=finance,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violations(caught.value) == ["providers[0]", "clients[0]"]


async def test_a_status_with_thousands_of_violations_still_reaches_the_caller(stub, auth, db) -> None:
    request = send_request(metadata={f"{'ключ' * 20}{i}": "v" * 600 for i in range(2000)})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.SendNotification(request, metadata=auth)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "metadata" in violations(caught.value)
    assert await counts(db) == (0, 0)
