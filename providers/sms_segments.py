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
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text)


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
    encoding = SmsEncoding.GSM7 if is_gsm7(text) else SmsEncoding.UCS2
    widths = _widths(text, encoding)
    units = sum(widths)
    single, multi = (
        (GSM7_SINGLE_SEGMENT, GSM7_MULTI_SEGMENT)
        if encoding is SmsEncoding.GSM7
        else (UCS2_SINGLE_SEGMENT, UCS2_MULTI_SEGMENT)
    )
    segments = 1 if units <= single else _pack(widths, multi)
    return SegmentCount(encoding=encoding, units=units, segments=segments)
