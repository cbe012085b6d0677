"""The four provider APIs the simulator serves, wire-compatible with the adapters.

Every submit handler follows the same order: authenticate, apply injected
faults (429 burst, 5xx, the provider's own "try later"), validate, dedupe on
the provider's dedupe key (a repeat gets the original answer and sends
nothing), decide reachability from the seeded population, accept, schedule
the delivery and its callbacks, and possibly stall the response (timeout
injection happens *after* acceptance, like a real lost response).

A provider in an injected outage (``FaultSettings.down``/``down_until``) refuses every
call, submits and status queries alike, with 503 or a reset connection (``down_mode``).

What each provider offers to resolve an unknown outcome, as the real ones do:

- SMS: a status query, ``GET /sms/1/logs?messageId=ID`` (our client message id), answering
  the same result document its delivery report carries (``PENDING`` until decided);
- voice: ``GET /voice/v1/calls/{call_id}`` or ``GET /voice/v1/calls?client_call_id=ID``,
  answering the call's result document (``status`` ``queued`` until it is decided);
- VK (its business gateway): ``POST /method/messages.getDeliveryStatus`` (``message_id`` or
  ``random_id``), answering ``{"response": {"message_id", "status", ...}}`` with ``pending``,
  ``delivered``, ``read``, ``expired`` or ``failed`` (``price`` once billed), or VK's error
  104 for an id it never accepted;
- Viber: ``POST /pa/get_message_status`` (``message_token`` or ``tracking_data``, the auth
  token header), answering ``{"status": 0, "message_status": ...}`` likewise (``seen`` for
  read, ``unknown`` for an id it never accepted).

VK and Viber also expire (and do not bill) a message not delivered within its TTL.

Every status query answers from the simulator's own state, so a message whose callback was
dropped or never got through is still known.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from lab.simulator.state import AcceptedSubmit, OutgoingCallback, SimulatorState, json_bytes
from providers.callback_auth import hmac_sha256_hex
from providers.sms import SIGNATURE_HEADER as SMS_SIGNATURE_HEADER
from providers.sms_segments import count_segments
from providers.viber import AUTH_HEADER as VIBER_AUTH_HEADER
from providers.viber import SIGNATURE_HEADER as VIBER_SIGNATURE_HEADER
from providers.voice import SIGNATURE_HEADER as VOICE_SIGNATURE_HEADER
from providers.voice import billed_minutes
from router.domain import mask_phone

log = logging.getLogger(__name__)

VK_DEFAULT_TTL_S = 86400.0
"""How long the VK gateway keeps an undelivered message when the submit names no TTL."""

VK_MAX_TEXT = 4096
VIBER_MAX_TEXT = 1000
VIBER_TOKEN_BASE = 5_000_000_000_000_000_000


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat()


def _json_object(raw: bytes) -> dict[str, Any] | None:
    """The request's JSON object, or None where it is not one."""
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _masked(recipient: str) -> str:
    return mask_phone(recipient) if recipient.startswith("+") or recipient.isdigit() else recipient


