"""Proto messages to the gateway's records and back: ``from_proto`` / ``to_proto`` at the edge."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import TypeVar

from google.protobuf import duration_pb2, timestamp_pb2

from gateway.core.errors import FieldViolation, InvalidArgument
from gateway.core.model import (
    AcceptResult,
    AttemptRow,
    NotificationRecord,
    RouteView,
    SendRequest,
    TemplateRequest,
)
from gateway.store.ledger import CostReport, CostReportQuery, CostReportRow, Grouping
from kaskad.v1 import common_pb2, cost_report_pb2, notification_pb2
from router.domain import AckPolicy, Channel, Money, NotificationId, NotificationState

_K = TypeVar("_K")
_V = TypeVar("_V")

_NANOS = Decimal(10) ** 9
_NINE_PLACES = Decimal("0.000000001")

# The contract names each channel CHANNEL_<NAME>; a channel missing there fails at import.
CHANNEL_FROM_PROTO: dict[common_pb2.Channel.ValueType, Channel] = {
    common_pb2.Channel.Value(f"CHANNEL_{channel.name}"): channel for channel in Channel
}
CHANNEL_TO_PROTO = {v: k for k, v in CHANNEL_FROM_PROTO.items()}

_ACK_FROM_PROTO = {
    notification_pb2.ACK_POLICY_UNSPECIFIED: AckPolicy.DELIVERED,
    notification_pb2.ACK_POLICY_DELIVERED: AckPolicy.DELIVERED,
    notification_pb2.ACK_POLICY_READ: AckPolicy.READ,
}
_ACK_TO_PROTO = {
    AckPolicy.DELIVERED: notification_pb2.ACK_POLICY_DELIVERED,
    AckPolicy.READ: notification_pb2.ACK_POLICY_READ,
}
_STATE_TO_PROTO = {
    NotificationState.ACCEPTED: notification_pb2.NOTIFICATION_STATE_ACCEPTED,
    NotificationState.IN_PROGRESS: notification_pb2.NOTIFICATION_STATE_IN_PROGRESS,
    NotificationState.DELIVERED: notification_pb2.NOTIFICATION_STATE_DELIVERED,
    NotificationState.READ: notification_pb2.NOTIFICATION_STATE_READ,
    NotificationState.FAILED: notification_pb2.NOTIFICATION_STATE_FAILED,
    NotificationState.EXPIRED: notification_pb2.NOTIFICATION_STATE_EXPIRED,
    NotificationState.CANCELLED: notification_pb2.NOTIFICATION_STATE_CANCELLED,
}


def money_from_proto(message: common_pb2.Money) -> Money:
    """Exact conversion; raises ValueError for inconsistent signs or nanos out of range."""
    if not -999_999_999 <= message.nanos <= 999_999_999:
        raise ValueError("nanos must be between -999999999 and 999999999")
    if (message.units > 0 and message.nanos < 0) or (message.units < 0 and message.nanos > 0):
        raise ValueError("units and nanos must have the same sign")
    amount = Decimal(message.units) + Decimal(message.nanos) / _NANOS
    return Money(amount, message.currency_code)


def money_to_proto(amount: Decimal, currency: str) -> common_pb2.Money:
    exact = amount.quantize(_NINE_PLACES, rounding=ROUND_HALF_EVEN)
    units = int(exact)
    nanos = int((exact - units) * _NANOS)
    return common_pb2.Money(currency_code=currency, units=units, nanos=nanos)


# The limits of google.protobuf.Timestamp (0001-01-01 to 9999-12-31) and Duration (10,000
# years): values outside them are not valid messages of those types, and would overflow
# datetime/timedelta or PostgreSQL further on.
_TIMESTAMP_MIN_SECONDS = -62_135_596_800
_TIMESTAMP_MAX_SECONDS = 253_402_300_799
_DURATION_MAX_SECONDS = 315_576_000_000
_MAX_NANOS = 999_999_999
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# More channels than exist can only be repeats or mistakes; one violation says so.
_MAX_CHANNEL_ENTRIES = 16


def timestamp_from_proto(
    field: str, message: timestamp_pb2.Timestamp, errors: list[tuple[str, str]]
) -> datetime | None:
    """The instant, or None with a violation when it is not a valid Timestamp."""
    if not _TIMESTAMP_MIN_SECONDS <= message.seconds <= _TIMESTAMP_MAX_SECONDS:
        errors.append((field, "must lie between 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z"))
        return None
    if not 0 <= message.nanos <= _MAX_NANOS:
        errors.append((field, "nanos must be between 0 and 999999999"))
        return None
    return _EPOCH + timedelta(seconds=message.seconds, microseconds=message.nanos // 1000)


def duration_from_proto(
    field: str, message: duration_pb2.Duration, errors: list[tuple[str, str]]
) -> timedelta | None:
    """The duration, or None with a violation when it is not a valid, normalised Duration."""
    seconds, nanos = message.seconds, message.nanos
    if not -_DURATION_MAX_SECONDS <= seconds <= _DURATION_MAX_SECONDS:
        errors.append(
            (field, f"seconds must be between -{_DURATION_MAX_SECONDS} and {_DURATION_MAX_SECONDS}")
        )
        return None
    if not -_MAX_NANOS <= nanos <= _MAX_NANOS:
        # Not carried into seconds: 1 s + 2e9 ns is not a normalised Duration.
        errors.append((field, "nanos must be between -999999999 and 999999999"))
        return None
    if (seconds > 0 and nanos < 0) or (seconds < 0 and nanos > 0):
        errors.append((field, "seconds and nanos must have the same sign"))
        return None
    micros = abs(nanos) // 1000
    return timedelta(seconds=seconds, microseconds=-micros if nanos < 0 else micros)


def _max_cost_from_proto(message: common_pb2.Money, errors: list[tuple[str, str]]) -> Money | None:
    code = message.currency_code
    if len(code) != 3 or not code.isascii() or not code.isalpha() or not code.isupper():
        errors.append(("max_cost.currency_code", "must be a three-letter ISO 4217 code, such as RUB"))
        return None
    try:
        return money_from_proto(message)
    except ValueError as exc:
        errors.append(("max_cost", str(exc)))
        return None


def send_request_from_proto(message: notification_pb2.SendNotificationRequest) -> SendRequest:
    """The request as the gateway's record; what cannot be converted is in ``conversion_errors``."""
    errors: list[tuple[str, str]] = []
    channels: list[Channel] = []
    if len(message.channels) > _MAX_CHANNEL_ENTRIES:
        errors.append(("channels", f"at most {_MAX_CHANNEL_ENTRIES} entries"))
    else:
        for index, value in enumerate(message.channels):
            channel = CHANNEL_FROM_PROTO.get(value)  # an unknown number stays unmapped
            if channel is None:
                errors.append((f"channels[{index}]", f"unknown channel {value}"))
            else:
                channels.append(channel)
    ack_policy = _ACK_FROM_PROTO.get(message.ack_policy)
    if ack_policy is None:
        errors.append(("ack_policy", f"unknown ack policy {message.ack_policy}"))
        ack_policy = AckPolicy.DELIVERED
    max_cost = None
    if message.HasField("max_cost"):
        max_cost = _max_cost_from_proto(message.max_cost, errors)
    content = message.WhichOneof("content")
    template = None
    if content == "template":
        template = TemplateRequest(message.template.template_id, dict(message.template.params))
    ack_timeout = None
    if message.HasField("ack_timeout"):
        ack_timeout = duration_from_proto("ack_timeout", message.ack_timeout, errors)
    deadline = None
    if message.HasField("deadline"):
        deadline = timestamp_from_proto("deadline", message.deadline, errors)
    return SendRequest(
        idempotency_key=message.idempotency_key,
        phone=message.recipient.phone.strip(),
        vk_user_id=message.recipient.vk_user_id,
        viber_user_id=message.recipient.viber_user_id,
        text=message.text if content == "text" else None,
        template=template,
        channels=tuple(channels),
        ack_policy=ack_policy,
        ack_timeout=ack_timeout,
        deadline=deadline,
        max_cost=max_cost,
        metadata=dict(message.metadata),
        conversion_errors=tuple(errors),
    )


