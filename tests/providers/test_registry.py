"""The channel registry: one entry per channel, and the price book it derives from configuration."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from providers.adapters import ProviderSettings, build_adapters
from providers.registry import CHANNELS, price_book
from router.domain import Channel


def test_every_channel_has_one_entry_agreeing_with_its_adapter() -> None:
    assert set(CHANNELS) == set(Channel)
    adapters = build_adapters()
    for channel, entry in CHANNELS.items():
        adapter = adapters[channel]
        assert (adapter.name, adapter.channel, adapter.billing) == (entry.provider, channel, entry.bills)
        assert entry.label and entry.colour.startswith("#")
        assert all(hasattr(entry.settings_type(), key) for key in entry.secrets)


@pytest.mark.parametrize("channel", list(Channel))
def test_the_price_book_bills_what_the_adapter_bills(channel: Channel) -> None:
    # Non-default prices and a per-call fee: the book is read from configuration, not probed.
    settings = ProviderSettings(
        vk=replace(ProviderSettings().vk, price_per_delivered=Decimal("0.41")),
        viber=replace(ProviderSettings().viber, price_per_delivered=Decimal("1.05")),
        sms=replace(ProviderSettings().sms, price_per_segment=Decimal("3.95")),
        voice=replace(
            ProviderSettings().voice, price_per_minute=Decimal("2.10"), per_call_fee=Decimal("0.30")
        ),
    )
    book = price_book({e.provider: settings.of(e.provider) for e in CHANNELS.values()}, "RUB")
    adapter = build_adapters(settings)[channel]
    [price] = book.providers[channel]
    for units in (1, 2, 5):
        assert price.cost(units) == adapter.price_for(units)
    assert price.bills is adapter.billing


def test_a_price_in_another_currency_is_refused() -> None:
    settings = ProviderSettings(sms=replace(ProviderSettings().sms, currency="EUR"))
    with pytest.raises(ValueError, match="EUR"):
        price_book({e.provider: settings.of(e.provider) for e in CHANNELS.values()}, "RUB")
