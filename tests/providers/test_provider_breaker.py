"""The circuit breaker, alone with a fake clock and in front of a real adapter."""

from __future__ import annotations

import pytest
from provider_harness import AdapterFactory, SimulatorClient, StartSimulator, reachable_phone

from lab.simulator import FaultSettings
from providers.base import OutboundMessage
from providers.breaker import BreakerState, CircuitBreaker
from providers.errors import CircuitOpen, Transient, Unreachable
from providers.transport import TransportSettings


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_then_half_opens_for_one_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("vk", failure_threshold=3, cool_down_s=30, clock=clock)

    for _ in range(2):
        breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    with pytest.raises(CircuitOpen) as caught:
        breaker.allow()
    assert caught.value.retry_in == 30

    clock.now += 30
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.allow()  # the probe
    with pytest.raises(CircuitOpen):
        breaker.allow()  # only one probe at a time
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    breaker.allow()


def test_failed_probe_reopens_for_a_full_cool_down() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("sms", failure_threshold=1, cool_down_s=10, clock=clock)
    breaker.allow()
    breaker.record_failure()
    clock.now += 10
    breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    clock.now += 9
    with pytest.raises(CircuitOpen):
        breaker.allow()
    clock.now += 1
    assert breaker.state is BreakerState.HALF_OPEN


def test_success_resets_the_consecutive_count_and_release_frees_the_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker("viber", failure_threshold=2, cool_down_s=5, clock=clock)
    breaker.allow()
    breaker.record_failure()
    breaker.allow()
    breaker.record_success()
    breaker.allow()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.allow()
    breaker.record_failure()
    clock.now += 5
    breaker.allow()
    breaker.release()  # the probe was cancelled: let another one through
    breaker.allow()
    assert breaker.state is BreakerState.HALF_OPEN


@pytest.mark.parametrize("provider", ["vk", "viber", "sms", "voice"])
async def test_adapter_breaker_opens_without_http_and_closes_after_probe(
    provider: str, start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    sim = await start_simulator(FaultSettings(server_error_rate=1.0))
    client = SimulatorClient(sim.base_url)
    clock = FakeClock()
    transport = TransportSettings(max_attempts=1, breaker_failure_threshold=2, breaker_cool_down_s=60)
    adapter = adapters.make(provider, sim.base_url, transport=transport, clock=clock)
    msg = OutboundMessage(dedupe_key=f"{provider}-breaker", phone=reachable_phone(provider), text="hi")

    for _ in range(2):
        with pytest.raises(Transient):
            await adapter.submit(msg)
    assert adapter.breaker_state is BreakerState.OPEN
    with pytest.raises(CircuitOpen):
        await adapter.submit(msg)
    assert (await client.counters())[f"{provider}_5xx"] == 2  # the refused submit made no request

    clock.now += 60
    assert adapter.breaker_state is BreakerState.HALF_OPEN
    with pytest.raises(Transient):
        await adapter.submit(msg)  # failed probe
    assert adapter.breaker_state is BreakerState.OPEN

    await client.set_faults(server_error_rate=0.0)
    clock.now += 60
    receipt = await adapter.submit(msg)  # successful probe
    assert adapter.breaker_state is BreakerState.CLOSED
    assert receipt.provider_message_id


async def test_permanent_errors_do_not_open_the_breaker(
    start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    sim = await start_simulator()
    transport = TransportSettings(max_attempts=1, breaker_failure_threshold=1)
    voice = adapters.make("voice", sim.base_url, transport=transport)

    for i in range(3):
        with pytest.raises(Unreachable):
            await voice.submit(OutboundMessage(dedupe_key=f"bad-{i}", phone="+1", text="hi"))
    assert voice.breaker_state is BreakerState.CLOSED