class ProviderApis:
    """Request handlers for the VK, Viber, SMS and voice APIs over one shared state."""

    def __init__(self, state: SimulatorState) -> None:
        self.state = state
        self.settings = state.settings

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/method/messages.send", self.vk_send),
            web.post("/pa/send_message", self.viber_send),
            web.post("/sms/2/text/advanced", self.sms_send),
            web.post("/voice/v1/calls", self.voice_call),
            web.get("/sms/1/logs", self.sms_status),
            web.post("/method/messages.getDeliveryStatus", self.vk_status),
            web.post("/pa/get_message_status", self.viber_status),
            web.get("/voice/v1/calls", self.voice_status),
            web.get("/voice/v1/calls/{call_id}", self.voice_status),
        ]

    # ---- shared ----------------------------------------------------------------------------

    def _transport_fault(self, provider: str, request: web.Request | None = None) -> web.Response | None:
        faults = self.state.faults[provider]
        if self.state.is_down(provider):
            self.state.count(f"{provider}_down")
            if faults.down_mode == "reset" and request is not None and request.transport is not None:
                request.transport.abort()
            return web.json_response(
                {"error": "service unavailable"},
                status=503,
                headers={"Retry-After": str(faults.retry_after_s)},
            )
        if self.state.take_rate_limit(provider):
            self.state.count(f"{provider}_429")
            return web.json_response(
                {"error": "rate limited"}, status=429, headers={"Retry-After": str(faults.retry_after_s)}
            )
        if self.state.chance(faults.server_error_rate):
            self.state.count(f"{provider}_5xx")
            return web.json_response({"error": "internal error"}, status=503)
        return None

    def _repeat(self, key: tuple[str, str]) -> web.Response | None:
        accepted = self.state.accepted.get(key)
        if accepted is None:
            return None
        self.state.count(f"{key[0]}_deduplicated")
        return web.json_response(dict(accepted.body), status=accepted.status)

    async def _accepted(
        self, provider: str, key: tuple[str, str] | None, message_id: str, body: dict[str, Any], status: int
    ) -> web.Response:
        if key is not None:
            self.state.accepted[key] = AcceptedSubmit(message_id=message_id, status=status, body=body)
        self.state.count(f"{provider}_accepted")
        if self.state.chance(self.state.faults[provider].timeout_rate):
            self.state.count(f"{provider}_stalled")
            await self.state.stall(self.state.faults[provider].stall_s)
        return web.json_response(body, status=status)

    # ---- VK --------------------------------------------------------------------------------

    @staticmethod
    def _vk_error(code: int, text: str) -> web.Response:
        return web.json_response({"error": {"error_code": code, "error_msg": text, "request_params": []}})

    async def vk_send(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        fault = self._transport_fault("vk", request)
        if fault is not None:
            return fault
        vk = self.settings.vk
        if form.get("access_token") != vk.access_token:
            return self._vk_error(5, "User authorization failed: invalid access_token")
        if self.state.chance(self.state.faults["vk"].api_error_rate):
            self.state.count("vk_api_error")
            return self._vk_error(10, "Internal server error")
        random_id = form.get("random_id", "")
        if not random_id.lstrip("-").isdigit():
            return self._vk_error(100, "One of the parameters specified was missing or invalid: random_id")
        if "user_id" in form:
            recipient = f"id{form['user_id']}"
        elif "phone" in form:
            recipient = form["phone"]
        else:
            return self._vk_error(100, "One of the parameters specified was missing or invalid: peer")
        text = form.get("message", "")
        if len(text) > VK_MAX_TEXT:
            return self._vk_error(914, "Message is too long")
        key = ("vk", f"{recipient}:{random_id}")
        repeat = self._repeat(key)
        if repeat is not None:
            return repeat
        if not self.state.population.on_vk(recipient):
            code = self.state.population.pick("vk-why", recipient, (900, 901, 902))
            messages = {
                900: "Can't send messages for users from blacklist",
                901: "Can't send messages for users without permission",
                902: "Can't send messages to this user due to their privacy settings",
            }
            return self._vk_error(code, messages[code])
        message_id = self.state.new_id()
        ttl = float(form["ttl"]) if form.get("ttl", "").isdigit() else None
        self._set_vk_status(message_id, random_id, "pending", ttl=ttl)
        self.state.spawn(self._deliver_vk(message_id, random_id, recipient, form.get("payload"), ttl))
        log.info("vk: accepted message %s for %s", message_id, _masked(recipient))
        return await self._accepted("vk", key, str(message_id), {"response": message_id}, 200)

    def _vk_callback(
        self, kind: str, message_id: int, random_id: str, payload: str | None
    ) -> OutgoingCallback:
        vk = self.settings.vk
        obj: dict[str, Any] = {
            "message_id": message_id,
            "random_id": int(random_id),
            "date": int(self.state.now()),
        }
        if payload is not None:
            obj["payload"] = payload
        body = {
            "type": kind,
            "event_id": hashlib.sha1(f"{message_id}:{kind}".encode(), usedforsecurity=False).hexdigest(),
            "v": vk.api_version,
            "group_id": vk.group_id,
            "secret": vk.callback_secret,
            "object": obj,
        }
        # VK's Callback API sends an event again until the server answers the plain string "ok".
        return OutgoingCallback(
            "/callbacks/vk", json_bytes(body), {"Content-Type": "application/json"}, expect=b"ok"
        )

    def _messenger_latency(self, channel: str, recipient: str) -> float:
        """Seconds until a messenger message reaches this person (their pace decides the range;
        never, for a dormant user: the message expires at its TTL)."""
        latencies = self.settings.latencies
        match self.state.population.messenger_pace(channel, recipient):
            case "dormant":
                return math.inf
            case "slow":
                return self.state.delay(latencies.slow)
            case _:
                return self.state.delay(latencies.vk if channel == "vk" else latencies.viber)

    async def _deliver_vk(
        self, message_id: int, random_id: str, recipient: str, payload: str | None, ttl: float | None
    ) -> None:
        latency = self._messenger_latency("vk", recipient)
        ttl = VK_DEFAULT_TTL_S if ttl is None else ttl
        # A message that would arrive after its TTL expires at the TTL, unbilled.
        await self._sleep(min(latency, ttl))
        if latency > ttl:
            self._set_vk_status(message_id, random_id, "expired", ttl=ttl)
            await self.state.send_callbacks(
                "vk", [(0.0, self._vk_callback("message_expired", message_id, random_id, payload))]
            )
            return
        self.state.record_delivery("vk", str(message_id), random_id, recipient)
        vk = self.settings.vk
        self.state.record_billing("vk", str(message_id), 1, vk.price_per_delivered, vk.currency, "delivered")
        delivered = {"delivered_at": int(self.state.now()), "price": str(vk.price_per_delivered)}
        self._set_vk_status(message_id, random_id, "delivered", ttl=ttl, **delivered, currency=vk.currency)
        timeline = [(0.0, self._vk_callback("message_delivered", message_id, random_id, payload))]
        if self.state.population.reads("vk", recipient, random_id):
            read_delay = self.state.delay(self.settings.latencies.read)
            timeline.append((read_delay, self._vk_callback("message_read", message_id, random_id, payload)))
            read = {**delivered, "currency": vk.currency, "read_at": int(self.state.now() + read_delay)}
            self.state.spawn(
                self._later(
                    read_delay, lambda: self._set_vk_status(message_id, random_id, "read", ttl=ttl, **read)
                )
            )
        await self.state.send_callbacks("vk", timeline)

    def _set_vk_status(self, message_id: int, random_id: str, status: str, **fields: Any) -> None:
        document = {"message_id": message_id, "status": status, "date": int(self.state.now()), **fields}
        self.state.set_status("vk", (str(message_id), f"random:{random_id}"), document)

    async def _later(self, seconds: float, action: Callable[[], None]) -> None:
        await self._sleep(seconds)
        action()

    async def vk_status(self, request: web.Request) -> web.Response:
        """``messages.getDeliveryStatus`` of the VK business gateway, from the simulator's state."""
        form = {k: str(v) for k, v in (await request.post()).items()}
        fault = self._transport_fault("vk", request)
        if fault is not None:
            return fault
        if form.get("access_token") != self.settings.vk.access_token:
            return self._vk_error(5, "User authorization failed: invalid access_token")
        self.state.count("vk_status_queries")
        if "message_id" in form:
            key = form["message_id"]
        elif "random_id" in form:
            key = f"random:{form['random_id']}"
        else:
            return self._vk_error(100, "One of the parameters specified was missing or invalid: message_id")
        status = self.state.statuses.get(("vk", key))
        if status is None:
            return self._vk_error(104, "Not found")
        return web.json_response({"response": status})

    # ---- Viber -----------------------------------------------------------------------------

    @staticmethod
    def _viber_status(status: int, text: str) -> web.Response:
        return web.json_response({"status": status, "status_message": text})

    async def viber_send(self, request: web.Request) -> web.Response:
        raw = await request.read()
        fault = self._transport_fault("viber", request)
        if fault is not None:
            return fault
        if request.headers.get(VIBER_AUTH_HEADER) != self.settings.viber.auth_token:
            return self._viber_status(2, "invalidAuthToken")
        if self.state.chance(self.state.faults["viber"].api_error_rate):
            self.state.count("viber_api_error")
            return self._viber_status(12, "tooManyRequests")
        body = _json_object(raw)
        if body is None:
            return self._viber_status(3, "badData")
        recipient = body.get("receiver") or body.get("phone")
        text = body.get("text")
        if not isinstance(recipient, str) or not isinstance(text, str):
            return self._viber_status(4, "missingData")
        if len(text) > VIBER_MAX_TEXT:
            return self._viber_status(3, "badData: text too long")
        tracking = body.get("tracking_data")
        key = ("viber", f"{recipient}:{tracking}") if isinstance(tracking, str) and tracking else None
        repeat = self._repeat(key) if key is not None else None
        if repeat is not None:
            return repeat
        if not self.state.population.on_viber(recipient):
            status, text_status = self.state.population.pick(
                "viber-why",
                recipient,
                (
                    (5, "receiverNotRegistered"),
                    (6, "receiverNotSubscribed"),
                    (11, "receiverNoSuitableDevice"),
                ),
            )
            return self._viber_status(status, text_status)
        token = VIBER_TOKEN_BASE + self.state.new_id()
        ttl = body.get("ttl")
        ttl_s = float(ttl) if isinstance(ttl, int) and not isinstance(ttl, bool) else 86400.0
        tracked = tracking if isinstance(tracking, str) else None
        self._set_viber_status(token, tracked, "pending", ttl=ttl_s)
        user_id = body.get("receiver") if isinstance(body.get("receiver"), str) else None
        self.state.spawn(
            self._deliver_viber(
                token, recipient, user_id, tracking if isinstance(tracking, str) else None, ttl_s
            )
        )
        log.info("viber: accepted message %s for %s", token, _masked(recipient))
        response = {"status": 0, "status_message": "ok", "message_token": token, "chat_hostname": "SN-SIM"}
        return await self._accepted("viber", key, str(token), response, 200)

    def _viber_callback(
        self, event: str, token: int, user_id: str | None, tracking: str | None, at: float
    ) -> OutgoingCallback:
        body: dict[str, Any] = {"event": event, "timestamp": int(at * 1000), "message_token": token}
        if user_id is not None:
            body["user_id"] = user_id
        if tracking is not None:
            body["tracking_data"] = tracking
        raw = json_bytes(body)
        signature = hmac_sha256_hex(self.settings.viber.auth_token, raw)
        return OutgoingCallback(
            "/callbacks/viber", raw, {"Content-Type": "application/json", VIBER_SIGNATURE_HEADER: signature}
        )

    async def _deliver_viber(
        self, token: int, recipient: str, user_id: str | None, tracking: str | None, ttl_s: float
    ) -> None:
        latency = self._messenger_latency("viber", recipient)
        await self._sleep(min(latency, ttl_s))
        now = self.state.now()
        if latency > ttl_s:
            self._set_viber_status(token, tracking, "expired", ttl=ttl_s)
            await self.state.send_callbacks(
                "viber", [(0.0, self._viber_callback("expired", token, user_id, tracking, now))]
            )
            return
        self.state.record_delivery("viber", str(token), tracking or str(token), recipient)
        viber = self.settings.viber
        self.state.record_billing(
            "viber", str(token), 1, viber.price_per_delivered, viber.currency, "delivered"
        )
        delivered = {
            "delivered_at": int(now * 1000),
            "price": str(viber.price_per_delivered),
            "currency": viber.currency,
        }
        self._set_viber_status(token, tracking, "delivered", ttl=ttl_s, **delivered)
        timeline = [(0.0, self._viber_callback("delivered", token, user_id, tracking, now))]
        if self.state.population.reads("viber", recipient, str(token)):
            read_delay = self.state.delay(self.settings.latencies.read)
            seen = self._viber_callback("seen", token, user_id, tracking, now + read_delay)
            timeline.append((read_delay, seen))
            read = {**delivered, "seen_at": int((now + read_delay) * 1000)}
            self.state.spawn(
                self._later(
                    read_delay, lambda: self._set_viber_status(token, tracking, "seen", ttl=ttl_s, **read)
                )
            )
        await self.state.send_callbacks("viber", timeline)

    def _set_viber_status(self, token: int, tracking: str | None, status: str, **fields: Any) -> None:
        document = {
            "status": 0,
            "status_message": "ok",
            "message_token": token,
            "message_status": status,
            "timestamp": int(self.state.now() * 1000),
            **fields,
        }
        keys = (str(token), *((f"tracking:{tracking}",) if tracking else ()))
        self.state.set_status("viber", keys, document)

    async def viber_status(self, request: web.Request) -> web.Response:
        """The Viber business gateway's message status lookup, from the simulator's state."""
        raw = await request.read()
        fault = self._transport_fault("viber", request)
        if fault is not None:
            return fault
        if request.headers.get(VIBER_AUTH_HEADER) != self.settings.viber.auth_token:
            return self._viber_status(2, "invalidAuthToken")
        self.state.count("viber_status_queries")
        body = _json_object(raw)
        if body is None:
            return self._viber_status(3, "badData")
        token, tracking = body.get("message_token"), body.get("tracking_data")
        if token is not None:
            key = str(token)
        elif isinstance(tracking, str) and tracking:
            key = f"tracking:{tracking}"
        else:
            return self._viber_status(4, "missingData")
        status = self.state.statuses.get(("viber", key))
        if status is None:
            return web.json_response(
                {"status": 0, "status_message": "ok", "message_token": token, "message_status": "unknown"}
            )
        return web.json_response(status)

    # ---- SMS -------------------------------------------------------------------------------

    @staticmethod
    def _sms_error(status: int, message_id: str, text: str) -> web.Response:
        return web.json_response(
            {"requestError": {"serviceException": {"messageId": message_id, "text": text}}}, status=status
        )

    async def sms_send(self, request: web.Request) -> web.Response:
        raw = await request.read()
        fault = self._transport_fault("sms", request)
        if fault is not None:
            return fault
        if request.headers.get("Authorization") != f"App {self.settings.sms.api_key}":
            return self._sms_error(401, "UNAUTHORIZED", "Invalid login")
        if self.state.chance(self.state.faults["sms"].api_error_rate):
            self.state.count("sms_api_error")
            return self._sms_error(500, "SYSTEM_ERROR", "Try later")
        try:
            body = json.loads(raw)
            sms = body["messages"][0]
            destination = sms["destinations"][0]
            to = str(destination["to"])
            text = str(sms["text"])
        except (ValueError, KeyError, IndexError, TypeError):
            return self._sms_error(400, "BAD_REQUEST", "Bad request")
        client_id = destination.get("messageId")
        message_id = client_id if isinstance(client_id, str) and client_id else f"sim-{self.state.new_id()}"
        key = ("sms", message_id) if message_id == client_id else None
        repeat = self._repeat(key) if key is not None else None
        if repeat is not None:
            return repeat
        if not to.isdigit() or not 10 <= len(to) <= 15:
            status = {
                "groupId": 5,
                "groupName": "REJECTED",
                "id": 51,
                "name": "REJECTED_DESTINATION",
                "description": "Invalid destination address",
            }
            return web.json_response({"messages": [{"to": to, "messageId": message_id, "status": status}]})
        segments = count_segments(text).segments
        sms_settings = self.settings.sms
        self.state.record_billing(
            "sms",
            message_id,
            segments,
            sms_settings.price_per_segment * segments,
            sms_settings.currency,
            "submitted",
        )
        validity = sms.get("validityPeriod")
        validity_s = (
            float(validity) * 60 if isinstance(validity, int) and not isinstance(validity, bool) else None
        )
        pending = {
            "messageId": message_id,
            "to": to,
            "sentAt": _iso(self.state.now()),
            "smsCount": segments,
            "status": {"groupName": "PENDING", "name": "PENDING_ENROUTE"},
        }
        self.state.set_status("sms", (message_id,), pending)
        self.state.spawn(self._deliver_sms(message_id, "+" + to, segments, validity_s))
        log.info("sms: accepted message %s for %s (%d segments)", message_id, mask_phone("+" + to), segments)
        status = {
            "groupId": 1,
            "groupName": "PENDING",
            "id": 26,
            "name": "PENDING_ACCEPTED",
            "description": "Message sent to next instance",
        }
        response = {
            "bulkId": f"bulk-{self.state.new_id()}",
            "messages": [{"to": to, "messageId": message_id, "status": status, "smsCount": segments}],
        }
        return await self._accepted("sms", key, message_id, response, 200)

    async def _deliver_sms(
        self, message_id: str, phone: str, segments: int, validity_s: float | None
    ) -> None:
        sent_at = self.state.now()
        latency = self.state.delay(self.settings.latencies.sms)
        await self._sleep(latency)
        if validity_s is not None and latency > validity_s:
            group, name = "EXPIRED", "EXPIRED_EXPIRED"
        elif self.state.population.sms_deliverable(phone):
            group, name = "DELIVERED", "DELIVERED_TO_HANDSET"
            self.state.record_delivery("sms", message_id, message_id, phone)
        else:
            group, name = "UNDELIVERABLE", "UNDELIVERABLE_NOT_DELIVERED"
        sms = self.settings.sms
        result = {
            "messageId": message_id,
            "to": phone.removeprefix("+"),
            "sentAt": _iso(sent_at),
            "doneAt": _iso(self.state.now()),
            "smsCount": segments,
            "price": {"pricePerMessage": str(sms.price_per_segment), "currency": sms.currency},
            "status": {"groupName": group, "name": name},
            "error": {"groupName": "OK" if group == "DELIVERED" else "HANDSET_ERRORS", "name": name},
        }
        self.state.set_status("sms", (message_id,), result)
        raw = json_bytes({"results": [result]})
        signature = hmac_sha256_hex(sms.callback_secret, raw)
        callback = OutgoingCallback(
            "/callbacks/sms", raw, {"Content-Type": "application/json", SMS_SIGNATURE_HEADER: signature}
        )
        await self.state.send_callbacks("sms", [(0.0, callback)])

    # ---- voice -----------------------------------------------------------------------------

    @staticmethod
    def _voice_error(status: int, code: str, text: str) -> web.Response:
        return web.json_response({"error": {"code": code, "message": text}}, status=status)

    async def voice_call(self, request: web.Request) -> web.Response:
        raw = await request.read()
        fault = self._transport_fault("voice", request)
        if fault is not None:
            return fault
        voice = self.settings.voice
        if request.headers.get("Authorization") != f"Bearer {voice.api_token}":
            return self._voice_error(401, "unauthorized", "bad token")
        if self.state.chance(self.state.faults["voice"].api_error_rate):
            self.state.count("voice_api_error")
            return self._voice_error(503, "capacity_exceeded", "no free lines")
        try:
            body = json.loads(raw)
            to = str(body["to"])
            text = str(body["text"])
        except (ValueError, KeyError, TypeError):
            return self._voice_error(400, "bad_request", "to and text are required")
        if len(text) > voice.max_text_length:
            return self._voice_error(400, "text_too_long", "text too long to speak")
        digits = to.removeprefix("+")
        if not to.startswith("+") or not digits.isdigit() or not 10 <= len(digits) <= 15:
            return self._voice_error(400, "invalid_number", "not a callable number")
        client_id = body.get("client_call_id")
        key = ("voice", client_id) if isinstance(client_id, str) and client_id else None
        repeat = self._repeat(key) if key is not None else None
        if repeat is not None:
            return repeat
        call_id = f"call-{self.state.new_id()}"
        queued: dict[str, Any] = {"call_id": call_id, "status": "queued"}
        if key is not None:
            queued["client_call_id"] = client_id
        self.state.set_status("voice", (call_id, *((str(client_id),) if key is not None else ())), queued)
        self.state.spawn(self._finish_call(call_id, client_id if key is not None else None, to, text))
        log.info("voice: queued call %s to %s", call_id, mask_phone(to))
        return await self._accepted("voice", key, call_id, {"call_id": call_id, "status": "queued"}, 201)

    async def _finish_call(self, call_id: str, client_id: str | None, phone: str, text: str) -> None:
        ring = self.state.delay(self.settings.latencies.voice)
        await self._sleep(ring)
        population = self.state.population
        duration = 0
        if population.answers_voice(phone):
            result = "answered"
            # Speaking pace of about 12.5 characters a second, plus the person's own seconds.
            duration = max(1, round(len(text) / 12.5 + self.state.rng.uniform(0, 15)))
            minutes = billed_minutes(duration)
            voice = self.settings.voice
            self.state.record_delivery("voice", call_id, client_id or call_id, phone)
            self.state.record_billing(
                "voice",
                call_id,
                minutes,
                voice.price_per_minute * minutes + voice.per_call_fee,
                voice.currency,
                "answered",
            )
        else:
            result = population.pick("voice-why", phone, ("no_answer", "no_answer", "busy", "failed"))
        finished = self.state.now() + duration
        payload: dict[str, Any] = {
            "event_id": f"{call_id}:{result}",
            "call_id": call_id,
            "result": result,
            "duration_s": duration,
            "finished_at": _iso(finished),
        }
        if client_id is not None:
            payload["client_call_id"] = client_id
        ids = (call_id, *((client_id,) if client_id is not None else ()))
        self.state.set_status("voice", ids, {**payload, "status": "finished"})
        raw = json_bytes(payload)
        signature = hmac_sha256_hex(self.settings.voice.callback_secret, raw)
        callback = OutgoingCallback(
            "/callbacks/voice", raw, {"Content-Type": "application/json", VOICE_SIGNATURE_HEADER: signature}
        )
        await self.state.send_callbacks("voice", [(0.0, callback)])

    # ---- status queries -------------------------------------------------------------------

    async def sms_status(self, request: web.Request) -> web.Response:
        """The aggregator's message log: the result document of each id asked for."""
        fault = self._transport_fault("sms", request)
        if fault is not None:
            return fault
        if request.headers.get("Authorization") != f"App {self.settings.sms.api_key}":
            return self._sms_error(401, "UNAUTHORIZED", "Invalid login")
        self.state.count("sms_status_queries")
        ids = request.query.getall("messageId", [])
        results = [self.state.statuses[("sms", i)] for i in ids if ("sms", i) in self.state.statuses]
        return web.json_response({"results": results})

    async def voice_status(self, request: web.Request) -> web.Response:
        """One call's result document, by call id or by our client call id."""
        fault = self._transport_fault("voice", request)
        if fault is not None:
            return fault
        if request.headers.get("Authorization") != f"Bearer {self.settings.voice.api_token}":
            return self._voice_error(401, "unauthorized", "bad token")
        self.state.count("voice_status_queries")
        key = request.match_info.get("call_id") or request.query.get("client_call_id", "")
        status = self.state.statuses.get(("voice", key))
        if status is None:
            return self._voice_error(404, "not_found", "no such call")
        return web.json_response(status)

    async def _sleep(self, seconds: float) -> None:
        # Simulated network and handset latency: real seconds, or virtual ones in virtual time.
        await self.state.sleep(seconds)
