"""Resolving unknown outcomes against the simulator over real HTTP: the SMS, voice, VK and
Viber status queries, messenger TTLs, outage windows and the callback retry window."""

from __future__ import annotations

import socket
import time
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from provider_harness import AdapterFactory, CallbackSink, StartSimulator, find_phone, reachable_phone

from lab.simulator import FaultSettings, LatencyRange, PopulationSettings, ProviderLatencies
from providers.base import MessageTtl, OutboundMessage, StatusQuery, status_query_of
from providers.errors import ProviderError, Transient
from router.domain import DeliveryOutcome

START = datetime(2030, 1, 1, tzinfo=UTC)
FIVE = LatencyRange(5.0, 5.0)
VIRTUAL = {
    "virtual_time": True,
    "virtual_start": START.timestamp(),
    "latencies": ProviderLatencies(vk=FIVE, viber=FIVE, sms=FIVE, voice=FIVE, read=FIVE),
}


async def _put_faults(base_url: str, **fields: object) -> None:
    async with aiohttp.ClientSession() as http, http.put(base_url + "/_sim/faults", json=fields) as resp:
        assert resp.status == 200, await resp.text()


async def test_sms_status_query_answers_pending_then_the_lost_report(
    start_simulator: StartSimulator, adapters: AdapterFactory, callback_sink: CallbackSink
) -> None:
    simulator = await start_simulator(faults=FaultSettings(drop_callback_rate=1.0), **VIRTUAL)
    sms = adapters.make("sms", simulator.base_url)
    assert isinstance(sms, StatusQuery)
    receipt = await sms.submit(OutboundMessage("lost-1", reachable_phone("sms"), "Hello"))

    assert await sms.query_status(receipt.provider_message_id, "lost-1") is None  # still pending
    simulator.state.advance_to(START + timedelta(seconds=6))
    await simulator.state.settle()
    assert callback_sink.events == []  # the report was dropped

    [event] = await sms.query_status(None, "lost-1") or []
    assert event.kind is DeliveryOutcome.DELIVERED
    # The same event the report would have been: recording both records it once.
    assert event.event_key == f"sms:{receipt.provider_message_id}:DELIVERED"
    assert event.dedupe_key == "lost-1"
    assert await sms.query_status(None, "never-sent") is None


async def test_voice_status_query_by_call_id_and_by_client_id(
    start_simulator: StartSimulator, adapters: AdapterFactory, callback_sink: CallbackSink
) -> None:
    simulator = await start_simulator(faults=FaultSettings(drop_callback_rate=1.0), **VIRTUAL)
    voice = adapters.make("voice", simulator.base_url)
    assert isinstance(voice, StatusQuery)
    receipt = await voice.submit(OutboundMessage("call-1", reachable_phone("voice"), "Your parcel"))
    assert await voice.query_status(receipt.provider_message_id, "call-1") is None  # ringing

    simulator.state.advance_to(START + timedelta(seconds=6))
    await simulator.state.settle()
    [by_id] = await voice.query_status(receipt.provider_message_id, "call-1") or []
    [by_client_id] = await voice.query_status(None, "call-1") or []
    assert by_id == by_client_id
    assert by_id.kind is DeliveryOutcome.ANSWERED
    assert by_id.event_key == f"voice:{receipt.provider_message_id}:answered"
    assert by_id.billed_units is not None and by_id.billed_amount is not None
    assert callback_sink.events == []
    assert await voice.query_status(None, "never-called") is None


@pytest.mark.parametrize(
    ("provider", "ttl", "expected"), [("vk", 20, 60), ("viber", 20, 30), ("viber", 45, 45)]
)
async def test_a_messenger_message_undelivered_at_its_ttl_expires_unbilled(
    start_simulator: StartSimulator,
    adapters: AdapterFactory,
    callback_sink: CallbackSink,
    provider: str,
    ttl: int,
    expected: int,
) -> None:
    dormant = PopulationSettings(vk_slow=0, vk_dormant=1.0, viber_slow=0, viber_dormant=1.0)
    simulator = await start_simulator(population=dormant, **VIRTUAL)
    adapter = adapters.make(provider, simulator.base_url)
    assert isinstance(adapter, MessageTtl) and isinstance(adapter, StatusQuery)
    phone = find_phone(7, lambda p, ph: p.on_vk(ph) if provider == "vk" else p.on_viber(ph))
    message = OutboundMessage("ttl-1", phone, "Hello", ttl=timedelta(seconds=ttl))
    assert adapter.ttl_for(message) == timedelta(seconds=expected)  # the provider's bounds
    receipt = await adapter.submit(message)

    simulator.state.advance_to(START + timedelta(seconds=expected - 1))
    await simulator.state.settle()
    assert callback_sink.events == []
    simulator.state.advance_to(START + timedelta(seconds=expected + 1))
    await simulator.state.settle()
    [event] = callback_sink.unique_events(provider)
    assert event.kind is DeliveryOutcome.EXPIRED
    # The status lookup says so too, by message id and by our dedupe key.
    [by_id] = await adapter.query_status(receipt.provider_message_id, "ttl-1") or []
    [by_key] = await adapter.query_status(None, "ttl-1") or []
    assert by_id == by_key and by_id.kind is DeliveryOutcome.EXPIRED
    if provider == "viber":  # VK's callbacks carry an event_id of their own
        assert by_id.event_key == event.event_key
    assert by_id.billed_amount is None
    assert simulator.state.billing == []
    assert simulator.state.deliveries == []


