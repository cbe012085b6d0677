"""Authentication and parsing helpers for inbound provider callbacks.

A callback body is untrusted until authenticated, and even an authenticated one is checked
value by value: everything that reaches a :class:`~providers.base.DeliveryEvent` is of the
right type and within bounds the database can store. Nesting depth is bounded by a byte
scan before any JSON parsing, so a deeply nested body never reaches the parser's recursion.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from itertools import accumulate
from typing import Any

from providers.errors import CallbackMalformed, CallbackRejected, CallbackUnauthenticated
from router.domain import Money, mask_phone

_PHONE_LIKE = re.compile(r"\+?\d{7,15}")

MAX_JSON_DEPTH = 32
"""Deepest nesting of arrays and objects a callback body may have; providers send 3 or 4."""
MAX_ID_LENGTH = 256
"""Longest message id, event id or dedupe key taken from a callback (ours are under 100)."""
MAX_DETAIL_LENGTH = 500
"""A provider's reason text is cut to this many characters."""
MAX_AMOUNT = Decimal(10) ** 9
"""Highest price a callback may report for one message; far above any real one, and well
inside the ledger's NUMERIC(20, 9)."""
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)
"""Timestamps outside these are nobody's clock; the gateway also refuses ones too far ahead of its own."""

# A JSON string (its escapes included); what is left once strings are gone is structure. The
# closing quote is optional: an unterminated string runs to the end (the parser stops there too),
# and no match ever fails, so the scan stays linear whatever the input.
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = tuple(1 if b in b"[{" else -1 if b in b"]}" else 0 for b in range(256))
_NANO = Decimal("1e-9")