_NOTIFICATION_ID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE | re.ASCII
)


def notification_id_from_proto(value: str) -> NotificationId:
    # Only the form Kaskad returns: uuid.UUID alone would also take braces, URNs and
    # non-ASCII digits.
    if not _NOTIFICATION_ID.fullmatch(value):
        raise InvalidArgument(
            [FieldViolation("notification_id", "must be a notification id returned by Kaskad")]
        )
    return NotificationId(uuid.UUID(value))


def route_to_proto(route: RouteView) -> notification_pb2.Route:
    message = notification_pb2.Route(expected_cost=money_to_proto(route.expected_cost, route.currency))
    for step in route.steps:
        wait = duration_pb2.Duration()
        wait.FromTimedelta(step.wait)
        message.steps.append(
            notification_pb2.RouteStep(
                channel=CHANNEL_TO_PROTO[step.channel],
                provider=step.provider,
                expected_cost=money_to_proto(step.expected_cost, route.currency),
                delivery_probability=step.probability,
                wait=wait,
            )
        )
    for channel, reason in route.skipped:
        message.skipped.append(
            notification_pb2.SkippedChannel(channel=CHANNEL_TO_PROTO[channel], reason=reason)
        )
    return message


class RouteMessages:
    """``route_to_proto`` remembered for the routes seen last.

    Most accepts share a handful of routes (a plan for a person with no history is reused),
    and building the message is a good part of what answering an accept costs. A message
    handed out is copied into its response, never changed.
    """

    def __init__(self, size: int = 1024) -> None:
        self._size = size
        self._messages: dict[RouteView, notification_pb2.Route] = {}

    def __call__(self, route: RouteView) -> notification_pb2.Route:
        message = self._messages.get(route)
        if message is None:
            message = route_to_proto(route)
            if len(self._messages) >= self._size:
                del self._messages[next(iter(self._messages))]
            self._messages[route] = message
        return message


