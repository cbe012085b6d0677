"""Voice-robot adapter: a call that speaks the text, and a signed result callback.

The call request carries our dedupe key as ``client_call_id``; the provider
does not place a second call for the same id. The result callback (``answered``,
``no_answer``, ``busy``, ``failed``, plus ``congestion``/``unavailable`` seen in
some services) carries the billed duration in seconds and is signed with
HMAC-SHA256 of the raw body in ``X-Voice-Signature``. Billing is per started
minute, only when answered (61 s is two minutes), plus an optional per-call fee.

The robot answers a status query (``GET /voice/v1/calls/{call_id}``, or
``?client_call_id=`` when the call request's answer was lost) with the call's result
document (:meth:`VoiceAdapter.query_status`); Kaskad asks it when a step's wait runs out
without a result, before sending on another channel.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from providers.base import DEFAULT_SIMULATOR_URL, DeliveryEvent, OutboundMessage, SubmitReceipt
from providers.callback_auth import (
    callback_id,
    from_iso,
    load_json_object,
    malformed_on_error,
    optional_key,
    require_hmac_signature,
    scrub_phones,
)
from providers.errors import CallbackMalformed, OutcomeUnknown, Rejected, Transient, Unreachable
from providers.transport import HttpAdapter, TransportSettings, parse_json_body
from router.domain import BillingMoment, Channel, DeliveryOutcome, Money

SIGNATURE_HEADER = "X-Voice-Signature"

UNREACHABLE_ERRORS = frozenset({"invalid_number", "number_blocked", "unallocated_number"})
TRANSIENT_ERRORS = frozenset({"capacity_exceeded"})

# A robot call that lasts a day is no call: a longer duration makes the callback malformed.
_MAX_DURATION_S = 24 * 3600

_RESULT_KINDS = {
    "answered": DeliveryOutcome.ANSWERED,
    "no_answer": DeliveryOutcome.NO_ANSWER,
    "busy": DeliveryOutcome.BUSY,
    "failed": DeliveryOutcome.FAILED,
    "congestion": DeliveryOutcome.FAILED,
    "unavailable": DeliveryOutcome.FAILED,
}


def billed_minutes(duration_s: int) -> int:
    """Started minutes of an answered call; an answered call has started its first minute."""
    return max(1, math.ceil(duration_s / 60))


@dataclass(frozen=True, slots=True)
class VoiceSettings:
    """Where and how to reach the voice robot; defaults point at the simulator."""

    base_url: str = DEFAULT_SIMULATOR_URL
    api_token: str = "sim-voice-api-token"  # noqa: S105 - simulator default, not a real secret
    callback_secret: str = "sim-voice-callback-secret"  # noqa: S105
    caller_id: str = "Kaskad"
    language: str = "ru-RU"
    price_per_minute: Decimal = Decimal("2.50")
    per_call_fee: Decimal = Decimal("0")
    currency: str = "RUB"
    max_text_length: int = 2000
    # Text-to-speech pace, used only to estimate minutes before the call happens.
    speech_chars_per_minute: int = 750
    transport: TransportSettings = field(default_factory=TransportSettings)


class VoiceAdapter(HttpAdapter[VoiceSettings]):
    """Places text-to-speech calls and parses their signed result callbacks."""

    name = "voice"
    channel = Channel.VOICE
    billing = BillingMoment.ON_ANSWER
    callback_path = "/callbacks/voice"
    settings_type = VoiceSettings
    offers_status_query = True  # GET /voice/v1/calls/{call_id}

    @property
    def max_text_length(self) -> int:
        return self.settings.max_text_length

    def units_for(self, text: str) -> int:
        """Estimated started minutes to speak ``text``; the callback carries the real duration."""
        return max(1, math.ceil(len(text) / self.settings.speech_chars_per_minute))

    def price_for(self, units: int) -> Money:
        """Price of an answered call of ``units`` started minutes, including the per-call fee."""
        return Money(
            self.settings.price_per_minute * units + self.settings.per_call_fee, self.settings.currency
        )

    async def submit(self, message: OutboundMessage) -> SubmitReceipt:
        """Request one call; raises Unreachable, Rejected, Transient, OutcomeUnknown or CircuitOpen."""
        if len(message.text) > self.settings.max_text_length:
            raise Rejected(
                f"text of {len(message.text)} chars exceeds {self.settings.max_text_length}",
                provider=self.name,
            )
        payload: dict[str, Any] = {
            "to": message.phone,
            "from": self.settings.caller_id,
            "text": message.text,
            "language": self.settings.language,
            "client_call_id": message.dedupe_key,
        }
        if message.deadline is not None:
            payload["expires_at"] = message.deadline.isoformat()
        call_id = await self._transport.call_with_retries(
            lambda: self._call_once(payload, message.deadline), deadline=message.deadline
        )
        units = self.units_for(message.text)
        return SubmitReceipt(
            provider=self.name,
            channel=self.channel,
            provider_message_id=call_id,
            dedupe_key=message.dedupe_key,
            units=units,
            billing=self.billing,
            billed_now=Money.zero(self.settings.currency),
            expected_cost=self.price_for(units),
        )

    async def _call_once(self, payload: Mapping[str, Any], deadline: datetime | None) -> str:
        reply = await self._transport.request(
            "POST",
            "/voice/v1/calls",
            json_body=payload,
            headers={"Authorization": f"Bearer {self.settings.api_token}"},
            deadline=deadline,
        )
        body = parse_json_body(reply, self.name)
        if not isinstance(body, dict):
            raise OutcomeUnknown("response is not a JSON object", provider=self.name)
        if reply.status in (200, 201):
            call_id = body.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise OutcomeUnknown("response carries no call_id", provider=self.name)
            return call_id
        raw_error = body.get("error")
        error: dict[str, Any] = raw_error if isinstance(raw_error, dict) else {}
        code = str(error.get("code", reply.status))
        text = scrub_phones(str(error.get("message", "")))
        if code in UNREACHABLE_ERRORS:
            raise Unreachable(text or "number unreachable", provider=self.name, code=code)
        if code in TRANSIENT_ERRORS:
            raise Transient(text or "try later", provider=self.name, code=code)
        raise Rejected(text or "call refused", provider=self.name, code=code)

    async def query_status(
        self, provider_message_id: str | None, dedupe_key: str
    ) -> list[DeliveryEvent] | None:
        """Ask the robot what became of the call (:class:`providers.base.StatusQuery`); None
        while it is queued or ringing, or if the robot never placed it."""
        if provider_message_id:
            path = "/voice/v1/calls/" + urllib.parse.quote(provider_message_id, safe="")
        else:
            path = "/voice/v1/calls?" + urllib.parse.urlencode({"client_call_id": dedupe_key})

        async def once() -> list[DeliveryEvent] | None:
            reply = await self._transport.request(
                "GET", path, headers={"Authorization": f"Bearer {self.settings.api_token}"}
            )
            if reply.status == 404:
                return None
            if reply.status != 200:
                raise Rejected("status query refused", provider=self.name, code=str(reply.status))
            body = parse_json_body(reply, self.name)
            if not isinstance(body, dict):
                raise OutcomeUnknown("status answer is not a JSON object", provider=self.name)
            return self._result_events(body) or None

        return await self._transport.call_with_retries(once, deadline=None)

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> list[DeliveryEvent]:
        """Verify ``X-Voice-Signature`` over the raw body, then return the call's result as one event."""
        require_hmac_signature(
            self.name, headers, body, header=SIGNATURE_HEADER, secret=self.settings.callback_secret
        )
        with malformed_on_error(self.name):
            return self._result_events(load_json_object(self.name, body))

    def _result_events(self, data: Mapping[str, Any]) -> list[DeliveryEvent]:
        """The event a call's result document stands for, whether its callback or a status query
        brought it (the same event key and billing); none while the call has no result."""
        result = data.get("result")
        kind = _RESULT_KINDS.get(result) if isinstance(result, str) else None
        if kind is None:
            return []
        call_id = callback_id(data.get("call_id"), self.name, "call_id", numbers=False)
        duration = data.get("duration_s", 0)
        if isinstance(duration, bool) or not isinstance(duration, int) or not 0 <= duration < _MAX_DURATION_S:
            raise CallbackMalformed("bad duration_s", provider=self.name)
        answered = kind is DeliveryOutcome.ANSWERED
        minutes = billed_minutes(duration) if answered else None
        return [
            DeliveryEvent(
                provider=self.name,
                channel=self.channel,
                provider_message_id=call_id,
                kind=kind,
                occurred_at=from_iso(data.get("finished_at"), self.name),
                # A call has exactly one result, so the call id and result identify the event.
                event_key=f"voice:{call_id}:{result}",
                dedupe_key=optional_key(data.get("client_call_id")),
                billed_units=minutes,
                billed_amount=self.price_for(minutes) if minutes is not None else None,
                detail=None if kind is not DeliveryOutcome.FAILED or result == "failed" else result,
            )
        ]
