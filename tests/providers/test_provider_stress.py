"""1,000 sends across all providers with injected 5xx and duplicate callbacks: nobody gets a message twice."""

from __future__ import annotations

import asyncio
from collections import Counter

from provider_harness import PROVIDER_NAMES, AdapterFactory, CallbackSink, SimulatorClient, StartSimulator

from lab.simulator import FaultSettings
from providers.base import OutboundMessage, SubmitReceipt
from providers.errors import ProviderError
from providers.transport import TransportSettings
from providers.vk import vk_random_id

SENDS = 1000


async def test_thousand_sends_with_faults_deliver_each_message_at_most_once(
    start_simulator: StartSimulator, adapters: AdapterFactory, callback_sink: CallbackSink
) -> None:
    sim = await start_simulator(FaultSettings(server_error_rate=0.05, duplicate_callback_rate=0.05))
    client = SimulatorClient(sim.base_url)
    transport = TransportSettings(
        max_attempts=8, backoff_initial_s=0.001, backoff_max_s=0.01, breaker_failure_threshold=1000
    )
    by_provider = {name: adapters.make(name, sim.base_url, transport=transport) for name in PROVIDER_NAMES}
    gate = asyncio.Semaphore(32)

    async def send(i: int) -> tuple[str, str, SubmitReceipt | ProviderError]:
        provider = PROVIDER_NAMES[i % len(PROVIDER_NAMES)]
        msg = OutboundMessage(dedupe_key=f"stress-{i}", phone=f"+7926{i:07d}", text=f"Заказ {i} в пути")
        async with gate:
            try:
                return provider, msg.dedupe_key, await by_provider[provider].submit(msg)
            except ProviderError as exc:  # Unreachable for people not on VK/Viber is expected
                return provider, msg.dedupe_key, exc

    results = await asyncio.gather(*(send(i) for i in range(SENDS)))
    await client.settle()

    accepted = {(p, key) for p, key, r in results if isinstance(r, SubmitReceipt)}
    errors = Counter(type(r).__name__ for _, _, r in results if not isinstance(r, SubmitReceipt))
    assert set(errors) <= {"Unreachable"}, errors
    deliveries = await client.deliveries()
    delivered_keys = [(d["provider"], d["dedupe_key"]) for d in deliveries]
    # The heart of it: no attempt reached a person twice.
    assert len(delivered_keys) == len(set(delivered_keys))
    sent_keys = {(p, str(vk_random_id(k)) if p == "vk" else k) for p, k in accepted}
    assert set(delivered_keys) <= sent_keys
    counters = await client.counters()
    assert counters.get("vk_5xx", 0) + counters.get("sms_5xx", 0) > 0
    assert counters.get("callbacks_duplicated", 0) > 0
    # Every callback was accepted; duplicates collapse onto their event key.
    assert callback_sink.refused == []
    assert len(callback_sink.events) > len(callback_sink.by_key)
    reached = {
        (e.provider, e.provider_message_id) for e in callback_sink.by_key.values() if e.kind.reached_person
    }
    assert reached == {(d["provider"], d["message_id"]) for d in deliveries}
