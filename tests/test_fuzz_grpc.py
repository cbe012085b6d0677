"""Generated requests, valid and hostile, against a real gateway: every answer is a
documented status (never INTERNAL or UNKNOWN), and a refused request writes nothing.

``KASKAD_FUZZ_EXAMPLES`` sets the examples per test (default 300; the batch test runs a
third of them, each batch up to a dozen items). The fixtures (one app, one database)
serve every example of a test, so the function-scoped-fixture health check is off on
purpose; rows accumulate, and each example compares the counts before and after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gateway.core.auth import ClientRole
from kaskad.v1 import common_pb2, cost_report_pb2, cost_report_pb2_grpc, notification_pb2
from tests.conftest import create_key
from tests.test_accept import PHONE, counts

EXAMPLES = int(os.environ.get("KASKAD_FUZZ_EXAMPLES", "300"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,  # each example is a network round trip on a shared, busy machine
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
DOCUMENTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.PERMISSION_DENIED,
}
DOCUMENTED_CODES = {code.value[0] for code in DOCUMENTED}
INT64 = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-(2**63), -1, 0, 1, 2**31, 2**63 - 1]),
)
INT32 = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.sampled_from([-(2**31), -1_000_000_000, -1, 0, 999_999_999, 1_000_000_000, 2**31 - 1]),
)
# Phones people and attackers write: valid ones, the same with separators or other digits.
PHONES = [
    PHONE,
    "+79167770011",
    "+7 916 123-45-67",
    "+7 (916) 777-00-11",
    "+٧٩١٦١٢٣٤٥٦٧",
    "+७९१६१२३४५६७",
    "+７９１６１２３４５６７",
    "+44 20 7946 0958",
]
UNICODE = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("\u200b\u2060\ufeff\x00\u3164 ")
)


TEXTS = UNICODE | st.integers(0, 3000).map(lambda n: "x" * n) | st.sampled_from(["\u200b" * 5, " \u2060 "])


def _huge_map(size: int) -> dict[str, str]:
    return {f"k{i}": "v" * (size % 97) for i in range(size)}


MAPS = st.one_of(
    st.dictionaries(UNICODE, UNICODE, max_size=8),
    st.dictionaries(st.sampled_from(["order", "status", "what", "extra"]), UNICODE, max_size=4),
    st.integers(0, 5000).map(_huge_map),
)
DURATIONS = st.one_of(
    st.builds(duration_pb2.Duration, seconds=INT64, nanos=INT32),
    st.builds(duration_pb2.Duration, seconds=st.integers(-10, 40 * 86400), nanos=st.integers(0, 999_999_999)),
)
MONEY = st.builds(
    common_pb2.Money,
    currency_code=st.sampled_from(["RUB", "USD", "", "rub", "рубль"]) | UNICODE,
    units=INT64 | st.integers(0, 10**12),
    nanos=INT32 | st.integers(0, 999_999_999),
)
# A timestamp is either absolute (any int64/int32 pair) or an offset from now, made at send time.
TIMES = st.one_of(
    st.tuples(st.just("absolute"), INT64, INT32),
    st.tuples(st.just("ahead"), st.integers(-86400, 40 * 86400), st.integers(0, 999_999_999)),
)


def _timestamp(spec: tuple[str, int, int]) -> timestamp_pb2.Timestamp:
    kind, seconds, nanos = spec
    if kind == "ahead":
        seconds += int(datetime.now(UTC).timestamp())
    return timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos)


# Each example is a plausible request with a few fields (often none) drawn from hostile
# values, so the accept path past validation is exercised as well as the refusals.
SEND_FIELDS = (
    "idempotency_key",
    "phone",
    "vk_user_id",
    "viber_user_id",
    "content",
    "channels",
    "ack_policy",
    "ack_timeout",
    "deadline",
    "max_cost",
    "metadata",
)


@st.composite
def send_requests(draw: st.DrawFn) -> notification_pb2.SendNotificationRequest:
    hostile = draw(st.sets(st.sampled_from(SEND_FIELDS), max_size=3))

    def pick(field: str, plausible: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> Any:
        return draw(wild if field in hostile else plausible)

    message = notification_pb2.SendNotificationRequest(
        idempotency_key=pick("idempotency_key", st.uuids().map(str), UNICODE),
        recipient=notification_pb2.Recipient(
            phone=pick("phone", st.sampled_from(PHONES[:4]), st.sampled_from(PHONES) | UNICODE),
            vk_user_id=pick(
                "vk_user_id", st.sampled_from(["", "12345"]), st.sampled_from(["١٢٣", "0"]) | UNICODE
            ),
            viber_user_id=pick("viber_user_id", st.sampled_from(["", "abc=="]), UNICODE),
        ),
        channels=pick(
            "channels",
            st.lists(st.integers(1, 4), max_size=4),
            st.lists(st.integers(0, 5) | INT32, max_size=20),
        ),
        ack_policy=pick("ack_policy", st.integers(0, 2), INT32),
        metadata=pick("metadata", st.dictionaries(st.sampled_from(["a", "b"]), st.text(max_size=20)), MAPS),
    )
    if pick("content", st.booleans(), st.booleans()):
        message.text = pick("content", st.text(min_size=1, max_size=200).filter(str.strip), TEXTS)
    else:
        message.template.template_id = pick(
            "content", st.just("reminder"), st.sampled_from(["delivery_status", "reminder", "nope", ""])
        )
        message.template.params.update(pick("content", st.builds(dict, what=st.text(max_size=50)), MAPS))
    if draw(st.booleans()):
        plausible = st.builds(
            duration_pb2.Duration, seconds=st.integers(1, 30 * 86400 - 1), nanos=st.integers(0, 999_999_999)
        )
        message.ack_timeout.CopyFrom(pick("ack_timeout", plausible, DURATIONS))
    if draw(st.booleans()):
        plausible_time = st.tuples(st.just("ahead"), st.integers(60, 29 * 86400), st.integers(0, 999_999_999))
        message.deadline.CopyFrom(_timestamp(pick("deadline", plausible_time, TIMES)))
    if draw(st.booleans()):
        plausible_money = st.builds(
            common_pb2.Money,
            currency_code=st.just("RUB"),
            units=st.integers(0, 99_999_999_999),
            nanos=st.integers(0, 999_999_999),
        )
        message.max_cost.CopyFrom(pick("max_cost", plausible_money, MONEY))
    return message


def _code(error: grpc.aio.AioRpcError) -> grpc.StatusCode:
    code = error.code()
    assert code in DOCUMENTED, f"{code}: {error.details()}"
    return code


async def _answer(call: Awaitable[Any]) -> tuple[grpc.StatusCode, Any]:
    """The call's status and its response (OK) or error; --hypothesis-show-statistics tallies them."""
    try:
        answer = grpc.StatusCode.OK, await call
    except grpc.aio.AioRpcError as error:
        answer = _code(error), error
    event(answer[0].name)
    return answer


