"""The channels Kaskad sends on, one entry each: a channel is added by adding an entry.

An entry names the adapter class (which carries the provider's name, its channel and
when it bills), the adapter's settings type and which of its fields are secrets, the
billed unit and the configured price, the kind of address the channel needs, and how
people see it (label, colour). The lists the gateway keeps per channel are derived from
:data:`CHANNELS`, and so is the router's price book (:func:`price_book`).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from providers.base import ProviderAdapter
from providers.sms import SmsAdapter, SmsSettings
from providers.viber import ViberAdapter, ViberSettings
from providers.vk import VkAdapter, VkSettings
from providers.voice import VoiceAdapter, VoiceSettings
from router.domain import BilledUnit, BillingMoment, Channel, Money
from router.price_book import PriceBook, ProviderPrice


class AddressKind(enum.StrEnum):
    """What a channel needs to know of the person to reach them."""

    PHONE = "phone"
    VK_USER_ID = "vk_user_id"
    VIBER_USER_ID = "viber_user_id"


@dataclass(frozen=True, slots=True)
class ChannelEntry:
    """Everything about one channel that is not the adapter's wire protocol."""

    adapter: type[Any]
    """The adapter class: its ``name``, ``channel`` and ``billing`` are the provider's."""
    settings_type: type[Any]
    secrets: tuple[str, ...]
    """Settings fields that authenticate Kaskad to the provider or the provider to Kaskad."""
    unit: BilledUnit
    unit_price: Callable[[Any], Decimal]
    """The configured price of one unit, read from the adapter's settings."""
    address: AddressKind
    label: str
    colour: str
    per_call_fee: Callable[[Any], Decimal] | None = None

    @property
    def provider(self) -> str:
        return str(self.adapter.name)

    @property
    def channel(self) -> Channel:
        return Channel(self.adapter.channel)

    @property
    def bills(self) -> BillingMoment:
        return BillingMoment(self.adapter.billing)

    def build(self, settings: Any, clock: Callable[[], float] = time.monotonic) -> ProviderAdapter:
        adapter: ProviderAdapter = self.adapter(settings, clock=clock)
        return adapter

    def price(self, settings: Any) -> ProviderPrice:
        """The configured price as the router's price book holds it."""
        currency = str(settings.currency)
        fee = self.per_call_fee(settings) if self.per_call_fee is not None else Decimal(0)
        return ProviderPrice(
            channel=self.channel,
            provider=self.provider,
            unit=self.unit,
            unit_price=Money(self.unit_price(settings), currency),
            bills=self.bills,
            per_call_fee=Money(fee, currency) if fee else None,
        )


CHANNELS: Mapping[Channel, ChannelEntry] = MappingProxyType(
    {
        entry.channel: entry
        for entry in (
            ChannelEntry(
                adapter=VkAdapter,
                settings_type=VkSettings,
                secrets=("access_token", "callback_secret"),
                unit=BilledUnit.MESSAGE,
                unit_price=lambda s: s.price_per_delivered,
                address=AddressKind.VK_USER_ID,
                label="VK",
                colour="#3f72af",
            ),
            ChannelEntry(
                adapter=ViberAdapter,
                settings_type=ViberSettings,
                secrets=("auth_token",),
                unit=BilledUnit.MESSAGE,
                unit_price=lambda s: s.price_per_delivered,
                address=AddressKind.VIBER_USER_ID,
                label="Viber",
                colour="#7b5cd6",
            ),
            ChannelEntry(
                adapter=SmsAdapter,
                settings_type=SmsSettings,
                secrets=("api_key", "callback_secret"),
                unit=BilledUnit.SEGMENT,
                unit_price=lambda s: s.price_per_segment,
                address=AddressKind.PHONE,
                label="SMS",
                colour="#e09f3e",
            ),
            ChannelEntry(
                adapter=VoiceAdapter,
                settings_type=VoiceSettings,
                secrets=("api_token", "callback_secret"),
                unit=BilledUnit.STARTED_MINUTE,
                unit_price=lambda s: s.price_per_minute,
                per_call_fee=lambda s: s.per_call_fee,
                address=AddressKind.PHONE,
                label="Voice robot",
                colour="#c0504d",
            ),
        )
    }
)
"""Every channel, in the order people see them."""

BY_PROVIDER: Mapping[str, ChannelEntry] = MappingProxyType({e.provider: e for e in CHANNELS.values()})


def price_book(settings_by_provider: Mapping[str, Any], currency: str) -> PriceBook:
    """The router's price book from the providers' configured prices (what the adapters bill)."""
    providers = {
        entry.channel: (entry.price(settings_by_provider[entry.provider]),) for entry in CHANNELS.values()
    }
    return PriceBook(currency=currency, providers=providers)
