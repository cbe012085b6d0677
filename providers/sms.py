"""SMS adapter, modelled on an aggregator's ``/sms/2/text/advanced`` API.

The client message id (our dedupe key) travels as ``messageId``; the
aggregator drops a repeated submit with the same id. Delivery reports
(``DELIVERED``, ``UNDELIVERABLE``, ``EXPIRED``, ``REJECTED``) are POSTed as
``{"results": [...]}`` and signed with HMAC-SHA256 of the raw body in
``X-Sms-Signature``. SMS is billed per segment at submit.

The aggregator answers a status query (``GET /sms/1/logs?messageId=ID``, our client id) with
the same result document as its report (:meth:`SmsAdapter.query_status`); Kaskad asks it
when a step's wait runs out without a report, before sending on another channel.
"""

from __future__ import annotations

import functools
import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from providers.base import DEFAULT_SIMULATOR_URL, DeliveryEvent, OutboundMessage, SubmitReceipt
from providers.callback_auth import (
    MAX_AMOUNT,
    amount_in_range,
    callback_id,
    detail_text,
    from_iso,
    load_json_object,
    malformed_on_error,
    require_hmac_signature,
    scrub_phones,
)
from providers.errors import CallbackMalformed, OutcomeUnknown, Rejected, Unreachable
from providers.sms_segments import count_segments
from providers.transport import HttpAdapter, TransportSettings, parse_json_body
from router.domain import BillingMoment, Channel, DeliveryOutcome, Money

SIGNATURE_HEADER = "X-Sms-Signature"

# Status names in the REJECTED group that are about the destination, not the message.
UNREACHABLE_STATUS_NAMES = frozenset(
    {"REJECTED_DESTINATION", "REJECTED_PREFIX_MISSING", "REJECTED_NETWORK", "REJECTED_DND"}
)

# Segments one report may bill: a long concatenated SMS has a few dozen at most.
_MAX_REPORTED_SEGMENTS = 1000

_REPORT_KINDS = {
    "DELIVERED": DeliveryOutcome.DELIVERED,
    "UNDELIVERABLE": DeliveryOutcome.UNDELIVERABLE,
    "EXPIRED": DeliveryOutcome.EXPIRED,
    "REJECTED": DeliveryOutcome.REJECTED,
}


@dataclass(frozen=True, slots=True)
class SmsSettings:
    """Where and how to reach the SMS aggregator; defaults point at the simulator."""

    base_url: str = DEFAULT_SIMULATOR_URL
    api_key: str = "sim-sms-api-key"
    sender: str = "Kaskad"
    callback_secret: str = "sim-sms-callback-secret"  # noqa: S105 - simulator default, not a real secret
    price_per_segment: Decimal = Decimal("4.50")
    currency: str = "RUB"
    max_segments: int = 10
    transport: TransportSettings = field(default_factory=TransportSettings)