@pytest.mark.parametrize("provider", ["vk", "viber"])
async def test_messenger_status_lookup_answers_pending_then_delivered_and_read(
    start_simulator: StartSimulator, adapters: AdapterFactory, callback_sink: CallbackSink, provider: str
) -> None:
    simulator = await start_simulator(faults=FaultSettings(drop_callback_rate=1.0), **VIRTUAL)
    adapter = adapters.make(provider, simulator.base_url)
    assert isinstance(adapter, StatusQuery) and adapter.offers_status_query
    phone = find_phone(
        7,
        lambda p, ph: (
            (p.on_vk(ph) if provider == "vk" else p.on_viber(ph))
            and p.messenger_pace(provider, ph) == "prompt"
        ),
    )
    receipt = await adapter.submit(OutboundMessage("lost-1", phone, "Hello", ttl=timedelta(minutes=5)))
    assert await adapter.query_status(receipt.provider_message_id, "lost-1") is None  # pending

    simulator.state.advance_to(START + timedelta(seconds=6))
    await simulator.state.settle()
    assert callback_sink.events == []  # the delivered report was dropped
    events = await adapter.query_status(receipt.provider_message_id, "lost-1") or []
    assert events[0].kind is DeliveryOutcome.DELIVERED
    assert events[0].billed_amount == adapter.price_for(1)  # the amount the gateway billed
    assert events[0].dedupe_key == "lost-1"
    assert await adapter.query_status(None, "lost-1") == events  # by our dedupe key alike
    assert [e.provider_message_id for e in events] == [receipt.provider_message_id] * len(events)
    if provider == "viber":
        assert events[0].event_key == f"viber:{receipt.provider_message_id}:delivered"  # the callback's

    simulator.state.advance_to(START + timedelta(seconds=20))  # after any read
    await simulator.state.settle()
    after = await adapter.query_status(receipt.provider_message_id, "lost-1") or []
    assert after[0] == events[0] and [e.kind for e in after][1:] in ([], [DeliveryOutcome.READ])
    assert await adapter.query_status(None, "never-sent") is None
    assert simulator.state.counters[f"{provider}_status_queries"] == 5


@pytest.mark.parametrize("provider", ["vk", "viber"])
async def test_a_messenger_configured_without_the_lookup_offers_none(
    start_simulator: StartSimulator, adapters: AdapterFactory, provider: str
) -> None:
    simulator = await start_simulator()
    adapter = adapters.make(provider, simulator.base_url, settings={"status_query": False})
    assert isinstance(adapter, StatusQuery) and status_query_of(adapter) is None
    offering = adapters.make(provider, simulator.base_url)
    assert status_query_of(offering) is offering


async def test_a_provider_down_for_a_window_refuses_submits_and_queries_alone(
    start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    simulator = await start_simulator()
    sms = adapters.make("sms", simulator.base_url)
    vk = adapters.make("vk", simulator.base_url)
    await _put_faults(simulator.base_url, provider="sms", down_until=time.time() + 3600)
    with pytest.raises(Transient):
        await sms.submit(OutboundMessage("down-1", reachable_phone("sms"), "Hello"))
    with pytest.raises(Transient):
        await sms.query_status(None, "down-1")
    await vk.submit(OutboundMessage("up-1", reachable_phone("vk"), "Hello"))  # others serve

    await _put_faults(simulator.base_url, provider="sms", down_until=None, down=True, down_mode="reset")
    with pytest.raises(ProviderError):
        await sms.submit(OutboundMessage("down-2", reachable_phone("sms"), "Hello"))

    await _put_faults(simulator.base_url, provider="sms", down=False)
    receipt = await sms.submit(OutboundMessage("down-1", reachable_phone("sms"), "Hello"))
    assert receipt.provider_message_id == "down-1"
    assert simulator.state.counters["sms_down"] >= 2


async def test_a_callback_is_retried_within_its_window_then_given_up(
    start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    # Nobody listens on the callback URL: the simulator retries for its window, then gives up.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    simulator = await start_simulator(
        callback_base_url=dead,
        faults=FaultSettings(callback_retry_for_s=0.5, callback_retry_every_s=0.1),
    )
    sms = adapters.make("sms", simulator.base_url)
    await sms.submit(OutboundMessage("retry-1", reachable_phone("sms"), "Hello"))
    await simulator.state.settle()
    assert simulator.state.counters["callbacks_failed"] == 1
    assert "callbacks_sent" not in simulator.state.counters
