"""Domain types shared by the router, the provider adapters and the gateway.

The vocabulary lives here once: channels, when providers bill and in what unit, and what
happened to an attempt (a provider's report is a :class:`DeliveryOutcome`).

Money is always :class:`decimal.Decimal` with a currency code; never a float.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import NewType
from uuid import UUID

NotificationId = NewType("NotificationId", UUID)
ClientId = NewType("ClientId", UUID)


class Channel(enum.StrEnum):
    """A way to reach a person; the values are stored in PostgreSQL."""

    VK = "vk"
    VIBER = "viber"
    SMS = "sms"
    VOICE = "voice"


class AckPolicy(enum.StrEnum):
    """When the cascade counts the person as reached."""

    DELIVERED = "delivered"
    READ = "read"


class NotificationState(enum.StrEnum):
    """Where a notification is in its life; the values are stored in PostgreSQL."""

    ACCEPTED = "accepted"
    IN_PROGRESS = "in_progress"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self not in (NotificationState.ACCEPTED, NotificationState.IN_PROGRESS)


class BilledUnit(enum.StrEnum):
    """What a provider counts when it bills."""

    MESSAGE = "message"
    SEGMENT = "segment"
    STARTED_MINUTE = "started_minute"


class BillingMoment(enum.StrEnum):
    """When a provider charges for an attempt."""

    ON_SUBMIT = "on_submit"
    ON_DELIVERY = "on_delivery"
    ON_ANSWER = "on_answer"

    @property
    def bills_only_on_success(self) -> bool:
        """True when a failed attempt costs nothing."""
        return self is not BillingMoment.ON_SUBMIT


class DeliveryOutcome(enum.StrEnum):
    """What happened to one attempt: what providers report, plus ``unreachable`` (a submit
    refused because of the recipient) and ``timed_out`` (no report within the wait)."""

    DELIVERED = "delivered"
    READ = "read"
    ANSWERED = "answered"
    FAILED = "failed"
    EXPIRED = "expired"
    UNDELIVERABLE = "undeliverable"
    REJECTED = "rejected"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    UNREACHABLE = "unreachable"
    TIMED_OUT = "timed_out"
    """No report within the step's wait: the cascade moved on (a late report may follow)."""

    @property
    def reached_person(self) -> bool:
        """The message got to the person (or the robot's call was picked up)."""
        return self in (DeliveryOutcome.DELIVERED, DeliveryOutcome.READ, DeliveryOutcome.ANSWERED)

    @property
    def says_about_recipient(self) -> bool:
        """Whether the outcome is evidence about the person. A rejection is about the
        message (too long, bad content), so it teaches nothing about reaching them."""
        return self is not DeliveryOutcome.REJECTED


@dataclass(frozen=True, slots=True)
class Money:
    """An exact amount in one currency (ISO 4217 code)."""

    amount: Decimal
    currency: str

    def __post_init__(self) -> None:
        if not isinstance(self.amount, Decimal):
            raise TypeError(f"Money amount must be a Decimal, not {type(self.amount).__name__}")
        if len(self.currency) != 3 or not self.currency.isalpha() or not self.currency.isupper():
            raise ValueError(f"currency must be a three-letter ISO 4217 code, got {self.currency!r}")

    @classmethod
    def zero(cls, currency: str) -> Money:
        return cls(Decimal(0), currency)

    def _same_currency(self, other: Money) -> None:
        if other.currency != self.currency:
            raise ValueError(f"cannot combine {self.currency} with {other.currency}")

    def __add__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount + other.amount, self.currency)

    def __sub__(self, other: Money) -> Money:
        self._same_currency(other)
        return Money(self.amount - other.amount, self.currency)

    def __mul__(self, factor: Decimal | int) -> Money:
        if isinstance(factor, float):
            raise TypeError("multiply Money by a Decimal or an int, never a float")
        return Money(self.amount * factor, self.currency)

    def __lt__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount < other.amount

    def __le__(self, other: Money) -> bool:
        self._same_currency(other)
        return self.amount <= other.amount

    def __str__(self) -> str:
        return f"{self.amount} {self.currency}"


def mask_phone(phone: str) -> str:
    """Mask a phone number for logs and messages: ``+79161234567`` -> ``+7*******67``.

    Keeps the leading ``+`` and country digit and the last two digits, so an
    operator can tell numbers apart without learning them.
    """
    digits = phone[1:] if phone.startswith("+") else phone
    if len(digits) <= 4:
        return "+" + "*" * len(digits) if phone.startswith("+") else "*" * len(digits)
    prefix = "+" if phone.startswith("+") else ""
    return f"{prefix}{digits[0]}{'*' * (len(digits) - 3)}{digits[-2:]}"
