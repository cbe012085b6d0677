"""The interface every provider adapter implements, and the values it exchanges.

The gateway hands an adapter an :class:`OutboundMessage` for one recipient and
gets a :class:`SubmitReceipt` back (or a :mod:`providers.errors` exception);
the provider's callbacks are turned into :class:`DeliveryEvent` values by
:meth:`ProviderAdapter.parse_callback`.

Resolving an unknown outcome (a lost callback, a wait that ran out during an outage, a submit
whose answer never came) depends on what each provider offers:

- SMS (``GET /sms/1/logs?messageId=``), voice (``GET /voice/v1/calls/{id}``), VK through its
  business gateway (``messages.getDeliveryStatus``) and Viber (``POST /pa/get_message_status``)
  answer a status query by message id, or by our dedupe key when the submit's answer was lost
  (:class:`StatusQuery`). When a step's wait runs out without a report (on time, or found
  overdue after an outage) Kaskad asks before moving to another channel; a final status is
  recorded like the report it stands for (billed once: the ledger is unique per attempt). A
  "pending" answer is asked again ``KASKAD_STATUS_RECHECK_AFTER`` later, and once more after
  the message's TTL has passed, when the provider's answer is final.
- VK and Viber also take a TTL (:class:`MessageTtl`; VK 1 min..24 h, Viber 30 s..14 days): a
  message not delivered within it expires unbilled. Kaskad sends messenger steps with a TTL
  about equal to the step's wait, so a leg abandoned for the next step cannot arrive (and be
  billed) after the fallback.
- A provider that offers no status query (or is configured without it: ``status_query =
  false`` in ``[providers.vk]``/``[providers.viber]``, for a gateway contract without the
  lookup) is resolved by its callbacks and its TTL only: Kaskad waits until the TTL has passed
  (so it cannot deliver any more), and a wait found overdue after an outage gets
  ``KASKAD_OVERDUE_WAIT_GRACE`` once more for the reports the provider retries. The residual
  risk: a "delivered" report the provider gave up retrying while Kaskad could not take it is
  lost, and the person gets the next channel too (a duplicate, billed on both).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol, runtime_checkable

from providers.breaker import BreakerState, ProviderBreaker
from router.domain import BillingMoment, Channel, DeliveryOutcome, Money, mask_phone

DEFAULT_SIMULATOR_URL = "http://127.0.0.1:8790"
"""Where every adapter points by default: ``python -m lab.simulator`` listens here."""


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """A rendered message for one recipient on one provider.

    ``dedupe_key`` must be the same for every retry of one attempt: adapters
    pass it (or a stable value derived from it) to the provider so a repeated
    submit is never delivered twice. ``deadline`` is an aware UTC datetime after
    which the message must not be (re)submitted; ``ttl`` asks the provider to
    give up delivering after that long.
    """

    dedupe_key: str
    phone: str
    text: str
    vk_user_id: int | None = None
    viber_user_id: str | None = None
    deadline: datetime | None = None
    ttl: timedelta | None = None

    def __post_init__(self) -> None:
        if not self.dedupe_key:
            raise ValueError("dedupe_key must not be empty")
        if self.deadline is not None and self.deadline.utcoffset() is None:
            raise ValueError("deadline must be an aware datetime")
        if self.ttl is not None and self.ttl <= timedelta(0):
            raise ValueError("ttl must be positive")

    def __repr__(self) -> str:
        # The default repr would put the phone number into logs and tracebacks.
        return (
            f"OutboundMessage(dedupe_key={self.dedupe_key!r}, phone={mask_phone(self.phone)!r}, "
            f"text=<{len(self.text)} chars>, deadline={self.deadline!r}, ttl={self.ttl!r})"
        )


@dataclass(frozen=True, slots=True)
class SubmitReceipt:
    """The provider accepted a message.

    ``units`` is what the message is billed in (messages, SMS segments, or the
    estimated call minutes); ``billed_now`` is what the provider charged at
    submit (zero unless ``billing`` is ON_SUBMIT); ``expected_cost`` is what
    it will cost if it is billed later (delivery or answer).
    """

    provider: str
    channel: Channel
    provider_message_id: str
    dedupe_key: str
    units: int
    billing: BillingMoment
    billed_now: Money
    expected_cost: Money


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One thing a provider callback reported about one message.

    ``event_key`` is stable when the provider repeats the same callback, so the
    gateway can record each event exactly once. ``billed_units`` and
    ``billed_amount`` are set on the event at which the provider charges
    (VK/Viber delivered, voice answered); SMS is billed at submit.
    """

    provider: str
    channel: Channel
    provider_message_id: str
    kind: DeliveryOutcome
    occurred_at: datetime
    event_key: str
    dedupe_key: str | None = None
    billed_units: int | None = None
    billed_amount: Money | None = None
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class CallbackReply:
    """The answer a provider expects to a callback, once its events are committed.

    Providers differ: VK's Callback API wants the plain string ``ok`` (anything else and it
    sends the event again), and a confirmation string when it checks the server.
    """

    body: bytes
    content_type: str = "text/plain"
    status: int = 200