class SmsAdapter(HttpAdapter[SmsSettings]):
    """Sends SMS through the aggregator and parses its signed delivery reports."""

    name = "sms"
    channel = Channel.SMS
    billing = BillingMoment.ON_SUBMIT
    callback_path = "/callbacks/sms"
    settings_type = SmsSettings
    offers_status_query = True  # GET /sms/1/logs

    # An accept counts its text's segments twice (the plan, the SMS-only baseline) and a
    # submit once more; each count walks the whole text. The count depends on the text
    # alone, so one memo serves every instance.
    _segments = staticmethod(functools.lru_cache(maxsize=1024)(count_segments))

    @property
    def max_text_length(self) -> int:
        """Longest GSM-7 text that fits ``max_segments``; UCS-2 texts are limited by segments too."""
        return self.settings.max_segments * 153 if self.settings.max_segments > 1 else 160

    def units_for(self, text: str) -> int:
        """SMS segments ``text`` is billed as (see :mod:`providers.sms_segments`)."""
        return self._segments(text).segments

    def price_for(self, units: int) -> Money:
        return Money(self.settings.price_per_segment * units, self.settings.currency)

    async def submit(self, message: OutboundMessage) -> SubmitReceipt:
        """Send one SMS; raises Unreachable, Rejected, Transient, OutcomeUnknown or CircuitOpen."""
        segments = self.units_for(message.text)
        if segments > self.settings.max_segments:
            raise Rejected(
                f"text needs {segments} segments, limit is {self.settings.max_segments}", provider=self.name
            )
        destination: dict[str, Any] = {"to": message.phone.removeprefix("+"), "messageId": message.dedupe_key}
        sms: dict[str, Any] = {
            "destinations": [destination],
            "from": self.settings.sender,
            "text": message.text,
        }
        validity = message.ttl
        if message.deadline is not None:
            until_deadline = message.deadline - self._now()
            validity = until_deadline if validity is None else min(validity, until_deadline)
        if validity is not None:
            # The aggregator takes validity in whole minutes; round up so it is never shorter than asked.
            sms["validityPeriod"] = max(1, math.ceil(validity / timedelta(minutes=1)))
        payload = {"messages": [sms]}
        message_id, billed_segments = await self._transport.call_with_retries(
            lambda: self._send_once(payload, message.deadline), deadline=message.deadline
        )
        units = billed_segments if billed_segments is not None else segments
        return SubmitReceipt(
            provider=self.name,
            channel=self.channel,
            provider_message_id=message_id,
            dedupe_key=message.dedupe_key,
            units=units,
            billing=self.billing,
            billed_now=self.price_for(units),
            expected_cost=self.price_for(units),
        )

    async def _send_once(
        self, payload: Mapping[str, Any], deadline: datetime | None
    ) -> tuple[str, int | None]:
        reply = await self._transport.request(
            "POST",
            "/sms/2/text/advanced",
            json_body=payload,
            headers={"Authorization": f"App {self.settings.api_key}"},
            deadline=deadline,
        )
        if reply.status in (400, 401, 403, 404):
            raise Rejected("request refused", provider=self.name, code=str(reply.status))
        if not 200 <= reply.status < 300:
            raise Rejected("unexpected HTTP status", provider=self.name, code=str(reply.status))
        body = parse_json_body(reply, self.name)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages or not isinstance(messages[0], dict):
            raise OutcomeUnknown("response carries no message status", provider=self.name)
        first = messages[0]
        raw_status = first.get("status")
        status: dict[str, Any] = raw_status if isinstance(raw_status, dict) else {}
        group = status.get("groupName")
        name = str(status.get("name", ""))
        if group == "REJECTED":
            description = scrub_phones(str(status.get("description", "")))
            if name in UNREACHABLE_STATUS_NAMES:
                raise Unreachable(description or "destination rejected", provider=self.name, code=name)
            raise Rejected(description or "message rejected", provider=self.name, code=name)
        message_id = first.get("messageId")
        if not isinstance(message_id, str) or not message_id:
            raise OutcomeUnknown("response carries no messageId", provider=self.name)
        sms_count = first.get("smsCount")
        billed = sms_count if isinstance(sms_count, int) and not isinstance(sms_count, bool) else None
        return message_id, billed

    async def query_status(
        self, provider_message_id: str | None, dedupe_key: str
    ) -> list[DeliveryEvent] | None:
        """Ask the aggregator for the message's status (:class:`providers.base.StatusQuery`);
        None while it is pending or unknown to it."""
        message_id = provider_message_id or dedupe_key
        path = "/sms/1/logs?" + urllib.parse.urlencode({"messageId": message_id})

        async def once() -> list[DeliveryEvent] | None:
            reply = await self._transport.request(
                "GET", path, headers={"Authorization": f"App {self.settings.api_key}"}
            )
            if not 200 <= reply.status < 300:
                raise Rejected("status query refused", provider=self.name, code=str(reply.status))
            body = parse_json_body(reply, self.name)
            results = body.get("results") if isinstance(body, dict) else None
            if not isinstance(results, list):
                raise OutcomeUnknown("status answer without results", provider=self.name)
            for result in results:
                if isinstance(result, dict) and result.get("messageId") == message_id:
                    event = self._result_event(result)
                    return None if event is None else [event]
            return None

        return await self._transport.call_with_retries(once, deadline=None)

    def _result_event(self, result: Mapping[str, Any]) -> DeliveryEvent | None:
        """The event one result document stands for, whether a report or a status query brought
        it (the same document: the same event key and price); None while the message is pending."""
        status = result.get("status")
        group = status.get("groupName") if isinstance(status, dict) else None
        kind = _REPORT_KINDS.get(group) if isinstance(group, str) else None
        if kind is None:
            return None
        message_id = callback_id(result.get("messageId"), self.name, "messageId", numbers=False)
        error = result.get("error")
        detail = error.get("name") if isinstance(error, dict) else None
        if detail is None and isinstance(status, dict):
            detail = status.get("name")
        units, amount = self._reported_price(result)
        return DeliveryEvent(
            provider=self.name,
            channel=self.channel,
            provider_message_id=message_id,
            kind=kind,
            occurred_at=from_iso(result.get("doneAt"), self.name),
            event_key=f"sms:{message_id}:{group}",
            # The aggregator's messageId is the client id we chose, i.e. the dedupe key.
            dedupe_key=message_id,
            billed_units=units,
            billed_amount=amount,
            detail=detail_text(detail),
        )

    def _reported_price(self, result: Mapping[str, Any]) -> tuple[int | None, Money | None]:
        """The aggregator's own price of a report, if it carries one in our currency.

        A report without a price keeps the book's; a price that no aggregator charges (negative,
        absurdly high, not a number) or a bad ``smsCount`` makes the callback malformed.
        """
        price = result.get("price")
        if not isinstance(price, dict):
            return None, None
        count = result.get("smsCount")
        if count is None:
            return None, None
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= _MAX_REPORTED_SEGMENTS:
            raise CallbackMalformed("bad smsCount", provider=self.name)
        currency = price.get("currency")
        if not isinstance(currency, str) or currency != self.settings.currency:
            return None, None  # another currency is not ours to convert: keep the book's price
        per_message = amount_in_range(price.get("pricePerMessage"), self.name, "pricePerMessage")
        total = per_message * count
        if total > MAX_AMOUNT:
            raise CallbackMalformed("price out of range", provider=self.name)
        return count, Money(total, currency)

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> list[DeliveryEvent]:
        """Verify ``X-Sms-Signature`` over the raw body, then return one event per final report.

        Reports still in the PENDING group yield no events. SMS is billed at
        submit (at the price book's price); a report that carries the aggregator's own
        price (``price.pricePerMessage`` times ``smsCount``) passes it on, and the
        gateway books that instead: the provider's word on what it billed wins.
        """
        require_hmac_signature(
            self.name, headers, body, header=SIGNATURE_HEADER, secret=self.settings.callback_secret
        )
        with malformed_on_error(self.name):
            return self._callback_events(load_json_object(self.name, body))

    def _callback_events(self, data: Mapping[str, Any]) -> list[DeliveryEvent]:
        results = data.get("results")
        if not isinstance(results, list):
            raise CallbackMalformed("callback without results", provider=self.name)
        events: list[DeliveryEvent] = []
        for result in results:
            if not isinstance(result, dict):
                raise CallbackMalformed("malformed result", provider=self.name)
            event = self._result_event(result)
            if event is not None:
                events.append(event)
        return events
