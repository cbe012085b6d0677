"""Every adapter against the simulator over real HTTP: send, delivery event, retries, dedupe."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from provider_harness import (
    FAST_TRANSPORT,
    PROVIDER_NAMES,
    AdapterFactory,
    CallbackSink,
    SimulatorClient,
    StartSimulator,
    reachable_phone,
)

from lab.simulator import FaultSettings
from providers.base import OutboundMessage, ProviderAdapter
from providers.errors import OutcomeUnknown, Transient
from providers.transport import TransportSettings
from providers.vk import vk_random_id
from router.domain import BillingMoment, DeliveryOutcome, Money

REACHED = {
    "vk": DeliveryOutcome.DELIVERED,
    "viber": DeliveryOutcome.DELIVERED,
    "sms": DeliveryOutcome.DELIVERED,
}


def message(provider: str, key: str, text: str = "Заказ 42 доставлен") -> OutboundMessage:
    return OutboundMessage(dedupe_key=key, phone=reachable_phone(provider), text=text)


def provider_dedupe_key(provider: str, dedupe_key: str) -> str:
    """The key the simulator's delivery log records for an attempt."""
    return str(vk_random_id(dedupe_key)) if provider == "vk" else dedupe_key


class RecordingSleep:
    """Backoff sleep that records what the retry policy asked for and does not wait."""

    def __init__(self) -> None:
        self.requested: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.requested.append(seconds)


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
async def test_send_is_delivered_and_reported_once(
    provider: str,
    simulator_and_client: tuple[str, SimulatorClient],
    adapters: AdapterFactory,
    callback_sink: CallbackSink,
) -> None:
    base_url, sim = simulator_and_client
    adapter: ProviderAdapter = adapters.make(provider, base_url)
    msg = message(provider, f"{provider}-ok-1")

    receipt = await adapter.submit(msg)
    await sim.settle()

    assert receipt.provider == provider
    assert receipt.dedupe_key == msg.dedupe_key
    assert receipt.provider_message_id
    deliveries = [d for d in await sim.deliveries() if d["provider"] == provider]
    assert [d["dedupe_key"] for d in deliveries] == [provider_dedupe_key(provider, msg.dedupe_key)]
    events = [
        e
        for e in callback_sink.unique_events(provider)
        if e.provider_message_id == receipt.provider_message_id
    ]
    kinds = {e.kind for e in events}
    expected = DeliveryOutcome.ANSWERED if provider == "voice" else DeliveryOutcome.DELIVERED
    assert expected in kinds
    reached = next(e for e in events if e.kind is expected)
    assert reached.dedupe_key == msg.dedupe_key
    assert reached.occurred_at.tzinfo is not None
    assert callback_sink.refused == []