def accept_result_to_proto(
    result: AcceptResult, route_message: Callable[[RouteView], notification_pb2.Route]
) -> notification_pb2.SendNotificationResponse:
    """The answer to an accept; ``route_message`` builds the route (a :class:`RouteMessages`)."""
    return notification_pb2.SendNotificationResponse(
        notification_id=str(result.notification_id),
        duplicate=result.duplicate,
        route=route_message(result.route),
    )


def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


_OUTCOME_TO_PROTO = {
    "delivered": notification_pb2.ATTEMPT_OUTCOME_DELIVERED,
    "read": notification_pb2.ATTEMPT_OUTCOME_READ,
    "answered": notification_pb2.ATTEMPT_OUTCOME_READ,
    "unreachable": notification_pb2.ATTEMPT_OUTCOME_UNREACHABLE,
    "rejected": notification_pb2.ATTEMPT_OUTCOME_REJECTED,
    "failed": notification_pb2.ATTEMPT_OUTCOME_FAILED,
    "expired": notification_pb2.ATTEMPT_OUTCOME_FAILED,
    "undeliverable": notification_pb2.ATTEMPT_OUTCOME_FAILED,
    "no_answer": notification_pb2.ATTEMPT_OUTCOME_NO_ANSWER,
    "busy": notification_pb2.ATTEMPT_OUTCOME_NO_ANSWER,
}
_STATUS_TO_PROTO = {
    "submitting": notification_pb2.ATTEMPT_OUTCOME_PENDING,
    "awaiting_report": notification_pb2.ATTEMPT_OUTCOME_PENDING,
    "outcome_unknown": notification_pb2.ATTEMPT_OUTCOME_PENDING,
    "awaiting_read": notification_pb2.ATTEMPT_OUTCOME_DELIVERED,
    "timed_out": notification_pb2.ATTEMPT_OUTCOME_TIMED_OUT,
    "not_sent": notification_pb2.ATTEMPT_OUTCOME_FAILED,
    "retry_wait": notification_pb2.ATTEMPT_OUTCOME_PENDING,
    "abandoned": notification_pb2.ATTEMPT_OUTCOME_CANCELLED,
    "failed": notification_pb2.ATTEMPT_OUTCOME_FAILED,
    "succeeded": notification_pb2.ATTEMPT_OUTCOME_DELIVERED,
}


