"""Viber adapter: JSON ``send_message`` with ``X-Viber-Auth-Token``; HMAC-signed callbacks.

Callbacks (``delivered``, ``seen``, ``failed``, ``expired``) are signed with
HMAC-SHA256 of the raw body, keyed by the auth token, in
``X-Viber-Content-Signature``. The dedupe key travels as ``tracking_data``,
which the provider uses to drop a repeated send. Viber bills a message when it
is delivered within its TTL (30 s to 14 days); Kaskad sends each step with a TTL about equal
to its wait.

The business gateway answers a status lookup like its send: ``POST /pa/get_message_status``
with the auth token header and ``{"message_token"}`` (or ``{"tracking_data"}`` when the send's
answer was lost), answering ``{"status": 0, "message_status": ...}`` with ``pending``,
``delivered``, ``seen``, ``expired``, ``failed`` or ``unknown`` (and the billed ``price``), or a
non-zero ``status`` on error. :meth:`ViberAdapter.query_status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from providers.base import DEFAULT_SIMULATOR_URL, DeliveryEvent, OutboundMessage, SubmitReceipt
from providers.callback_auth import (
    callback_id,
    detail_text,
    from_unix_seconds,
    load_json_object,
    malformed_on_error,
    optional_key,
    require_hmac_signature,
    scrub_phones,
    stated_price,
)
from providers.errors import OutcomeUnknown, Rejected, Transient, Unreachable
from providers.transport import HttpAdapter, TransportSettings, json_object_reply
from router.domain import BillingMoment, Channel, DeliveryOutcome, Money

SIGNATURE_HEADER = "X-Viber-Content-Signature"
AUTH_HEADER = "X-Viber-Auth-Token"

# 5 receiverNotRegistered ("not a Viber user"), 6 receiverNotSubscribed (user blocked us),
# 11 receiverNoSuitableDevice.
UNREACHABLE_STATUSES = frozenset({5, 6, 11})
# 12 tooManyRequests.
TRANSIENT_STATUSES = frozenset({12})

TTL_MIN = timedelta(seconds=30)
TTL_MAX = timedelta(days=14)

# The status lookup's ``message_status``: the callbacks it stands for (none: pending or unknown).
_STATUS_EVENTS: dict[str, tuple[str, ...]] = {
    "delivered": ("delivered",),
    "seen": ("delivered", "seen"),
    "expired": ("expired",),
    "failed": ("failed",),
}

_CALLBACK_KINDS = {
    "delivered": DeliveryOutcome.DELIVERED,
    "seen": DeliveryOutcome.READ,
    "failed": DeliveryOutcome.FAILED,
    "expired": DeliveryOutcome.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class ViberSettings:
    """Where and how to reach Viber; defaults point at the simulator."""

    base_url: str = DEFAULT_SIMULATOR_URL
    auth_token: str = "sim-viber-auth-token"  # noqa: S105 - simulator default, not a real secret
    sender_name: str = "Kaskad"
    price_per_delivered: Decimal = Decimal("1.20")
    currency: str = "RUB"
    max_text_length: int = 1000
    default_ttl: timedelta = timedelta(days=1)
    # The gateway's message status lookup; false for a contract without it (callbacks and the
    # TTL then resolve a message, see providers.base).
    status_query: bool = True
    transport: TransportSettings = field(default_factory=TransportSettings)


class ViberAdapter(HttpAdapter[ViberSettings]):
    """Sends Viber messages and parses Viber's signed callbacks."""

    name = "viber"
    channel = Channel.VIBER
    billing = BillingMoment.ON_DELIVERY
    callback_path = "/callbacks/viber"
    settings_type = ViberSettings

    @property
    def max_text_length(self) -> int:
        return self.settings.max_text_length

    def units_for(self, text: str) -> int:
        return 1

    def price_for(self, units: int) -> Money:
        return Money(self.settings.price_per_delivered * units, self.settings.currency)

    def ttl_for(self, message: OutboundMessage) -> timedelta:
        """TTL sent to Viber: the message's own or the default, cut at the deadline, in 30 s..14 d."""
        ttl = message.ttl or self.settings.default_ttl
        if message.deadline is not None:
            ttl = min(ttl, message.deadline - self._now())
        return min(max(ttl, TTL_MIN), TTL_MAX)

    async def submit(self, message: OutboundMessage) -> SubmitReceipt:
        """Send one message; raises Unreachable, Rejected, Transient, OutcomeUnknown or CircuitOpen."""
        if len(message.text) > self.settings.max_text_length:
            raise Rejected(
                f"text of {len(message.text)} chars exceeds {self.settings.max_text_length}",
                provider=self.name,
            )
        payload: dict[str, Any] = {
            "type": "text",
            "text": message.text,
            "sender": {"name": self.settings.sender_name},
            "tracking_data": message.dedupe_key,
            "ttl": int(self.ttl_for(message).total_seconds()),
            "min_api_version": 1,
        }
        if message.viber_user_id is not None:
            payload["receiver"] = message.viber_user_id
        else:
            payload["phone"] = message.phone
        token = await self._transport.call_with_retries(
            lambda: self._send_once(payload, message.deadline), deadline=message.deadline
        )
        return SubmitReceipt(
            provider=self.name,
            channel=self.channel,
            provider_message_id=token,
            dedupe_key=message.dedupe_key,
            units=1,
            billing=self.billing,
            billed_now=Money.zero(self.settings.currency),
            expected_cost=self.price_for(1),
        )

    async def _send_once(self, payload: Mapping[str, Any], deadline: datetime | None) -> str:
        reply = await self._transport.request(
            "POST",
            "/pa/send_message",
            json_body=payload,
            headers={AUTH_HEADER: self.settings.auth_token},
            deadline=deadline,
        )
        body = json_object_reply(reply, self.name)
        status = body.get("status")
        text = scrub_phones(str(body.get("status_message", "")))
        if status == 0:
            token = body.get("message_token")
            if isinstance(token, bool) or not isinstance(token, int | str) or token == "":
                raise OutcomeUnknown("response carries no message_token", provider=self.name)
            return str(token)
        if status in UNREACHABLE_STATUSES:
            raise Unreachable(text or "recipient unreachable", provider=self.name, code=str(status))
        if status in TRANSIENT_STATUSES:
            raise Transient(text or "try later", provider=self.name, code=str(status))
        raise Rejected(text or "message rejected", provider=self.name, code=str(status))

    @property
    def offers_status_query(self) -> bool:
        return self.settings.status_query

    async def query_status(
        self, provider_message_id: str | None, dedupe_key: str
    ) -> list[DeliveryEvent] | None:
        """Ask the gateway what became of the message (:class:`providers.base.StatusQuery`);
        None while it is pending or unknown to the gateway."""
        ask: dict[str, Any] = (
            {"message_token": provider_message_id} if provider_message_id else {"tracking_data": dedupe_key}
        )

        async def once() -> list[DeliveryEvent] | None:
            reply = await self._transport.request(
                "POST",
                "/pa/get_message_status",
                json_body=ask,
                headers={AUTH_HEADER: self.settings.auth_token},
            )
            body = json_object_reply(reply, self.name)
            status = body.get("status")
            if status != 0:
                text = scrub_phones(str(body.get("status_message", "")))
                if status in TRANSIENT_STATUSES:
                    raise Transient(text or "try later", provider=self.name, code=str(status))
                raise Rejected(text or "status query refused", provider=self.name, code=str(status))
            return self.status_events(body, dedupe_key)

        return await self._transport.call_with_retries(once, deadline=None)

    def status_events(self, body: Mapping[str, Any], dedupe_key: str) -> list[DeliveryEvent] | None:
        """The events a status answer stands for, with the callbacks' event keys (so a callback
        that comes too is the same event); None while pending or unknown."""
        events = _STATUS_EVENTS.get(str(body.get("message_status")), ())
        token = body.get("message_token")
        if not events or isinstance(token, bool) or not isinstance(token, int | str) or token == "":
            return None
        billed = stated_price(body, self.price_for(1))
        times = {"delivered": body.get("delivered_at"), "seen": body.get("seen_at")}
        out = []
        for event in events:
            timestamp_ms = times.get(event) or body.get("timestamp")
            if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int | Decimal):
                raise OutcomeUnknown("status answer without timestamp", provider=self.name)
            kind = _CALLBACK_KINDS[event]
            delivered = kind is DeliveryOutcome.DELIVERED
            out.append(
                DeliveryEvent(
                    provider=self.name,
                    channel=self.channel,
                    provider_message_id=str(token),
                    kind=kind,
                    occurred_at=from_unix_seconds(Decimal(timestamp_ms) / 1000, self.name),
                    event_key=f"viber:{token}:{event}",
                    dedupe_key=dedupe_key,
                    billed_units=1 if delivered else None,
                    billed_amount=billed if delivered else None,
                    detail=None,
                )
            )
        return out

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> list[DeliveryEvent]:
        """Verify ``X-Viber-Content-Signature`` over the raw body, then read the delivery event.

        Events that are not about a sent message (``subscribed``, ``webhook``, ...) yield none.
        """
        require_hmac_signature(
            self.name, headers, body, header=SIGNATURE_HEADER, secret=self.settings.auth_token
        )
        with malformed_on_error(self.name):
            return self._callback_events(load_json_object(self.name, body))

    def _callback_events(self, data: Mapping[str, Any]) -> list[DeliveryEvent]:
        event = data.get("event")
        kind = _CALLBACK_KINDS.get(event) if isinstance(event, str) else None
        if kind is None:
            return []
        token = callback_id(data.get("message_token"), self.name, "message_token")
        billed = kind is DeliveryOutcome.DELIVERED
        return [
            DeliveryEvent(
                provider=self.name,
                channel=self.channel,
                provider_message_id=token,
                kind=kind,
                # Viber's timestamps are milliseconds since the epoch.
                occurred_at=from_unix_seconds(data.get("timestamp"), self.name, per_second=1000),
                # Viber sends each of delivered/seen/failed/expired at most once per message.
                event_key=f"viber:{token}:{event}",
                dedupe_key=optional_key(data.get("tracking_data")),
                billed_units=1 if billed else None,
                billed_amount=self.price_for(1) if billed else None,
                detail=detail_text(data.get("desc")),
            )
        ]