async def test_receipts_and_events_carry_the_price_rule(
    simulator_and_client: tuple[str, SimulatorClient],
    adapters: AdapterFactory,
    callback_sink: CallbackSink,
) -> None:
    base_url, sim = simulator_and_client
    sms = adapters.make("sms", base_url)
    vk = adapters.make("vk", base_url)
    voice = adapters.make("voice", base_url)

    sms_receipt = await sms.submit(message("sms", "price-sms", text="Привет! " * 10))  # 80 UCS-2 chars
    vk_receipt = await vk.submit(message("vk", "price-vk"))
    voice_receipt = await voice.submit(message("voice", "price-voice"))
    await sim.settle()

    assert sms_receipt.billing is BillingMoment.ON_SUBMIT
    assert sms_receipt.units == 2
    assert sms_receipt.billed_now == Money(Decimal("9.00"), "RUB")
    assert vk_receipt.billing is BillingMoment.ON_DELIVERY
    assert vk_receipt.billed_now == Money(Decimal("0"), "RUB")
    assert vk_receipt.expected_cost == Money(Decimal("0.35"), "RUB")
    assert voice_receipt.billing is BillingMoment.ON_ANSWER

    vk_delivered = next(
        e
        for e in callback_sink.unique_events("vk")
        if e.kind is DeliveryOutcome.DELIVERED and e.provider_message_id == vk_receipt.provider_message_id
    )
    assert vk_delivered.billed_amount == Money(Decimal("0.35"), "RUB")
    answered = next(e for e in callback_sink.unique_events("voice") if e.kind is DeliveryOutcome.ANSWERED)
    assert answered.billed_units is not None and answered.billed_units >= 1
    assert answered.billed_amount == Money(Decimal("2.50") * answered.billed_units, "RUB")

    billing = await sim.billing()
    amounts = {(e["provider"], e["message_id"]): Decimal(e["amount"]) for e in billing["entries"]}
    assert amounts[("sms", sms_receipt.provider_message_id)] == Decimal("9.00")
    assert amounts[("vk", vk_receipt.provider_message_id)] == Decimal("0.35")
    assert amounts[("voice", voice_receipt.provider_message_id)] == answered.billed_amount.amount


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
async def test_persistent_5xx_is_transient_after_bounded_attempts(
    provider: str, start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    sim = await start_simulator(FaultSettings(server_error_rate=1.0))
    client = SimulatorClient(sim.base_url)
    sleep = RecordingSleep()
    transport = TransportSettings(max_attempts=3, backoff_initial_s=0.01, backoff_max_s=0.05)
    adapter = adapters.make(provider, sim.base_url, transport=transport, sleep=sleep)

    with pytest.raises(Transient) as caught:
        await adapter.submit(message(provider, f"{provider}-5xx"))

    assert caught.value.code == "503"
    assert len(sleep.requested) == 2
    assert all(0 <= s <= 0.05 for s in sleep.requested)
    assert (await client.counters())[f"{provider}_5xx"] == 3
    assert await client.deliveries() == []


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
async def test_429_with_retry_after_is_honoured_and_delivers_once(
    provider: str, start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    sim = await start_simulator(FaultSettings(rate_limit_burst=2, retry_after_s=3))
    client = SimulatorClient(sim.base_url)
    sleep = RecordingSleep()
    # A budget that covers the Retry-After: the in-process retries wait it out.
    patient = TransportSettings(retry_budget_s=10.0)
    adapter = adapters.make(provider, sim.base_url, transport=patient, sleep=sleep)
    msg = message(provider, f"{provider}-429")

    receipt = await adapter.submit(msg)
    # A later resubmit of the same attempt (e.g. after a gateway restart) must not deliver again.
    again = await adapter.submit(msg)
    await client.settle()

    assert sleep.requested == [3.0, 3.0]
    assert again.provider_message_id == receipt.provider_message_id
    counters = await client.counters()
    assert counters[f"{provider}_429"] == 2
    assert counters[f"{provider}_deduplicated"] == 1
    deliveries = await client.deliveries()
    assert [d["dedupe_key"] for d in deliveries] == [provider_dedupe_key(provider, msg.dedupe_key)]


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
async def test_retry_after_beyond_the_budget_is_handed_back_at_once(
    provider: str, start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    sim = await start_simulator(FaultSettings(rate_limit_burst=1, retry_after_s=3))
    sleep = RecordingSleep()
    adapter = adapters.make(provider, sim.base_url, sleep=sleep)  # the default budget: 1 s

    with pytest.raises(Transient) as caught:
        await adapter.submit(message(provider, f"{provider}-429-budget"))

    # No worker sleeps 3 s: the caller gets the provider's hint and retries from a timer.
    assert caught.value.code == "429"
    assert caught.value.retry_after == 3.0
    assert sleep.requested == []
    receipt = await adapter.submit(message(provider, f"{provider}-429-budget"))
    assert receipt.provider_message_id


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
async def test_timeout_after_send_is_resolved_by_retry_with_same_key(
    provider: str, start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    # Every new submit is accepted, then its response is held past the client's read timeout.
    sim = await start_simulator(FaultSettings(timeout_rate=1.0, stall_s=30.0))
    client = SimulatorClient(sim.base_url)
    one_shot = TransportSettings(read_timeout_s=0.3, max_attempts=1)
    impatient = adapters.make(provider, sim.base_url, transport=one_shot)
    retrying = adapters.make(
        provider, sim.base_url, transport=replace(FAST_TRANSPORT, read_timeout_s=0.3), sleep=RecordingSleep()
    )
    lost = message(provider, f"{provider}-timeout-lost")
    retried = message(provider, f"{provider}-timeout-retried")

    with pytest.raises(OutcomeUnknown):
        await impatient.submit(lost)
    # Resolving the unknown outcome by resubmitting with the same key returns the original message.
    resolved = await retrying.submit(lost)
    # Within one submit, the retry after the read timeout resolves it the same way.
    receipt = await retrying.submit(retried)
    await client.settle()

    counters = await client.counters()
    assert counters[f"{provider}_accepted"] == 2
    assert counters[f"{provider}_stalled"] == 2
    assert counters[f"{provider}_deduplicated"] == 2
    deliveries = await client.deliveries()
    assert sorted((d["message_id"], d["dedupe_key"]) for d in deliveries) == sorted(
        [
            (resolved.provider_message_id, provider_dedupe_key(provider, lost.dedupe_key)),
            (receipt.provider_message_id, provider_dedupe_key(provider, retried.dedupe_key)),
        ]
    )


@pytest.mark.parametrize("provider", PROVIDER_NAMES)
async def test_deadline_stops_retries(
    provider: str, start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    sim = await start_simulator(FaultSettings(rate_limit_burst=5, retry_after_s=60))
    sleep = RecordingSleep()
    adapter = adapters.make(provider, sim.base_url, transport=FAST_TRANSPORT, sleep=sleep)
    msg = OutboundMessage(
        dedupe_key=f"{provider}-deadline",
        phone=reachable_phone(provider),
        text="hi",
        deadline=datetime.now(UTC) + timedelta(seconds=30),
    )

    with pytest.raises(Transient) as caught:
        await adapter.submit(msg)

    # Waiting the 60 s the provider asked for would overshoot the 30 s deadline: give up at once.
    assert caught.value.code == "429"
    assert sleep.requested == []


@pytest.fixture
def simulator_and_client(simulator: object, sim_client: SimulatorClient) -> tuple[str, SimulatorClient]:
    return sim_client.base_url, sim_client


def test_dedupe_counter_is_per_attempt() -> None:
    keys = Counter(provider_dedupe_key("vk", k) for k in ("a", "b", "a"))
    assert keys[provider_dedupe_key("vk", "a")] == 2
    assert vk_random_id("a") == vk_random_id("a") > 0