def attempt_to_proto(attempt: AttemptRow) -> notification_pb2.Attempt:
    if attempt.outcome is not None:
        outcome = _OUTCOME_TO_PROTO[attempt.outcome]
    else:
        outcome = _STATUS_TO_PROTO.get(attempt.status, notification_pb2.ATTEMPT_OUTCOME_UNSPECIFIED)
    detail = attempt.detail or ""
    if attempt.late:
        detail = "reported after the next step had started" + (f"; {detail}" if detail else "")
    message = notification_pb2.Attempt(
        channel=CHANNEL_TO_PROTO[attempt.channel],
        provider=attempt.provider,
        outcome=outcome,
        provider_message_id=attempt.provider_message_id or "",
        billed_cost=money_to_proto(attempt.billed_amount or Decimal(0), attempt.currency),
        billed_units=attempt.billed_units or 0,
        detail=detail,
    )
    if attempt.submitted_at is not None:
        message.submit_time.CopyFrom(_timestamp(attempt.submitted_at))
    if attempt.outcome_at is not None:
        message.outcome_time.CopyFrom(_timestamp(attempt.outcome_at))
    return message


def notification_to_proto(record: NotificationRecord) -> notification_pb2.Notification:
    return notification_pb2.Notification(
        notification_id=str(record.notification_id),
        idempotency_key=record.idempotency_key,
        state=_STATE_TO_PROTO[record.state],
        recipient=notification_pb2.Recipient(
            phone=record.masked_phone,
            vk_user_id=record.vk_user_id or "",
            viber_user_id=record.viber_user_id or "",
        ),
        channels=[CHANNEL_TO_PROTO[c] for c in record.channels],
        ack_policy=_ACK_TO_PROTO[record.ack_policy],
        template_id=record.template_id or "",
        route=route_to_proto(record.route),
        create_time=_timestamp(record.created_at),
        update_time=_timestamp(record.updated_at),
        deadline=_timestamp(record.deadline),
        metadata=record.metadata,
        attempts=[attempt_to_proto(a) for a in record.attempts],
        total_cost=money_to_proto(
            sum((a.billed_amount or Decimal(0) for a in record.attempts), Decimal(0)), record.currency
        ),
    )


_GROUPING_FROM_PROTO = {
    cost_report_pb2.COST_GROUPING_CHANNEL: Grouping.CHANNEL,
    cost_report_pb2.COST_GROUPING_PROVIDER: Grouping.PROVIDER,
    cost_report_pb2.COST_GROUPING_CLIENT: Grouping.CLIENT,
    cost_report_pb2.COST_GROUPING_TEMPLATE: Grouping.TEMPLATE,
    cost_report_pb2.COST_GROUPING_DAY: Grouping.DAY,
}
_MAX_REPORT_PERIOD = timedelta(days=366)
# Filters name a few providers, clients or templates; longer lists or names are mistakes.
_MAX_FILTER_ENTRIES = 100
_MAX_FILTER_VALUE = 128


