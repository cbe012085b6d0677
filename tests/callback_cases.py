"""Callback bodies for the bad-input tests: sane ones, absurd ones, and how to sign them.

Signing uses the adapter's own settings (the simulator's secrets by default), as a provider
holding the configured secret would.
"""

from __future__ import annotations

import json
from typing import Any

from providers.base import ProviderAdapter
from providers.callback_auth import hmac_sha256_hex
from providers.sms import SmsAdapter
from providers.viber import ViberAdapter
from providers.vk import VkAdapter, VkSettings
from providers.voice import VoiceAdapter

ADAPTERS: dict[str, type[Any]] = {
    "vk": VkAdapter,
    "viber": ViberAdapter,
    "sms": SmsAdapter,
    "voice": VoiceAdapter,
}
SIGNATURE_HEADERS = {
    "viber": "X-Viber-Content-Signature",
    "sms": "X-Sms-Signature",
    "voice": "X-Voice-Signature",
}


def callback_secret(adapter: ProviderAdapter) -> str:
    """The secret a provider signs callbacks with (VK: the one it puts in the body)."""
    settings: Any = adapter.settings  # type: ignore[attr-defined]
    return str(settings.auth_token if adapter.name == "viber" else settings.callback_secret)


def signed(adapter: ProviderAdapter, body: bytes) -> dict[str, str]:
    """Headers that authenticate ``body`` for ``adapter`` (VK carries its secret in the body)."""
    if adapter.name == "vk":
        return {}
    return {SIGNATURE_HEADERS[adapter.name]: hmac_sha256_hex(callback_secret(adapter), body)}


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def vk_with(secret: str | None = None, **obj: Any) -> dict[str, Any]:
    return {
        "type": "message_delivered",
        "group_id": 1,
        "secret": VkSettings().callback_secret if secret is None else secret,
        "event_id": "e-1",
        "object": {"message_id": 77, "date": 1_700_000_000, **obj},
    }


def viber_with(**fields: Any) -> dict[str, Any]:
    return {"event": "delivered", "timestamp": 1_700_000_000_000, "message_token": 4242, **fields}


def sms_with(**fields: Any) -> dict[str, Any]:
    result = {
        "messageId": "k-1",
        "doneAt": "2024-01-01T00:00:00+00:00",
        "status": {"groupName": "DELIVERED", "name": "DELIVERED_TO_HANDSET"},
        "smsCount": 1,
        "price": {"pricePerMessage": "4.50", "currency": "RUB"},
        **fields,
    }
    return {"results": [result]}


def sms_price(per_message: Any) -> dict[str, Any]:
    return sms_with(price={"pricePerMessage": per_message, "currency": "RUB"})


def voice_with(**fields: Any) -> dict[str, Any]:
    return {
        "call_id": "call-1",
        "client_call_id": "k-1",
        "result": "answered",
        "duration_s": 61,
        "finished_at": "2024-05-01T10:00:00+00:00",
        **fields,
    }


def raw(payload: dict[str, Any], old: str, new: str) -> bytes:
    """The payload as JSON with one token replaced: for NaN, Infinity and numbers JSON can spell."""
    encoded = body_of(payload)
    assert old.encode() in encoded
    return encoded.replace(old.encode(), new.encode())


ABSURD: list[tuple[str, bytes]] = [
    ("vk", body_of(vk_with(date=10**30))),
    ("vk", raw(vk_with(date=1), "1}", "1e30}")),
    ("vk", body_of(vk_with(date=-1))),
    ("vk", raw(vk_with(date=1), "1}", "NaN}")),
    ("vk", raw(vk_with(date=1), "1}", "-Infinity}")),
    ("vk", body_of(vk_with(date="1700000000"))),
    ("vk", body_of(vk_with(date=True))),
    ("vk", body_of(vk_with(message_id=[1]))),
    ("vk", body_of(vk_with(message_id={"a": 1}))),
    ("vk", body_of(vk_with(message_id=True))),
    ("vk", raw(vk_with(message_id=7), "7,", "7.5,")),
    ("vk", body_of(vk_with(message_id="m" * 10_000))),
    ("vk", body_of(vk_with(message_id="\ud800"))),
    ("vk", body_of({**vk_with(), "event_id": "e" * 10_000})),
    ("vk", body_of({**vk_with(), "object": "delivered"})),
    ("viber", body_of(viber_with(timestamp=10**30))),
    ("viber", body_of(viber_with(timestamp=10**18))),  # milliseconds: the year 31 690
    ("viber", body_of(viber_with(timestamp=-5))),
    ("viber", raw(viber_with(timestamp=1), "1,", "NaN,")),
    ("viber", body_of(viber_with(timestamp="1700000000000"))),
    ("viber", body_of(viber_with(message_token=[]))),
    ("viber", body_of(viber_with(message_token=False))),
    ("viber", body_of(viber_with(message_token=10**300))),
    ("viber", b"[1, 2, 3]"),
    ("viber", b"\xff\xfe\x00\x01 not json"),
    ("sms", body_of(sms_price("1e30"))),
    ("sms", body_of(sms_price("-1"))),
    ("sms", body_of(sms_price("NaN"))),
    ("sms", body_of(sms_price("sNaN"))),
    ("sms", body_of(sms_price("Infinity"))),
    ("sms", body_of(sms_price("four fifty"))),
    ("sms", body_of(sms_price(10**30))),
    ("sms", body_of(sms_price([4.5]))),
    ("sms", body_of(sms_with(smsCount=10**12))),
    ("sms", body_of(sms_with(smsCount="2"))),
    ("sms", body_of(sms_with(smsCount=0))),
    ("sms", body_of(sms_with(doneAt="0001-01-01T00:00:00+14:00"))),
    ("sms", body_of(sms_with(doneAt="9999-12-31T23:59:59+00:00"))),
    ("sms", body_of(sms_with(doneAt="1970-01-01T00:00:00"))),
    ("sms", body_of(sms_with(doneAt=1_700_000_000))),
    ("sms", body_of(sms_with(doneAt="yesterday"))),
    ("sms", body_of(sms_with(messageId=12))),
    ("sms", body_of(sms_with(messageId="k" * 10_000))),
    ("sms", body_of({"results": "all delivered"})),
    ("sms", body_of({"results": [5]})),
    ("voice", body_of(voice_with(duration_s=10**18))),
    ("voice", body_of(voice_with(duration_s=86_400))),
    ("voice", body_of(voice_with(duration_s=-1))),
    ("voice", body_of(voice_with(duration_s="61"))),
    ("voice", raw(voice_with(duration_s=61), "61", "61.5")),
    ("voice", body_of(voice_with(finished_at="1e30"))),
    ("voice", body_of(voice_with(finished_at=None))),
    ("voice", body_of(voice_with(call_id=7))),
]


def sane(provider: str, secret: str | None = None) -> dict[str, Any]:
    """A well-formed report of each provider (VK's with ``secret`` in the body)."""
    return {"vk": vk_with(secret), "viber": viber_with(), "sms": sms_with(), "voice": voice_with()}[provider]
