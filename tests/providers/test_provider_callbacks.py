"""Callback authentication and parsing: forged or unsigned callbacks are refused, repeats keep their key."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import aiohttp
import pytest
from provider_harness import CallbackSink

from providers.base import CallbackReply
from providers.callback_auth import hmac_sha256_hex, json_depth
from providers.errors import CallbackMalformed, CallbackRejected, CallbackUnauthenticated
from providers.sms import SmsAdapter
from providers.viber import ViberAdapter
from providers.vk import VkAdapter, VkSettings
from providers.voice import VoiceAdapter, billed_minutes
from router.domain import DeliveryOutcome, Money
from tests.callback_cases import ABSURD, ADAPTERS, SIGNATURE_HEADERS, sane, signed, sms_with, vk_with


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


VIBER_DELIVERED = body_of(
    {
        "event": "delivered",
        "timestamp": 1457764197627,
        "message_token": 491266184665523145,
        "tracking_data": "k-1",
    }
)


def test_viber_signed_callback_is_parsed() -> None:
    viber = ViberAdapter()
    signature = hmac_sha256_hex(viber.settings.auth_token, VIBER_DELIVERED)

    [event] = viber.parse_callback({"X-Viber-Content-Signature": signature}, VIBER_DELIVERED)

    assert event.kind is DeliveryOutcome.DELIVERED
    assert event.provider_message_id == "491266184665523145"
    assert event.dedupe_key == "k-1"
    assert event.event_key == "viber:491266184665523145:delivered"
    assert event.billed_amount == Money(Decimal("1.20"), "RUB")
    assert event.occurred_at.year == 2016


def test_viber_forged_and_unsigned_callbacks_are_refused() -> None:
    viber = ViberAdapter()
    forged = hmac_sha256_hex("not-the-token", VIBER_DELIVERED)
    tampered_body = VIBER_DELIVERED.replace(b"delivered", b"seen")
    good_signature = hmac_sha256_hex(viber.settings.auth_token, VIBER_DELIVERED)

    with pytest.raises(CallbackRejected):
        viber.parse_callback({"X-Viber-Content-Signature": forged}, VIBER_DELIVERED)
    with pytest.raises(CallbackRejected):
        viber.parse_callback({}, VIBER_DELIVERED)
    with pytest.raises(CallbackRejected):
        viber.parse_callback({"X-Viber-Content-Signature": good_signature}, tampered_body)


async def test_forged_viber_callback_over_http_is_refused(callback_sink: CallbackSink) -> None:
    async with aiohttp.ClientSession() as session:
        for headers in ({}, {"X-Viber-Content-Signature": hmac_sha256_hex("forged", VIBER_DELIVERED)}):
            async with session.post(
                callback_sink.url + "/callbacks/viber", data=VIBER_DELIVERED, headers=headers
            ) as resp:
                assert resp.status == 403

    assert callback_sink.events == []
    assert len(callback_sink.refused) == 2


def vk_callback(secret: str, group_id: int = 1, kind: str = "message_delivered") -> bytes:
    return body_of(
        {
            "type": kind,
            "event_id": "a1b2",
            "v": "5.199",
            "group_id": group_id,
            "secret": secret,
            "object": {
                "message_id": 77,
                "random_id": 5,
                "date": 1700000000,
                "payload": '{"dedupe_key": "k-9"}',
            },
        }
    )


def test_vk_callback_secret_and_group_are_checked() -> None:
    vk = VkAdapter()

    [event] = vk.parse_callback({}, vk_callback(vk.settings.callback_secret))
    assert (event.kind, event.provider_message_id, event.dedupe_key) == (
        DeliveryOutcome.DELIVERED,
        "77",
        "k-9",
    )
    assert event.event_key == "vk:a1b2"
    assert event.billed_amount == Money(Decimal("0.35"), "RUB")

    for forged in (
        vk_callback("wrong"),
        vk_callback(""),
        vk_callback(vk.settings.callback_secret, group_id=2),
    ):
        with pytest.raises(CallbackRejected):
            vk.parse_callback({}, forged)
    with pytest.raises(CallbackRejected):
        vk.parse_callback({}, b"not json")


def test_vk_read_event_is_not_billed_and_unknown_types_are_ignored() -> None:
    vk = VkAdapter()
    [read] = vk.parse_callback({}, vk_callback(vk.settings.callback_secret, kind="message_read"))
    assert read.kind is DeliveryOutcome.READ and read.billed_amount is None
    assert vk.parse_callback({}, vk_callback(vk.settings.callback_secret, kind="confirmation")) == []


def test_vk_is_answered_ok_and_its_confirmation_with_the_group_code() -> None:
    # VK's Callback API sends an event again until it hears the plain string "ok", and adds
    # a server only when it answers "confirmation" with the code from the group's settings.
    vk = VkAdapter(VkSettings(confirmation_code="1a2b3c4d"))
    secret = vk.settings.callback_secret

    assert vk.callback_reply(vk_callback(secret)) == CallbackReply(b"ok", "text/plain", 200)
    assert vk.callback_reply(vk_callback(secret, kind="message_new")) == CallbackReply(b"ok")
    assert vk.callback_reply(vk_callback(secret, kind="confirmation")) == CallbackReply(b"1a2b3c4d")
    with pytest.raises(CallbackRejected):  # a confirmation with the wrong secret gets no code
        vk.parse_callback({}, vk_callback("wrong", kind="confirmation"))

    unconfigured = VkAdapter().callback_reply(vk_callback(secret, kind="confirmation"))
    assert unconfigured.status == 500 and b"confirmation_code" in unconfigured.body


def test_other_providers_take_the_gateways_own_acknowledgement() -> None:
    for adapter in (ViberAdapter(), SmsAdapter(), VoiceAdapter()):
        assert adapter.callback_reply(VIBER_DELIVERED) is None


def test_sms_report_requires_signature_and_skips_pending() -> None:
    sms = SmsAdapter()
    body = body_of(
        {
            "results": [
                {
                    "messageId": "k-1",
                    "doneAt": "2024-01-01T00:00:00+00:00",
                    "status": {"groupName": "DELIVERED"},
                },
                {
                    "messageId": "k-2",
                    "doneAt": "2024-01-01T00:00:00+00:00",
                    "status": {"groupName": "PENDING"},
                },
                {
                    "messageId": "k-3",
                    "doneAt": "2024-01-01T00:00:00Z",
                    "status": {"groupName": "UNDELIVERABLE"},
                },
            ]
        }
    )
    signature = hmac_sha256_hex(sms.settings.callback_secret, body)

    events = sms.parse_callback({"x-sms-signature": signature}, body)

    assert [(e.dedupe_key, e.kind) for e in events] == [
        ("k-1", DeliveryOutcome.DELIVERED),
        ("k-3", DeliveryOutcome.UNDELIVERABLE),
    ]
    assert all(e.billed_amount is None for e in events)  # billed at submit
    with pytest.raises(CallbackRejected):
        sms.parse_callback({"X-Sms-Signature": "00" * 32}, body)
    with pytest.raises(CallbackRejected):
        sms.parse_callback({}, body)


@pytest.mark.parametrize(
    ("duration", "minutes"), [(0, 1), (1, 1), (59, 1), (60, 1), (61, 2), (120, 2), (121, 3), (3600, 60)]
)
def test_voice_bills_per_started_minute(duration: int, minutes: int) -> None:
    assert billed_minutes(duration) == minutes


def test_voice_result_callback_carries_billing_only_when_answered() -> None:
    voice = VoiceAdapter()

    def signed(result: str, duration: int) -> tuple[dict[str, str], bytes]:
        body = body_of(
            {
                "call_id": "call-1",
                "client_call_id": "k-1",
                "result": result,
                "duration_s": duration,
                "finished_at": "2024-05-01T10:00:00+00:00",
            }
        )
        return {"X-Voice-Signature": hmac_sha256_hex(voice.settings.callback_secret, body)}, body

    [answered] = voice.parse_callback(*signed("answered", 61))
    [busy] = voice.parse_callback(*signed("busy", 0))

    assert (answered.kind, answered.billed_units, answered.billed_amount) == (
        DeliveryOutcome.ANSWERED,
        2,
        Money(Decimal("5.00"), "RUB"),
    )
    assert (busy.kind, busy.billed_units, busy.billed_amount) == (DeliveryOutcome.BUSY, None, None)
    _, body = signed("answered", 61)
    with pytest.raises(CallbackRejected):
        voice.parse_callback({"X-Voice-Signature": "sha256=" + "0" * 64}, body)


def test_repeated_callback_keeps_its_event_key() -> None:
    viber = ViberAdapter()
    signature = hmac_sha256_hex(viber.settings.auth_token, VIBER_DELIVERED)
    first = viber.parse_callback({"X-Viber-Content-Signature": signature}, VIBER_DELIVERED)
    second = viber.parse_callback({"X-Viber-Content-Signature": signature}, VIBER_DELIVERED)
    assert first == second


# ---- bad input: depth, authentication first, absurd values ------------------------------------

DEEP = b"[" * 5_000 + b"]" * 5_000  # 10 KB, far deeper than the parser's recursion limit


def test_json_depth_counts_structure_outside_strings() -> None:
    assert json_depth(b"") == 0
    assert json_depth(b'{"a": [1, {"b": []}]}') == 4
    assert json_depth(b'{"a": "[[[[{{{{", "b": "\\"[[["}') == 1  # brackets in strings, escaped quotes
    assert json_depth(DEEP) == 5_000
    assert json_depth(b"]]]]") == 0


def test_a_deep_vk_body_is_unauthenticated_and_never_parsed() -> None:
    # VK's secret sits in the body: a body too deep to read cannot be authenticated, so it is
    # a 401, like any other callback whose secret cannot be checked (400 means "signed").
    vk = VkAdapter()
    secret = vk.settings.callback_secret
    nested_beside_secret = b'{"secret": "' + secret.encode() + b'", "group_id": 1, "x": ' + DEEP + b"}"
    for body in (DEEP, nested_beside_secret, b"\xff\xfe\x00garbage", b"NaN", b'{"secret": NaN}'):
        with pytest.raises(CallbackUnauthenticated):
            vk.parse_callback({}, body)
    with pytest.raises(CallbackUnauthenticated):  # a lone surrogate where the secret belongs
        vk.parse_callback({}, b'{"secret": "\\ud800", "group_id": 1}')
    with pytest.raises(CallbackUnauthenticated):  # True == 1 in Python, not in VK
        vk.parse_callback({}, body_of({"secret": secret, "group_id": True, "type": "message_read"}))


def test_hmac_callbacks_are_authenticated_before_their_body_is_read() -> None:
    for adapter in (ViberAdapter(), SmsAdapter(), VoiceAdapter()):
        header = SIGNATURE_HEADERS[adapter.name]
        for headers in ({}, {header: "é" * 64}, {header: hmac_sha256_hex("forged", DEEP)}):
            with pytest.raises(CallbackUnauthenticated):
                adapter.parse_callback(headers, DEEP)
        with pytest.raises(CallbackMalformed, match="nests deeper"):
            adapter.parse_callback(signed(adapter, DEEP), DEEP)


@pytest.mark.parametrize(("provider", "body"), ABSURD, ids=[f"{p}-{i}" for i, (p, _) in enumerate(ABSURD)])
def test_signed_callbacks_with_absurd_values_are_malformed(provider: str, body: bytes) -> None:
    adapter = ADAPTERS[provider]()
    with pytest.raises(CallbackMalformed):
        adapter.parse_callback(signed(adapter, body), body)


def test_the_sane_versions_of_the_absurd_callbacks_are_read() -> None:
    for provider, adapter_type in ADAPTERS.items():
        adapter = adapter_type()
        body = body_of(sane(provider))
        [event] = adapter.parse_callback(signed(adapter, body), body)
        assert event.kind in (DeliveryOutcome.DELIVERED, DeliveryOutcome.ANSWERED)
    sms = SmsAdapter()
    [report] = sms.parse_callback(signed(sms, body_of(sms_with())), body_of(sms_with()))
    assert (report.billed_units, report.billed_amount) == (1, Money(Decimal("4.50"), "RUB"))


def test_long_or_unencodable_provider_text_is_cut_and_mended_not_refused() -> None:
    body = body_of({**vk_with(reason="\ud800" + "x" * 5_000), "type": "message_failed"})
    [event] = VkAdapter().parse_callback({}, body)
    assert event.detail is not None and len(event.detail) <= 500 and "\ud800" not in event.detail
    payload_key = body_of(vk_with(payload='{"dedupe_key": ' + "[" * 100 + "]" * 100 + "}"))
    [unreadable_payload] = VkAdapter().parse_callback({}, payload_key)
    assert unreadable_payload.dedupe_key is None  # an optional hint, not worth refusing the report


def test_an_unexpected_fault_after_authentication_is_malformed_with_its_type() -> None:
    broken = VkAdapter(VkSettings(price_per_delivered=None))  # type: ignore[arg-type]
    with pytest.raises(CallbackMalformed, match=r"unreadable callback \(TypeError\)"):
        broken.parse_callback({}, body_of(vk_with()))
