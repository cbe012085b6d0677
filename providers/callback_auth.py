"""Authentication and parsing helpers for inbound provider callbacks."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from providers.errors import CallbackRejected
from router.domain import mask_phone

_PHONE_LIKE = re.compile(r"\+?\d{7,15}")


def hmac_sha256_hex(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of the raw body, the signature format every HMAC-signed callback uses."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup that works on plain dicts and multidicts."""
    direct = headers.get(name)
    if direct is not None:
        return direct
    lowered = name.lower()
    for key, value in headers.items():
        if key.lower() == lowered:
            return value
    return None


def require_hmac_signature(
    provider: str, headers: Mapping[str, str], body: bytes, *, header: str, secret: str
) -> None:
    """Raise :class:`CallbackRejected` unless ``header`` holds the body's HMAC under ``secret``."""
    signature = header_value(headers, header)
    if not signature:
        raise CallbackRejected(f"missing {header}", provider=provider)
    signature = signature.strip().removeprefix("sha256=")
    if not hmac.compare_digest(signature.lower(), hmac_sha256_hex(secret, body)):
        raise CallbackRejected(f"bad {header}", provider=provider)


def require_secret(provider: str, presented: object, expected: str) -> None:
    """Raise :class:`CallbackRejected` unless ``presented`` equals the shared secret."""
    if not isinstance(presented, str) or not presented:
        raise CallbackRejected("missing secret", provider=provider)
    if not hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8")):
        raise CallbackRejected("bad secret", provider=provider)


def load_json_object(provider: str, body: bytes) -> dict[str, Any]:
    """Decode a callback body that must be a JSON object; numbers with a fraction become Decimal."""
    try:
        decoded = json.loads(body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CallbackRejected("callback body is not JSON", provider=provider) from exc
    if not isinstance(decoded, dict):
        raise CallbackRejected("callback body is not a JSON object", provider=provider)
    return decoded


def from_unix_seconds(value: object, provider: str) -> datetime:
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise CallbackRejected("missing or bad timestamp", provider=provider)
    return datetime.fromtimestamp(float(value), UTC)


def from_iso(value: object, provider: str) -> datetime:
    if not isinstance(value, str):
        raise CallbackRejected("missing or bad timestamp", provider=provider)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise CallbackRejected("bad timestamp", provider=provider) from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def scrub_phones(text: str) -> str:
    """Mask anything that looks like a phone number in provider-supplied text before we log or raise it."""
    return _PHONE_LIKE.sub(lambda m: mask_phone(m.group(0)), text)
