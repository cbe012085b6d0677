"""What each provider charges, per channel: the billed unit, the price, and when it bills.

The gateway parses TOML or environment variables into a plain mapping and hands it to
:meth:`PriceBook.from_mapping`; every bad entry raises :class:`ValueError` naming the
entry, so a typo in a contract price stops the gateway at start, not at the first bill.

Mapping shape (the TOML ``[prices]`` table maps onto it one to one)::

    {
        "currency": "RUB",                       # optional, default RUB
        "vk": {                                  # a channel
            "vk": {                              # a provider on that channel
                "unit": "message",               # message | segment | started_minute
                "price": "0.35",                 # per unit; str, int or Decimal
                "bills": "on_delivery",          # optional: on_submit | on_delivery | on_answer
                "per_call_fee": "0",             # optional, billed with the units
            },
        },
    }

Providers of one channel are listed in preference order: the first is the channel's
default, later ones are used when the earlier ones' circuit breakers are open.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType

from router.domain import BilledUnit, BillingMoment, Channel, Money

DEFAULT_CURRENCY = "RUB"


# Used only when an entry leaves "bills" out: messenger gateways bill delivered
# messages, SMS aggregators bill on submit, voice robots bill answered calls.
_DEFAULT_BILLING: Mapping[Channel, BillingMoment] = MappingProxyType(
    {
        Channel.VK: BillingMoment.ON_DELIVERY,
        Channel.VIBER: BillingMoment.ON_DELIVERY,
        Channel.SMS: BillingMoment.ON_SUBMIT,
        Channel.VOICE: BillingMoment.ON_ANSWER,
    }
)

_ENTRY_KEYS = frozenset({"unit", "price", "bills", "per_call_fee"})


@dataclass(frozen=True, slots=True)
class ProviderPrice:
    """The price of one provider on one channel."""

    channel: Channel
    provider: str
    unit: BilledUnit
    unit_price: Money
    bills: BillingMoment
    per_call_fee: Money | None = None

    def __post_init__(self) -> None:
        if not self.provider:
            raise ValueError(f"prices.{self.channel}: provider name must not be empty")
        if self.unit_price.amount < 0:
            raise ValueError(f"prices.{self.channel}.{self.provider}.price must not be negative")
        if self.per_call_fee is not None:
            if self.per_call_fee.currency != self.unit_price.currency:
                raise ValueError(
                    f"prices.{self.channel}.{self.provider}.per_call_fee must be in "
                    f"{self.unit_price.currency}, got {self.per_call_fee.currency}"
                )
            if self.per_call_fee.amount < 0:
                raise ValueError(f"prices.{self.channel}.{self.provider}.per_call_fee must not be negative")

    @property
    def currency(self) -> str:
        return self.unit_price.currency

    def cost(self, units: int) -> Money:
        """What one billed attempt of ``units`` units costs (units times price, plus the fee)."""
        if units < 1:
            raise ValueError(f"billed units must be at least 1, got {units}")
        total = self.unit_price * units
        if self.per_call_fee is not None:
            total = total + self.per_call_fee
        return total

    def to_mapping(self) -> dict[str, str]:
        entry = {"unit": self.unit.value, "price": str(self.unit_price.amount), "bills": self.bills.value}
        if self.per_call_fee is not None:
            entry["per_call_fee"] = str(self.per_call_fee.amount)
        return entry


@dataclass(frozen=True, slots=True)
class PriceBook:
    """Every provider's price, by channel, in one currency."""

    currency: str
    providers: Mapping[Channel, tuple[ProviderPrice, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for channel, prices in self.providers.items():
            names = [p.provider for p in prices]
            if len(set(names)) != len(names):
                raise ValueError(f"prices.{channel}: provider names repeat: {names}")
            for price in prices:
                if price.channel is not channel:
                    raise ValueError(f"prices.{channel}.{price.provider} is priced for {price.channel}")
                if price.currency != self.currency:
                    raise ValueError(
                        f"prices.{channel}.{price.provider} is in {price.currency}, "
                        f"the price book is in {self.currency}"
                    )
        # Freeze the mapping so a shared PriceBook cannot be changed under a planner.
        object.__setattr__(self, "providers", MappingProxyType(dict(self.providers)))

    @classmethod
    def default(cls) -> PriceBook:
        """Illustrative RUB prices: VK 0.35 and Viber 1.20 per delivered message, SMS 4.50 per
        segment on submit, voice 2.50 per started minute when answered."""
        rub = DEFAULT_CURRENCY

        def one(channel: Channel, unit: BilledUnit, price: str, bills: BillingMoment) -> tuple[ProviderPrice]:
            return (ProviderPrice(channel, channel.value, unit, Money(Decimal(price), rub), bills),)

        return cls(
            currency=rub,
            providers={
                Channel.VK: one(Channel.VK, BilledUnit.MESSAGE, "0.35", BillingMoment.ON_DELIVERY),
                Channel.VIBER: one(Channel.VIBER, BilledUnit.MESSAGE, "1.20", BillingMoment.ON_DELIVERY),
                Channel.SMS: one(Channel.SMS, BilledUnit.SEGMENT, "4.50", BillingMoment.ON_SUBMIT),
                Channel.VOICE: one(Channel.VOICE, BilledUnit.STARTED_MINUTE, "2.50", BillingMoment.ON_ANSWER),
            },
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> PriceBook:
        """Build a price book from plain data (see the module docstring for the shape).

        Raises :class:`ValueError` naming the offending entry, e.g.
        ``prices.sms.smsc.price: 'abc' is not a decimal number``.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"prices must be a table, got {type(data).__name__}")
        currency_value = data.get("currency", DEFAULT_CURRENCY)
        if not isinstance(currency_value, str):
            raise ValueError(f"prices.currency must be a string, got {currency_value!r}")
        currency = currency_value
        try:
            Money.zero(currency)
        except ValueError as exc:
            raise ValueError(f"prices.currency: {exc}") from exc

        providers: dict[Channel, tuple[ProviderPrice, ...]] = {}
        for key, table in data.items():
            if key == "currency":
                continue
            channel = _parse_channel(key)
            if not isinstance(table, Mapping) or not table:
                raise ValueError(f"prices.{key} must be a non-empty table of providers, got {table!r}")
            providers[channel] = tuple(
                _parse_entry(channel, str(name), entry, currency) for name, entry in table.items()
            )
        return cls(currency=currency, providers=providers)

    def to_mapping(self) -> dict[str, object]:
        """The inverse of :meth:`from_mapping`, with prices as strings."""
        out: dict[str, object] = {"currency": self.currency}
        for channel, prices in self.providers.items():
            out[channel.value] = {p.provider: p.to_mapping() for p in prices}
        return out

    def for_channel(self, channel: Channel) -> tuple[ProviderPrice, ...]:
        """The channel's providers in preference order; empty when the channel has no price."""
        return self.providers.get(channel, ())

    def price(self, channel: Channel, provider: str) -> ProviderPrice:
        """One provider's price; :class:`KeyError` when the book does not list it."""
        for entry in self.for_channel(channel):
            if entry.provider == provider:
                return entry
        raise KeyError(f"no price for provider {provider!r} on channel {channel}")


def _parse_channel(key: object) -> Channel:
    try:
        return Channel(str(key))
    except ValueError:
        known = ", ".join(c.value for c in Channel)
        raise ValueError(f"prices.{key}: unknown channel (known: {known}, and 'currency')") from None


def _parse_entry(channel: Channel, provider: str, entry: object, currency: str) -> ProviderPrice:
    where = f"prices.{channel}.{provider}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a table with unit and price, got {entry!r}")
    unknown = set(map(str, entry)) - _ENTRY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_ENTRY_KEYS)})")
    if "unit" not in entry:
        raise ValueError(f"{where}.unit is missing (one of: {', '.join(u.value for u in BilledUnit)})")
    if "price" not in entry:
        raise ValueError(f"{where}.price is missing")
    try:
        unit = BilledUnit(str(entry["unit"]))
    except ValueError:
        allowed = ", ".join(u.value for u in BilledUnit)
        raise ValueError(f"{where}.unit: {entry['unit']!r} is not one of {allowed}") from None
    bills_value = entry.get("bills")
    if bills_value is None:
        bills = _DEFAULT_BILLING[channel]
    else:
        try:
            bills = BillingMoment(str(bills_value))
        except ValueError:
            allowed = ", ".join(b.value for b in BillingMoment)
            raise ValueError(f"{where}.bills: {bills_value!r} is not one of {allowed}") from None
    price = _parse_amount(f"{where}.price", entry["price"])
    fee_value = entry.get("per_call_fee")
    fee = None if fee_value is None else Money(_parse_amount(f"{where}.per_call_fee", fee_value), currency)
    return ProviderPrice(
        channel=channel,
        provider=provider,
        unit=unit,
        unit_price=Money(price, currency),
        bills=bills,
        per_call_fee=fee,
    )


def _parse_amount(where: str, value: object) -> Decimal:
    # bool is an int subclass; "price = true" is a typo, not one rouble.
    if isinstance(value, bool):
        raise ValueError(f"{where}: {value!r} is not a decimal number")
    if isinstance(value, float):
        # TOML turns `price = 0.35` into a float; its shortest repr is what the
        # operator wrote, so go through str rather than the binary value.
        value = str(value)
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int | str):
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            raise ValueError(f"{where}: {value!r} is not a decimal number") from None
    else:
        raise ValueError(f"{where}: {value!r} is not a decimal number")
    if not amount.is_finite():
        raise ValueError(f"{where}: {value!r} is not a finite amount")
    if amount < 0:
        raise ValueError(f"{where}: {value!r} must not be negative")
    return amount
