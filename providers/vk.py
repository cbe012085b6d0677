"""VK adapter: ``messages.send``-style form POST and Callback-API-style delivery callbacks.

``random_id`` (derived from the dedupe key) is VK's own dedupe key: a repeated
``messages.send`` with the same ``random_id`` for the same peer is not sent
again. Errors arrive as HTTP 200 with ``{"error": {"error_code", "error_msg"}}``.
Callbacks carry the configured ``secret`` in the JSON body and are answered with the
plain string ``ok`` once recorded (VK sends an event again until it gets ``ok``); VK's
``confirmation`` request, sent when the server is added to the group's Callback API
settings, is answered with the group's ``confirmation_code``. VK bills each delivered
message.

The business gateway answers a status lookup in VK's method style
(``messages.getDeliveryStatus`` with ``message_id``, or ``random_id`` when the send's answer
was lost): ``{"response": {"message_id", "status", ...}}`` with ``status`` one of
``pending``, ``delivered``, ``read``, ``expired``, ``failed`` (and the billed ``price``), or
``{"error": {...}}`` (104: no such message). :meth:`VkAdapter.query_status`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from providers.base import (
    DEFAULT_SIMULATOR_URL,
    CallbackReply,
    DeliveryEvent,
    OutboundMessage,
    SubmitReceipt,
    stable_int_from_key,
)
from providers.callback_auth import (
    callback_id,
    detail_text,
    from_unix_seconds,
    load_json_object,
    load_nested_json,
    malformed_on_error,
    optional_key,
    require_secret,
    scrub_phones,
    stated_price,
)
from providers.errors import (
    CallbackMalformed,
    CallbackUnauthenticated,
    OutcomeUnknown,
    ProviderError,
    Rejected,
    Transient,
    Unreachable,
)
from providers.transport import HttpAdapter, TransportSettings, json_object_reply
from router.domain import BillingMoment, Channel, DeliveryOutcome, Money

log = logging.getLogger(__name__)

# 900 blacklisted, 901 no permission to message, 902 privacy settings,
# 113 invalid user id, 936 contact not found, 18 user deleted or banned.
UNREACHABLE_CODES = frozenset({900, 901, 902, 113, 936, 18})
# 914 message too long: this message never fits VK.
REJECTED_CODES = frozenset({914})
# 6 too many requests per second, 9 flood control, 10 internal server error, 1 unknown error.
TRANSIENT_CODES = frozenset({1, 6, 9, 10})

_TTL_MIN = timedelta(minutes=1)
_TTL_MAX = timedelta(hours=24)

# VK's "not found" error code: the gateway never accepted a message with that id.
NOT_FOUND_CODE = 104

# The status lookup's ``status``: the events its callbacks would have carried (none: pending).
_STATUS_KINDS: dict[str, tuple[DeliveryOutcome, ...]] = {
    "pending": (),
    "delivered": (DeliveryOutcome.DELIVERED,),
    "read": (DeliveryOutcome.DELIVERED, DeliveryOutcome.READ),
    "expired": (DeliveryOutcome.EXPIRED,),
    "failed": (DeliveryOutcome.FAILED,),
}

_CALLBACK_KINDS = {
    "message_delivered": DeliveryOutcome.DELIVERED,
    "message_read": DeliveryOutcome.READ,
    "message_failed": DeliveryOutcome.FAILED,
    "message_expired": DeliveryOutcome.EXPIRED,
}


@dataclass(frozen=True, slots=True)
class VkSettings:
    """Where and how to reach VK; defaults point at the simulator."""

    base_url: str = DEFAULT_SIMULATOR_URL
    access_token: str = "sim-vk-access-token"  # noqa: S105 - simulator default, not a real secret
    api_version: str = "5.199"
    group_id: int = 1
    callback_secret: str = "sim-vk-callback-secret"  # noqa: S105
    # The string VK's Callback API settings show for the server; the answer to "confirmation".
    confirmation_code: str = ""
    price_per_delivered: Decimal = Decimal("0.35")
    currency: str = "RUB"
    max_text_length: int = 4096
    # The gateway's delivery status lookup; false for a contract without it (callbacks and
    # the TTL then resolve a message, see providers.base).
    status_query: bool = True
    transport: TransportSettings = field(default_factory=TransportSettings)


def vk_random_id(dedupe_key: str) -> int:
    """The ``random_id`` sent for ``dedupe_key``: stable across retries and processes."""
    return stable_int_from_key(dedupe_key)


class VkAdapter(HttpAdapter[VkSettings]):
    """Sends messages through VK and parses its delivery callbacks."""

    name = "vk"
    channel = Channel.VK
    billing = BillingMoment.ON_DELIVERY
    callback_path = "/callbacks/vk"
    settings_type = VkSettings

    @property
    def max_text_length(self) -> int:
        return self.settings.max_text_length

    def units_for(self, text: str) -> int:
        return 1

    def price_for(self, units: int) -> Money:
        return Money(self.settings.price_per_delivered * units, self.settings.currency)

    async def submit(self, message: OutboundMessage) -> SubmitReceipt:
        """Send one message; raises Unreachable, Rejected, Transient, OutcomeUnknown or CircuitOpen."""
        if len(message.text) > self.settings.max_text_length:
            raise Rejected(
                f"text of {len(message.text)} chars exceeds {self.settings.max_text_length}",
                provider=self.name,
                code="914",
            )
        form = self._form(message)
        message_id = await self._transport.call_with_retries(
            lambda: self._send_once(form, message.deadline), deadline=message.deadline
        )
        zero = Money.zero(self.settings.currency)
        return SubmitReceipt(
            provider=self.name,
            channel=self.channel,
            provider_message_id=message_id,
            dedupe_key=message.dedupe_key,
            units=1,
            billing=self.billing,
            billed_now=zero,
            expected_cost=self.price_for(1),
        )

    def _form(self, message: OutboundMessage) -> dict[str, str]:
        form = {
            "access_token": self.settings.access_token,
            "v": self.settings.api_version,
            "random_id": str(vk_random_id(message.dedupe_key)),
            "message": message.text,
            # Echoed back in callbacks so events can be matched to the attempt directly.
            "payload": json.dumps({"dedupe_key": message.dedupe_key}),
        }
        if message.vk_user_id is not None:
            form["user_id"] = str(message.vk_user_id)
        else:
            form["phone"] = message.phone
        if message.ttl is not None:
            form["ttl"] = str(int(self.ttl_for(message).total_seconds()))
        return form

    def ttl_for(self, message: OutboundMessage) -> timedelta:
        """The TTL VK is sent: the message's own in 1 min..24 h (24 h, VK's default, without one);
        not delivered by then, it expires unbilled."""
        if message.ttl is None:
            return _TTL_MAX
        return min(max(message.ttl, _TTL_MIN), _TTL_MAX)

    async def _send_once(self, form: Mapping[str, str], deadline: datetime | None) -> str:
        reply = await self._transport.request("POST", "/method/messages.send", data=form, deadline=deadline)
        body = json_object_reply(reply, self.name)
        if "error" in body:
            raise self._classify_error(body["error"])
        response = body.get("response")
        # messages.send answers a bare id for user_id/phone, a list of {peer_id, message_id} for peer_ids.
        if isinstance(response, list) and response and isinstance(response[0], dict):
            response = response[0].get("message_id")
        if isinstance(response, bool) or not isinstance(response, int):
            raise OutcomeUnknown("response carries no message id", provider=self.name)
        return str(response)

    @property
    def offers_status_query(self) -> bool:
        return self.settings.status_query

    async def query_status(
        self, provider_message_id: str | None, dedupe_key: str
    ) -> list[DeliveryEvent] | None:
        """Ask the gateway what became of the message (:class:`providers.base.StatusQuery`);
        None while it is pending or unknown to the gateway."""
        form = {"access_token": self.settings.access_token, "v": self.settings.api_version}
        if provider_message_id:
            form["message_id"] = provider_message_id
        else:
            form["random_id"] = str(vk_random_id(dedupe_key))

        async def once() -> list[DeliveryEvent] | None:
            reply = await self._transport.request("POST", "/method/messages.getDeliveryStatus", data=form)
            body = json_object_reply(reply, self.name)
            if "error" in body:
                error = body["error"]
                if isinstance(error, dict) and error.get("error_code") == NOT_FOUND_CODE:
                    return None
                raise self._classify_error(error)
            response = body.get("response")
            if not isinstance(response, dict):
                raise OutcomeUnknown("status answer without response", provider=self.name)
            return self.status_events(response, dedupe_key)

        return await self._transport.call_with_retries(once, deadline=None)

    def status_events(self, response: Mapping[str, Any], dedupe_key: str) -> list[DeliveryEvent] | None:
        """The events a status answer stands for (delivered, and read after it; billed like the
        delivered callback); None while the message is pending or the answer is not understood."""
        kinds = _STATUS_KINDS.get(str(response.get("status")), ())
        message_id = response.get("message_id")
        if (
            not kinds
            or isinstance(message_id, bool)
            or not isinstance(message_id, int | str)
            or message_id == ""
        ):
            return None
        billed = stated_price(response, self.price_for(1))
        times = {
            DeliveryOutcome.DELIVERED: response.get("delivered_at"),
            DeliveryOutcome.READ: response.get("read_at"),
        }
        return [
            DeliveryEvent(
                provider=self.name,
                channel=self.channel,
                provider_message_id=str(message_id),
                kind=kind,
                occurred_at=from_unix_seconds(times.get(kind) or response.get("date"), self.name),
                # The callback's key when it carries no event_id; with one, the ledger (unique
                # per attempt) and the cascade still take the event once.
                event_key=f"vk:{message_id}:{kind}",
                dedupe_key=dedupe_key,
                billed_units=1 if kind is DeliveryOutcome.DELIVERED else None,
                billed_amount=billed if kind is DeliveryOutcome.DELIVERED else None,
                detail=None,
            )
            for kind in kinds
        ]

    def _classify_error(self, error: Any) -> ProviderError:
        if not isinstance(error, dict):
            return OutcomeUnknown("malformed error object", provider=self.name)
        code = error.get("error_code")
        text = scrub_phones(str(error.get("error_msg", "")))
        if code in UNREACHABLE_CODES:
            return Unreachable(text or "recipient unreachable", provider=self.name, code=str(code))
        if code in REJECTED_CODES:
            return Rejected(text or "message rejected", provider=self.name, code=str(code))
        if code in TRANSIENT_CODES:
            return Transient(text or "try later", provider=self.name, code=str(code))
        # Any other API error (auth, bad parameters) means this message cannot go through VK as is.
        return Rejected(text or "api error", provider=self.name, code=str(code))

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> list[DeliveryEvent]:
        """Check the body's ``secret`` and ``group_id``; return the delivery event it reports.

        VK's secret sits in the body, so the body is parsed first, its depth bounded before;
        until the secret is checked (in constant time) any fault is an unauthenticated
        callback, after it a malformed one. ``confirmation`` and event types that are not
        about delivery yield no events.
        """
        data = load_json_object(self.name, body, error=CallbackUnauthenticated)
        require_secret(self.name, data.get("secret"), self.settings.callback_secret)
        group_id = data.get("group_id")
        if isinstance(group_id, bool) or group_id != self.settings.group_id:
            raise CallbackUnauthenticated("callback for another group", provider=self.name)
        with malformed_on_error(self.name):
            return self._callback_events(data)

    def _callback_events(self, data: Mapping[str, Any]) -> list[DeliveryEvent]:
        event_type = data.get("type")
        kind = _CALLBACK_KINDS.get(event_type) if isinstance(event_type, str) else None
        if kind is None:
            return []
        obj = data.get("object")
        if not isinstance(obj, dict):
            raise CallbackMalformed("callback without object", provider=self.name)
        message_id = callback_id(obj.get("message_id"), self.name, "message_id")
        event_id = data.get("event_id")
        event_key = (
            f"vk:{callback_id(event_id, self.name, 'event_id', numbers=False)}"
            if isinstance(event_id, str) and event_id
            else f"vk:{message_id}:{kind}"
        )
        billed = kind is DeliveryOutcome.DELIVERED
        return [
            DeliveryEvent(
                provider=self.name,
                channel=self.channel,
                provider_message_id=message_id,
                kind=kind,
                occurred_at=from_unix_seconds(obj.get("date"), self.name),
                event_key=event_key,
                dedupe_key=_dedupe_key_from_payload(obj.get("payload")),
                billed_units=1 if billed else None,
                billed_amount=self.price_for(1) if billed else None,
                detail=detail_text(obj.get("reason")),
            )
        ]

    def callback_reply(self, body: bytes) -> CallbackReply:
        """``ok`` as plain text, VK's acknowledgement; for ``confirmation``, the group's code
        (a 500 with the reason when none is configured: VK then refuses to add the server)."""
        if load_json_object(self.name, body).get("type") != "confirmation":
            return CallbackReply(b"ok")
        if not self.settings.confirmation_code:
            log.warning(
                "VK asked to confirm the callback server, but [providers.vk] confirmation_code is not set"
            )
            return CallbackReply(b"[providers.vk] confirmation_code is not set", status=500)
        return CallbackReply(self.settings.confirmation_code.encode())


def _dedupe_key_from_payload(payload: object) -> str | None:
    decoded = load_nested_json(payload) if isinstance(payload, str) else None
    return optional_key(decoded.get("dedupe_key")) if isinstance(decoded, dict) else None
