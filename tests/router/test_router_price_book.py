"""The price book: defaults, parsing plain mappings, and the errors bad entries give."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from router.domain import BilledUnit, BillingMoment, Channel, Money
from router.price_book import PriceBook, ProviderPrice


def rub(amount: str) -> Money:
    return Money(Decimal(amount), "RUB")


def test_default_prices_match_the_published_rates() -> None:
    book = PriceBook.default()

    assert book.currency == "RUB"
    vk, viber, sms, voice = (
        book.for_channel(c)[0] for c in (Channel.VK, Channel.VIBER, Channel.SMS, Channel.VOICE)
    )
    assert (vk.provider, vk.unit, vk.unit_price, vk.bills) == (
        "vk",
        BilledUnit.MESSAGE,
        rub("0.35"),
        BillingMoment.ON_DELIVERY,
    )
    assert (viber.provider, viber.unit_price, viber.bills) == (
        "viber",
        rub("1.20"),
        BillingMoment.ON_DELIVERY,
    )
    assert (sms.provider, sms.unit, sms.unit_price, sms.bills) == (
        "sms",
        BilledUnit.SEGMENT,
        rub("4.50"),
        BillingMoment.ON_SUBMIT,
    )
    assert (voice.provider, voice.unit, voice.unit_price, voice.bills) == (
        "voice",
        BilledUnit.STARTED_MINUTE,
        rub("2.50"),
        BillingMoment.ON_ANSWER,
    )


def test_cost_is_units_times_price_plus_the_fee() -> None:
    price = ProviderPrice(
        Channel.VOICE, "robot", BilledUnit.STARTED_MINUTE, rub("2.50"), BillingMoment.ON_ANSWER, rub("0.40")
    )

    assert price.cost(3) == rub("7.90")
    assert PriceBook.default().price(Channel.SMS, "sms").cost(4) == rub("18.00")
    with pytest.raises(ValueError, match="at least 1"):
        price.cost(0)


def test_from_mapping_reads_a_toml_shaped_table() -> None:
    book = PriceBook.from_mapping(
        {
            "currency": "RUB",
            "sms": {
                "smsc": {"unit": "segment", "price": "3.90"},
                "backup": {"unit": "segment", "price": 5, "bills": "on_delivery"},
            },
            "voice": {"robot": {"unit": "started_minute", "price": 0.35, "per_call_fee": "0.10"}},
        }
    )

    smsc, backup = book.for_channel(Channel.SMS)
    assert (smsc.provider, smsc.unit_price, smsc.bills) == ("smsc", rub("3.90"), BillingMoment.ON_SUBMIT)
    assert (backup.provider, backup.unit_price, backup.bills) == (
        "backup",
        rub("5"),
        BillingMoment.ON_DELIVERY,
    )
    robot = book.price(Channel.VOICE, "robot")
    # A TOML float goes through its text, never its binary value.
    assert robot.unit_price.amount == Decimal("0.35")
    assert robot.per_call_fee == rub("0.10")
    assert robot.bills is BillingMoment.ON_ANSWER
    assert book.for_channel(Channel.VK) == ()


def test_round_trip_through_to_mapping() -> None:
    book = PriceBook.default()
    assert PriceBook.from_mapping(book.to_mapping()) == book


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"telegram": {"tg": {"unit": "message", "price": "1"}}}, r"prices\.telegram: unknown channel"),
        ({"sms": {"smsc": {"price": "1"}}}, r"prices\.sms\.smsc\.unit is missing"),
        ({"sms": {"smsc": {"unit": "segment"}}}, r"prices\.sms\.smsc\.price is missing"),
        (
            {"sms": {"smsc": {"unit": "letter", "price": "1"}}},
            r"prices\.sms\.smsc\.unit: 'letter' is not one of",
        ),
        (
            {"sms": {"smsc": {"unit": "segment", "price": "abc"}}},
            r"prices\.sms\.smsc\.price: 'abc' is not a decimal",
        ),
        (
            {"sms": {"smsc": {"unit": "segment", "price": "-1"}}},
            r"prices\.sms\.smsc\.price: '-1' must not be neg",
        ),
        (
            {"sms": {"smsc": {"unit": "segment", "price": "NaN"}}},
            r"prices\.sms\.smsc\.price: 'NaN' is not a finite",
        ),
        (
            {"sms": {"smsc": {"unit": "segment", "price": True}}},
            r"prices\.sms\.smsc\.price: True is not a decimal",
        ),
        (
            {"sms": {"smsc": {"unit": "segment", "price": "1", "bills": "later"}}},
            r"\.bills: 'later' is not one of",
        ),
        ({"sms": {"smsc": {"unit": "segment", "price": "1", "colour": "red"}}}, r"unknown keys \['colour'\]"),
        (
            {"sms": {"smsc": {"unit": "segment", "price": "1", "per_call_fee": "x"}}},
            r"\.per_call_fee: 'x' is not",
        ),
        ({"sms": {}}, r"prices\.sms must be a non-empty table"),
        ({"sms": {"smsc": "4.50"}}, r"prices\.sms\.smsc must be a table"),
        ({"currency": "rubles"}, r"prices\.currency: currency must be a three-letter"),
        ({"currency": 643}, r"prices\.currency must be a string"),
    ],
)
def test_bad_entries_name_what_is_wrong(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PriceBook.from_mapping(data)


def test_price_book_refuses_mixed_currencies() -> None:
    with pytest.raises(ValueError, match="is in EUR, the price book is in RUB"):
        PriceBook(
            "RUB",
            {
                Channel.SMS: (
                    ProviderPrice(
                        Channel.SMS,
                        "sms",
                        BilledUnit.SEGMENT,
                        Money(Decimal("0.05"), "EUR"),
                        BillingMoment.ON_SUBMIT,
                    ),
                )
            },
        )


def test_unknown_provider_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="no price for provider 'nope'"):
        PriceBook.default().price(Channel.SMS, "nope")
