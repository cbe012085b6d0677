"""SMS segment counting at the 160/161, 153, 70/71 and 67 boundaries, with extension chars and emoji."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from providers.sms import SmsAdapter
from providers.sms_segments import GSM7_BASIC, GSM7_EXTENSION, SmsEncoding, count_segments

BASIC = sorted(GSM7_BASIC)
EXTENSION = sorted(GSM7_EXTENSION)
CYRILLIC = [chr(c) for c in range(0x0410, 0x0450)]
EMOJI = ["😀", "🚚", "📦", "👍"]

basic_text = st.text(alphabet=st.sampled_from(BASIC))
gsm_text = st.text(alphabet=st.sampled_from(BASIC + EXTENSION))
bmp_non_gsm_text = st.text(alphabet=st.sampled_from(CYRILLIC + BASIC), min_size=1).filter(
    lambda t: any(ch in CYRILLIC for ch in t)
)


def expected(units: int, single: int, multi: int) -> int:
    return 1 if units <= single else math.ceil(units / multi)


@given(st.integers(min_value=0, max_value=1000), st.sampled_from(BASIC))
def test_gsm7_basic_boundaries(n: int, ch: str) -> None:
    count = count_segments(ch * n)
    assert count.encoding is SmsEncoding.GSM7
    assert count.units == n
    assert count.segments == max(1, expected(n, 160, 153))


@given(basic_text)
def test_gsm7_basic_any_text(text: str) -> None:
    assert count_segments(text).segments == max(1, expected(len(text), 160, 153))


@given(st.integers(min_value=0, max_value=159), st.sampled_from(EXTENSION), st.sampled_from(BASIC))
def test_extension_chars_count_twice(n: int, ext: str, ch: str) -> None:
    count = count_segments(ch * n + ext)
    assert count.units == n + 2
    assert count.segments == (1 if n + 2 <= 160 else 2)


@given(gsm_text)
def test_extension_chars_are_never_split(text: str) -> None:
    count = count_segments(text)
    units = sum(2 if ch in GSM7_EXTENSION else 1 for ch in text)
    assert count.units == units
    if units <= 160:
        assert count.segments == 1
    else:
        # Never fewer than the septets need, and at most one extra per escape pushed to the next segment.
        assert math.ceil(units / 153) <= count.segments <= math.ceil(units / 152)


@given(st.integers(min_value=1, max_value=600), st.sampled_from(CYRILLIC))
def test_ucs2_boundaries(n: int, ch: str) -> None:
    count = count_segments(ch * n)
    assert count.encoding is SmsEncoding.UCS2
    assert count.segments == expected(n, 70, 67)


@given(bmp_non_gsm_text)
def test_one_non_gsm_char_makes_the_whole_text_ucs2(text: str) -> None:
    count = count_segments(text)
    assert count.encoding is SmsEncoding.UCS2
    assert count.units == len(text)
    assert count.segments == expected(len(text), 70, 67)


@given(st.integers(min_value=1, max_value=200), st.sampled_from(EMOJI))
def test_emoji_are_two_code_units_and_never_split(n: int, emoji: str) -> None:
    count = count_segments(emoji * n)
    assert count.units == 2 * n
    # 67 is odd, so a split segment holds 33 emoji (66 units).
    assert count.segments == (1 if 2 * n <= 70 else math.ceil(n / 33))


@given(gsm_text | bmp_non_gsm_text, st.sampled_from(BASIC + EXTENSION + CYRILLIC + EMOJI))
def test_appending_never_reduces_segments(text: str, ch: str) -> None:
    assert count_segments(text + ch).segments >= count_segments(text).segments


def test_named_boundaries() -> None:
    assert count_segments("a" * 160).segments == 1
    assert count_segments("a" * 161).segments == 2
    assert count_segments("a" * 306).segments == 2
    assert count_segments("a" * 307).segments == 3
    assert count_segments("a" * 159 + "€").segments == 2
    assert count_segments("a" * 158 + "€").segments == 1
    # 152 septets + an escape pair cannot share the first 153-septet segment.
    assert count_segments("a" * 152 + "{" + "a" * 10).segments == 2
    assert count_segments("a" * 152 + "{" + "a" * 152).segments == 3
    assert count_segments("д" * 70).segments == 1
    assert count_segments("д" * 71).segments == 2
    assert count_segments("д" * 134).segments == 2
    assert count_segments("д" * 135).segments == 3
    assert count_segments("a" * 69 + "д").segments == 1
    assert count_segments("😀" * 35).segments == 1
    assert count_segments("😀" * 36).segments == 2
    assert count_segments("").segments == 1
    assert SmsAdapter().units_for("Ваш заказ 1234 доставлен") == 1


@given(st.text(alphabet=st.sampled_from(BASIC + EXTENSION + CYRILLIC + EMOJI)))
def test_the_even_fill_shortcut_agrees_with_packing_character_by_character(text: str) -> None:
    from providers.sms_segments import _pack, _widths

    counted = count_segments(text)
    widths = _widths(text, counted.encoding)
    single = 160 if counted.encoding is SmsEncoding.GSM7 else 70
    multi = 153 if counted.encoding is SmsEncoding.GSM7 else 67
    assert counted.units == sum(widths)
    assert counted.segments == (1 if counted.units <= single else _pack(widths, multi))