@runtime_checkable
class ProviderAdapter(Protocol):
    """What the gateway needs from one provider: submit, parse callbacks, price, close."""

    @property
    def name(self) -> str:
        """Provider name, also the last segment of its callback path."""
        ...

    @property
    def channel(self) -> Channel: ...

    @property
    def billing(self) -> BillingMoment: ...

    @property
    def max_text_length(self) -> int:
        """Longest text (in characters) the adapter will submit."""
        ...

    @property
    def callback_path(self) -> str:
        """HTTP path the gateway should serve this provider's callbacks on."""
        ...

    @property
    def breaker_state(self) -> BreakerState: ...

    @property
    def breaker(self) -> ProviderBreaker:
        """The provider's circuit breaker (shared across processes once given a store)."""
        ...

    def units_for(self, text: str) -> int:
        """How many billing units ``text`` costs (messages, segments, estimated minutes)."""
        ...

    def price_for(self, units: int) -> Money:
        """The price of ``units`` billing units under this provider's price rule."""
        ...

    async def submit(self, message: OutboundMessage) -> SubmitReceipt:
        """Submit one message, retrying transient failures with the same dedupe key."""
        ...

    def parse_callback(self, headers: Mapping[str, str], body: bytes) -> list[DeliveryEvent]:
        """Authenticate and parse one callback request; raises ``CallbackRejected``."""
        ...

    def callback_reply(self, body: bytes) -> CallbackReply | None:
        """What to answer the callback ``body`` (already authenticated by
        :meth:`parse_callback`) with; None for the gateway's own JSON acknowledgement."""
        ...

    async def aclose(self) -> None:
        """Close the adapter's HTTP session."""
        ...


@runtime_checkable
class StatusQuery(Protocol):
    """A provider whose API answers "what became of this message?" (see the module doc)."""

    @property
    def offers_status_query(self) -> bool:
        """False when this provider is configured without its status lookup."""
        ...

    async def query_status(
        self, provider_message_id: str | None, dedupe_key: str
    ) -> list[DeliveryEvent] | None:
        """The message's final status as the events its callback would have carried (same
        event keys, billing included), or None while it is pending or unknown to the provider.

        ``provider_message_id`` is None when the submit's answer was lost; the dedupe key
        then names the message. Errors are classified like submit's (``Transient``,
        ``OutcomeUnknown``, ``CircuitOpen``, ``Rejected``)."""
        ...


def status_query_of(adapter: object) -> StatusQuery | None:
    """The adapter's status query, or None where its provider offers none (Kaskad then relies
    on callbacks, the TTL and the overdue grace)."""
    if isinstance(adapter, StatusQuery) and adapter.offers_status_query:
        return adapter
    return None


@runtime_checkable
class MessageTtl(Protocol):
    """A provider that expires (and does not bill) a message not delivered within a TTL."""

    def ttl_for(self, message: OutboundMessage) -> timedelta:
        """The TTL the provider is sent for ``message``, after its own bounds are applied."""
        ...


def stable_int_from_key(dedupe_key: str, *, bits: int = 63) -> int:
    """A positive integer derived from ``dedupe_key``, the same in every process.

    Used as VK's ``random_id``; 63 bits keep collisions negligible and the value
    a valid signed 64-bit integer.
    """
    digest = hashlib.sha256(dedupe_key.encode("utf-8")).digest()
    return (int.from_bytes(digest[:8], "big") >> (64 - bits)) or 1


def money(amount: str | Decimal, currency: str) -> Money:
    """Build Money from a decimal string without ever passing through float."""
    return Money(Decimal(amount), currency)