@given(message=send_requests())
@FUZZ
async def test_send_notification_answers_a_documented_status(message, stub, auth, db) -> None:
    before = await counts(db)
    code, answer = await _answer(stub.SendNotification(message, metadata=auth))
    after = await counts(db)
    if code is grpc.StatusCode.OK and not answer.duplicate:
        assert after == (before[0] + 1, before[1] + 1)
    else:
        assert after == before
    if code is not grpc.StatusCode.OK and message.recipient.phone in PHONES:
        assert message.recipient.phone not in answer.details()


@given(requests=st.lists(send_requests(), min_size=1, max_size=12))
@settings(FUZZ, max_examples=max(1, EXAMPLES // 3))
async def test_send_notification_batch_fails_items_alone(requests, stub, auth, db) -> None:
    before = await counts(db)
    code, answer = await _answer(
        stub.SendNotificationBatch(
            notification_pb2.SendNotificationBatchRequest(requests=requests), metadata=auth
        )
    )
    after = await counts(db)
    if code is not grpc.StatusCode.OK:
        assert after == before
        return
    assert [r.index for r in answer.results] == list(range(len(requests)))
    new = 0
    for result in answer.results:
        if result.WhichOneof("result") == "error":
            assert result.error.code in DOCUMENTED_CODES, result.error
            event(f"item error code {result.error.code}")
        else:
            event("item accepted")
            new += not result.response.duplicate
    assert after == (before[0] + new, before[1] + new)


@pytest.fixture
async def sent_id(stub, auth) -> str:
    sent = await stub.SendNotification(
        notification_pb2.SendNotificationRequest(
            idempotency_key="fuzz-seed", recipient=notification_pb2.Recipient(phone=PHONE), text="seed"
        ),
        metadata=auth,
    )
    return str(sent.notification_id)


@given(
    notification_id=st.one_of(
        UNICODE,
        st.uuids().map(str),
        st.uuids().map(lambda u: u.hex),
        st.uuids().map(lambda u: "{" + str(u) + "}"),
        st.just("seed"),
        st.integers(0, 100_000).map(lambda n: "0" * n),
    )
)
@FUZZ
async def test_get_notification_answers_a_documented_status(notification_id, stub, auth, db, sent_id) -> None:
    if notification_id == "seed":
        notification_id = sent_id
    before = await counts(db)
    code, answer = await _answer(
        stub.GetNotification(
            notification_pb2.GetNotificationRequest(notification_id=notification_id), metadata=auth
        )
    )
    if notification_id == sent_id:
        assert code is grpc.StatusCode.OK and answer.notification.notification_id == sent_id
    assert await counts(db) == before


NAMES = st.lists(
    st.sampled_from(["courier", "books", "vk", "sms", "delivery_status"]) | UNICODE, max_size=5
) | (st.integers(0, 3000).map(lambda n: [f"c{i}" for i in range(n)]))
REPORT_FIELDS = ("start_time", "end_time", "group_by", "channels", "providers", "clients", "template_ids")


@st.composite
def cost_report_requests(draw: st.DrawFn) -> cost_report_pb2.GetCostReportRequest:
    """A plausible report request (a past period) with a few fields drawn from hostile values."""
    hostile = draw(st.sets(st.sampled_from(REPORT_FIELDS), max_size=2))

    def pick(field: str, plausible: st.SearchStrategy[Any], wild: st.SearchStrategy[Any]) -> Any:
        return draw(wild if field in hostile else plausible)

    start_ago = draw(st.integers(0, 300 * 86400))
    start = pick("start_time", st.just(("ahead", -start_ago, 0)), TIMES)
    end = pick("end_time", st.just(("ahead", -start_ago + 86400, 0)), TIMES)
    request = cost_report_pb2.GetCostReportRequest(
        start_time=_timestamp(start),
        end_time=_timestamp(end),
        group_by=pick("group_by", st.lists(st.integers(1, 5), max_size=3), st.lists(INT32, max_size=8)),
        channels=pick("channels", st.lists(st.integers(1, 4), max_size=3), st.lists(INT32, max_size=8)),
        providers=pick("providers", st.lists(st.sampled_from(["vk", "sms"]), max_size=2), NAMES),
        clients=pick("clients", st.lists(st.just("courier"), max_size=1), NAMES),
        template_ids=pick("template_ids", st.lists(st.just("reminder"), max_size=1), NAMES),
    )
    for field in ("start_time", "end_time"):
        if field in hostile and draw(st.booleans()):
            request.ClearField(field)
    return request


@given(message=cost_report_requests(), finance=st.booleans())
@FUZZ
async def test_get_cost_report_answers_a_documented_status(
    message, finance, channel, auth, finance_auth, db
) -> None:
    before = await counts(db)
    stub = cost_report_pb2_grpc.CostReportServiceStub(channel)
    await _answer(stub.GetCostReport(message, metadata=finance_auth if finance else auth))
    assert await counts(db) == before


@pytest.fixture
async def finance_auth(app, database_url) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {await create_key(database_url, 'books', ClientRole.FINANCE)}")]


VALID: dict[str, Message] = {
    "/kaskad.v1.NotificationService/SendNotification": notification_pb2.SendNotificationRequest(
        idempotency_key="raw", recipient=notification_pb2.Recipient(phone=PHONE), text="hello"
    ),
    "/kaskad.v1.NotificationService/SendNotificationBatch": notification_pb2.SendNotificationBatchRequest(
        requests=[
            notification_pb2.SendNotificationRequest(
                idempotency_key="raw-batch", recipient=notification_pb2.Recipient(phone=PHONE), text="hello"
            )
        ]
    ),
    "/kaskad.v1.NotificationService/GetNotification": notification_pb2.GetNotificationRequest(
        notification_id=str(uuid.UUID(int=7))
    ),
    "/kaskad.v1.CostReportService/GetCostReport": cost_report_pb2.GetCostReportRequest(
        start_time=timestamp_pb2.Timestamp(seconds=0), end_time=timestamp_pb2.Timestamp(seconds=86400)
    ),
}


def _mutated(data: bytes, edits: list[tuple[int, int]]) -> bytes:
    """``data`` with some bytes replaced, to reach the parser's less travelled paths."""
    out = bytearray(data)
    for position, value in edits:
        if out:
            out[position % len(out)] = value
    return bytes(out)


RAW = st.one_of(
    st.binary(max_size=512),
    st.tuples(
        st.sampled_from(sorted(VALID)),
        st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=6),
    ),
    st.sampled_from([b"\xff" * 10, b"\x0a\xff\xff\xff\xff\x0f", b"\x08" + b"\xff" * 11, b"\x12\x02\xc3\x28"]),
)


@pytest.mark.parametrize("method", sorted(VALID))
@given(raw=RAW)
@settings(FUZZ, max_examples=max(1, EXAMPLES // 2))
async def test_raw_bytes_answer_a_documented_status(method, raw, channel, auth, db) -> None:
    data = _mutated(VALID[raw[0]].SerializeToString(), raw[1]) if isinstance(raw, tuple) else raw
    call: Callable[..., Awaitable[bytes]] = channel.unary_unary(
        method, request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    before = await counts(db)
    code, _ = await _answer(call(data, metadata=auth))
    if code is not grpc.StatusCode.OK:
        assert await counts(db) == before