def json_depth(body: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` in ``body``, not counting those inside strings.

    A linear scan in C (regex, translate, accumulate) that never recurses, whatever the input.
    """
    skeleton = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(0, max(accumulate(_DEPTH_STEP[b] for b in skeleton), default=0))


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
    """Raise :class:`CallbackUnauthenticated` unless ``header`` holds the body's HMAC under ``secret``."""
    signature = header_value(headers, header)
    if not signature:
        raise CallbackUnauthenticated(f"missing {header}", provider=provider)
    signature = signature.strip().removeprefix("sha256=")
    # compare_digest refuses non-ASCII str; no hex digest is anything else.
    if not signature.isascii() or not hmac.compare_digest(signature.lower(), hmac_sha256_hex(secret, body)):
        raise CallbackUnauthenticated(f"bad {header}", provider=provider)


def require_secret(provider: str, presented: object, expected: str) -> None:
    """Raise :class:`CallbackUnauthenticated` unless ``presented`` equals the shared secret."""
    if not isinstance(presented, str) or not presented:
        raise CallbackUnauthenticated("missing secret", provider=provider)
    # surrogatepass: a JSON string may hold a lone surrogate, which plain UTF-8 cannot encode.
    if not hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8")):
        raise CallbackUnauthenticated("bad secret", provider=provider)


def load_json_object(
    provider: str, body: bytes, *, error: type[CallbackRejected] = CallbackMalformed
) -> dict[str, Any]:
    """Decode a callback body that must be a JSON object; numbers with a fraction become Decimal.

    Depth is bounded before parsing. ``NaN`` and ``Infinity`` (which Python's parser takes)
    become non-finite Decimals that every value check refuses. ``error`` is what a
    bad body raises: malformed once the request is authenticated, unauthenticated before (VK).
    """
    if json_depth(body) > MAX_JSON_DEPTH:
        raise error(f"callback body nests deeper than {MAX_JSON_DEPTH}", provider=provider)
    try:
        decoded = json.loads(body, parse_float=Decimal, parse_constant=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        raise error("callback body is not JSON", provider=provider) from exc
    if not isinstance(decoded, dict):
        raise error("callback body is not a JSON object", provider=provider)
    return decoded


def load_nested_json(text: str) -> object | None:
    """A JSON value carried inside a string field (VK's ``payload``); None if it is not one."""
    encoded = text.encode("utf-8", "surrogatepass")
    if json_depth(encoded) > MAX_JSON_DEPTH:
        return None
    try:
        decoded: object = json.loads(text, parse_float=Decimal, parse_constant=Decimal)
    except ValueError:
        return None
    return decoded


@contextmanager
def malformed_on_error(provider: str) -> Iterator[None]:
    """Turn any unexpected exception while reading an authenticated body into :class:`CallbackMalformed`.

    The parsers check what they read, so this is a net for what they missed: the provider
    hears 400 and the log one warning naming the exception type, not a 500 and a traceback.
    """
    try:
        yield
    except CallbackRejected:
        raise
    except Exception as exc:
        raise CallbackMalformed(f"unreadable callback ({type(exc).__name__})", provider=provider) from exc


def _is_number(value: object) -> bool:
    return isinstance(value, int | Decimal) and not isinstance(value, bool)


def from_unix_seconds(value: object, provider: str, *, per_second: int = 1) -> datetime:
    """A timestamp in seconds (``per_second=1000``: milliseconds) since the epoch, within bounds."""
    if not _is_number(value):
        raise CallbackMalformed("missing or bad timestamp", provider=provider)
    assert isinstance(value, int | Decimal)
    seconds = Decimal(value) / per_second
    if not seconds.is_finite() or not EARLIEST.timestamp() <= seconds < LATEST.timestamp():
        raise CallbackMalformed("timestamp out of range", provider=provider)
    return datetime.fromtimestamp(float(seconds), UTC)


def from_iso(value: object, provider: str) -> datetime:
    """An ISO 8601 timestamp (naive means UTC), within bounds."""
    if not isinstance(value, str) or len(value) > 64:
        raise CallbackMalformed("missing or bad timestamp", provider=provider)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        aware = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
        in_range = EARLIEST <= aware < LATEST
    except (ValueError, OverflowError) as exc:  # OverflowError: year 1 with a positive offset
        raise CallbackMalformed("bad timestamp", provider=provider) from exc
    if not in_range:
        raise CallbackMalformed("timestamp out of range", provider=provider)
    return aware


def _storable_text(value: str) -> bool:
    return len(value) <= MAX_ID_LENGTH and not any("\ud800" <= c <= "\udfff" for c in value)


def callback_id(value: object, provider: str, what: str, *, numbers: bool = True) -> str:
    """A required identifier: a non-empty string (or, if ``numbers``, an integer) of bounded size."""
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= 10**MAX_ID_LENGTH:
            raise CallbackMalformed(f"{what} is too long", provider=provider)
        return str(value)
    if not isinstance(value, str) or not value:
        raise CallbackMalformed(f"callback without {what}", provider=provider)
    if not _storable_text(value):
        raise CallbackMalformed(f"{what} is too long or not text", provider=provider)
    return value


def optional_key(value: object) -> str | None:
    """An optional correlation key (a dedupe key echoed back); None unless a usable string."""
    return value if isinstance(value, str) and value and _storable_text(value) else None


def detail_text(value: object) -> str | None:
    """A provider's reason text: cut to size, unencodable characters replaced, phones masked."""
    if not isinstance(value, str):
        return None
    cut = value[:MAX_DETAIL_LENGTH].encode("utf-8", "replace").decode("utf-8")
    return scrub_phones(cut)


def amount_in_range(value: object, provider: str, what: str = "price") -> Decimal:
    """A non-negative money amount up to :data:`MAX_AMOUNT`, rounded to the ledger's nine places."""
    if isinstance(value, str) and len(value) <= 64:
        try:
            value = Decimal(value.strip())
        except ArithmeticError as exc:
            raise CallbackMalformed(f"bad {what}", provider=provider) from exc
    if not _is_number(value):
        raise CallbackMalformed(f"bad {what}", provider=provider)
    assert isinstance(value, int | Decimal)
    amount = Decimal(value)
    if not amount.is_finite() or not 0 <= amount <= MAX_AMOUNT:
        raise CallbackMalformed(f"{what} out of range", provider=provider)
    return amount.quantize(_NANO)


def stated_price(document: Mapping[str, Any], fallback: Money) -> Money:
    """The ``price`` and ``currency`` a messenger gateway's status answer says it billed, else the
    ``fallback``."""
    price, currency = document.get("price"), document.get("currency")
    if isinstance(price, str | int) and not isinstance(price, bool) and isinstance(currency, str):
        try:
            return Money(Decimal(str(price)), currency)
        except ArithmeticError:
            pass
    return fallback


def scrub_phones(text: str) -> str:
    """Mask anything that looks like a phone number in provider-supplied text before we log or raise it."""
    return _PHONE_LIKE.sub(lambda m: mask_phone(m.group(0)), text)