def _filter_values(field: str, values: Sequence[str], violations: list[FieldViolation]) -> tuple[str, ...]:
    if len(values) > _MAX_FILTER_ENTRIES:
        violations.append(FieldViolation(field, f"at most {_MAX_FILTER_ENTRIES} entries"))
        return ()
    for index, value in enumerate(values):
        # Names are short and PostgreSQL text cannot hold NUL: refused here, not INTERNAL later.
        if not value or len(value) > _MAX_FILTER_VALUE or "\x00" in value:
            violations.append(
                FieldViolation(f"{field}[{index}]", f"must be 1 to {_MAX_FILTER_VALUE} characters, no NUL")
            )
    return tuple(values)


def _enum_filter(
    field: str, values: Sequence[_K], table: Mapping[_K, _V], what: str, violations: list[FieldViolation]
) -> list[_V]:
    """The members an enum filter names; too many entries, or one ``table`` does not know, is a
    violation."""
    if len(values) > _MAX_FILTER_ENTRIES:
        violations.append(FieldViolation(field, f"at most {_MAX_FILTER_ENTRIES} entries"))
        return []
    members: list[_V] = []
    for index, value in enumerate(values):
        member = table.get(value)
        if member is None:
            violations.append(FieldViolation(f"{field}[{index}]", f"unknown {what} {value}"))
        else:
            members.append(member)
    return members


def cost_query_from_proto(message: cost_report_pb2.GetCostReportRequest) -> CostReportQuery:
    errors: list[tuple[str, str]] = []
    start = end = None
    if not message.HasField("start_time"):
        errors.append(("start_time", "required"))
    else:
        start = timestamp_from_proto("start_time", message.start_time, errors)
    if not message.HasField("end_time"):
        errors.append(("end_time", "required"))
    else:
        end = timestamp_from_proto("end_time", message.end_time, errors)
    violations = [FieldViolation(f, d) for f, d in errors]
    if start is not None and end is not None:
        if end <= start:
            violations.append(FieldViolation("end_time", "must be after start_time"))
        elif end - start > _MAX_REPORT_PERIOD:
            violations.append(FieldViolation("end_time", "a report covers at most 366 days"))
    # A grouping named twice groups once.
    groups = dict.fromkeys(
        _enum_filter("group_by", message.group_by, _GROUPING_FROM_PROTO, "grouping", violations)
    )
    channels = [
        c.value for c in _enum_filter("channels", message.channels, CHANNEL_FROM_PROTO, "channel", violations)
    ]
    providers = _filter_values("providers", message.providers, violations)
    clients = _filter_values("clients", message.clients, violations)
    template_ids = _filter_values("template_ids", message.template_ids, violations)
    if violations or start is None or end is None:
        raise InvalidArgument(violations)
    return CostReportQuery(
        start=start,
        end=end,
        group_by=tuple(groups),
        channels=tuple(channels),
        providers=providers,
        clients=clients,
        template_ids=template_ids,
    )


def _cost_row_to_proto(row: CostReportRow, currency: str) -> cost_report_pb2.CostReportRow:
    group = dict(row.group)
    if "channel" in group:
        group["channel"] = common_pb2.Channel.Name(CHANNEL_TO_PROTO[Channel(group["channel"])])
    return cost_report_pb2.CostReportRow(
        group=group,
        notifications=row.notifications,
        attempts=row.attempts,
        delivered=row.delivered,
        billed_units=row.billed_units,
        total_cost=money_to_proto(row.total_cost, currency),
        cost_per_delivered=money_to_proto(row.cost_per_delivered, currency),
        fallback_spend=money_to_proto(row.fallback_spend, currency),
        price_book_cost=money_to_proto(row.price_book_cost, currency),
    )


def cost_report_to_proto(report: CostReport) -> cost_report_pb2.GetCostReportResponse:
    return cost_report_pb2.GetCostReportResponse(
        rows=[_cost_row_to_proto(r, report.currency) for r in report.rows],
        total=_cost_row_to_proto(report.total, report.currency),
        sms_only_baseline=money_to_proto(report.sms_only_baseline, report.currency),
        saving=money_to_proto(report.saving, report.currency),
        saving_percent=f"{report.saving_percent:f}",
    )
