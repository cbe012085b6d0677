"""The gateway's own records: what a caller asked for, what was stored, what is returned.

These sit between the proto messages (converted in ``gateway.api.convert``) and
the store; neither side leaks into the other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from router.domain import AckPolicy, Channel, ClientId, Money, NotificationId, NotificationState
from router.planner import Plan


@dataclass(frozen=True, slots=True)
class TemplateRequest:
    template_id: str
    params: dict[str, str]


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A send as the caller expressed it, before validation.

    ``channels`` and ``ack_policy`` are already mapped from proto enums; a value the
    proto side could not map is recorded in ``conversion_errors`` as ``(field, text)``.
    """

    idempotency_key: str
    phone: str
    vk_user_id: str
    viber_user_id: str
    text: str | None
    template: TemplateRequest | None
    channels: tuple[Channel, ...]
    ack_policy: AckPolicy
    ack_timeout: timedelta | None
    deadline: datetime | None
    max_cost: Money | None
    metadata: dict[str, str]
    conversion_errors: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class RouteStepView:
    channel: Channel
    provider: str
    expected_cost: Decimal
    probability: float
    wait: timedelta


@dataclass(frozen=True, slots=True)
class RouteView:
    """The planned route as callers see it, read from the stored plan (``Plan.to_dict``)."""

    steps: tuple[RouteStepView, ...]
    expected_cost: Decimal
    currency: str
    skipped: tuple[tuple[Channel, str], ...] = ()

    @classmethod
    def from_plan(cls, plan: Plan) -> RouteView:
        """The same view :meth:`from_json` reads from ``plan.to_dict()``, without the detour."""
        return cls(
            steps=tuple(
                RouteStepView(
                    channel=s.channel,
                    provider=s.provider,
                    expected_cost=s.expected_cost.amount,
                    probability=s.delivery_probability,
                    wait=s.wait,
                )
                for s in plan.steps
            ),
            expected_cost=plan.expected_cost.amount,
            currency=plan.expected_cost.currency,
            skipped=tuple((s.channel, f"{s.reason.value}: {s.detail}") for s in plan.skipped),
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RouteView:
        return cls(
            steps=tuple(
                RouteStepView(
                    channel=Channel(s["channel"]),
                    provider=s["provider"],
                    expected_cost=Decimal(s["expected_cost"]),
                    probability=float(s["delivery_probability"]),
                    wait=timedelta(seconds=s["wait_s"]),
                )
                for s in data["steps"]
            ),
            expected_cost=Decimal(data["expected_cost"]),
            currency=data["currency"],
            skipped=tuple(
                (Channel(s["channel"]), f"{s['reason']}: {s['detail']}") for s in data.get("skipped", [])
            ),
        )


@dataclass(frozen=True, slots=True)
class NewNotification:
    """A validated, rendered notification ready to be stored."""

    client_id: ClientId
    idempotency_key: str
    request_hash: bytes
    phone: str
    vk_user_id: str | None
    viber_user_id: str | None
    template_id: str | None
    template_params: dict[str, str] | None
    bodies: dict[Channel, str]
    # The SMS rendering, also when SMS is not allowed: what SMS-only would have cost.
    sms_body: str
    channels: tuple[Channel, ...]
    ack_policy: AckPolicy
    ack_timeout: timedelta | None
    deadline: datetime
    max_cost: Decimal | None
    currency: str
    metadata: dict[str, str]


@dataclass(frozen=True, slots=True)
class AcceptResult:
    notification_id: NotificationId
    duplicate: bool
    route: RouteView


@dataclass(frozen=True, slots=True)
class NotificationRecord:
    """A stored notification as ``GetNotification`` shows it (phone kept masked)."""

    notification_id: NotificationId
    idempotency_key: str
    state: NotificationState
    masked_phone: str
    vk_user_id: str | None
    viber_user_id: str | None
    channels: tuple[Channel, ...]
    ack_policy: AckPolicy
    template_id: str | None
    route: RouteView
    created_at: datetime
    updated_at: datetime
    deadline: datetime
    metadata: dict[str, str]
    currency: str
    attempts: tuple[AttemptRow, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class AttemptRow:
    attempt_id: uuid.UUID
    notification_id: NotificationId
    step_index: int
    try_number: int
    channel: Channel
    provider: str
    dedupe_key: str
    provider_message_id: str | None
    status: str
    outcome: str | None
    billed_units: int | None
    billed_amount: Decimal | None
    currency: str
    late: bool
    created_at: datetime
    submitted_at: datetime | None
    outcome_at: datetime | None
    detail: str | None
