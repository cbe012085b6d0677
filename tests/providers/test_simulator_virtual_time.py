"""The simulator in virtual time: delivery reports wait for the driver to move the clock."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
from provider_harness import AdapterFactory, CallbackSink, StartSimulator, reachable_phone

from lab.simulator import LatencyRange, ProviderLatencies
from providers.base import OutboundMessage
from router.domain import DeliveryOutcome

START = datetime(2030, 1, 1, tzinfo=UTC)
FIVE = LatencyRange(5.0, 5.0)


async def test_a_report_waits_for_the_virtual_clock(
    start_simulator: StartSimulator, adapters: AdapterFactory, callback_sink: CallbackSink
) -> None:
    simulator = await start_simulator(
        virtual_time=True,
        virtual_start=START.timestamp(),
        latencies=ProviderLatencies(vk=FIVE, viber=FIVE, sms=FIVE, voice=FIVE, read=FIVE),
    )
    sms = adapters.make("sms", simulator.base_url)
    await sms.submit(OutboundMessage(dedupe_key="virtual-1", phone=reachable_phone("sms"), text="Hello"))

    await simulator.state.settle()  # returns: the report is parked until the clock moves
    assert callback_sink.events == []
    assert simulator.state.next_due() == START + timedelta(seconds=5)

    assert simulator.state.advance_to(START + timedelta(seconds=4.5)) == 0
    await simulator.state.settle()
    assert callback_sink.events == []

    async with (
        aiohttp.ClientSession() as http,
        http.post(simulator.base_url + "/_sim/advance", json={"seconds": 1}) as response,
    ):
        answer = await response.json()
    assert answer["woken"] == 1 and answer["next_due"] is None
    assert datetime.fromisoformat(answer["now"]) == START + timedelta(seconds=5.5)
    [event] = callback_sink.events
    assert event.kind is DeliveryOutcome.DELIVERED
    assert event.occurred_at.year == 2030  # stamped with simulated time


async def test_advance_is_refused_in_real_time(start_simulator: StartSimulator) -> None:
    simulator = await start_simulator()
    async with (
        aiohttp.ClientSession() as http,
        http.post(simulator.base_url + "/_sim/advance", json={"seconds": 1}) as response,
    ):
        assert response.status == 409
