"""Exact SMS segment counting (3GPP TS 23.038 / 23.040).

A text that uses only the GSM 03.38 default alphabet is sent as GSM-7: 160
septets fit one SMS; a split message carries a 7-septet concatenation header,
leaving 153 septets per segment. Characters of the extension table (``^ { } \\
[ ~ ] | €`` and form feed) take two septets (escape + char) and are never split
across segments. Any other character makes the whole message UCS-2: 70 UTF-16
code units in one SMS, 67 per segment when split; a character outside the BMP
(most emoji) is a surrogate pair of two code units that is never split either.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")
GSM7_ALPHABET = GSM7_BASIC | GSM7_EXTENSION

GSM7_SINGLE_SEGMENT = 160
GSM7_MULTI_SEGMENT = 153
UCS2_SINGLE_SEGMENT = 70
UCS2_MULTI_SEGMENT = 67


class SmsEncoding(enum.StrEnum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"


@dataclass(frozen=True, slots=True)
class SegmentCount:
    """How a text is sent as SMS: its encoding, length in encoding units, and segments billed."""

    encoding: SmsEncoding
    units: int
    segments: int


def is_gsm7(text: str) -> bool:
    """True if every character is in the GSM-7 default alphabet or its extension table."""
    return GSM7_ALPHABET.issuperset(text)


def _widths(text: str, encoding: SmsEncoding) -> list[int]:
    if encoding is SmsEncoding.GSM7:
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def _pack(widths: list[int], per_segment: int) -> int:
    """Fill segments greedily without splitting a character; greedy is optimal here."""
    segments = 1
    used = 0
    for width in widths:
        if used + width > per_segment:
            segments += 1
            used = 0
        used += width
    return segments


def count_segments(text: str) -> SegmentCount:
    """Count the SMS segments ``text`` is billed as; an empty text is still one SMS."""
    gsm7 = is_gsm7(text)
    encoding, single, multi = (
        (SmsEncoding.GSM7, GSM7_SINGLE_SEGMENT, GSM7_MULTI_SEGMENT)
        if gsm7
        else (SmsEncoding.UCS2, UCS2_SINGLE_SEGMENT, UCS2_MULTI_SEGMENT)
    )
    # Most texts have no two-unit character: then every unit is a character and segments
    # fill evenly. This path runs on every accept (planning and the SMS baseline).
    if GSM7_EXTENSION.isdisjoint(text) if gsm7 else max(text, default="\0") <= "\uffff":
        units = len(text)
        return SegmentCount(encoding, units, 1 if units <= single else -(-units // multi))
    widths = _widths(text, encoding)
    units = sum(widths)
    segments = 1 if units <= single else _pack(widths, multi)
    return SegmentCount(encoding=encoding, units=units, segments=segments)
