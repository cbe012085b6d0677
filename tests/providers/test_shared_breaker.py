"""One breaker per provider shared by gateway processes through real Redis, in front of real
adapters talking HTTP to the simulator; and each process's own breaker while Redis is down.

Two "processes" are two adapters, each with its own Redis connection and store, sharing
one key prefix and one wall clock (a fake one, moved instead of waiting out cool-downs).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from provider_harness import AdapterFactory, SimulatorClient, StartSimulator, reachable_phone

from gateway.store.breakers import RedisBreakerStore
from gateway.store.redis_link import RedisLink
from lab.simulator import FaultSettings
from providers.base import OutboundMessage
from providers.breaker import BreakerState, CircuitBreaker, ProviderBreaker
from providers.errors import CircuitOpen, OutcomeUnknown, Transient
from providers.transport import TransportSettings
from tests.tcp_proxy import TcpProxy

# One HTTP attempt per submit, so each submit is one verdict for the breaker.
TRANSPORT = TransportSettings(
    max_attempts=1, read_timeout_s=1.0, breaker_failure_threshold=3, breaker_cool_down_s=30
)


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Process:
    adapter: object
    link: RedisLink

    async def submit(self, key: str) -> object:
        message = OutboundMessage(dedupe_key=key, phone=reachable_phone("sms"), text="hi")
        return await self.adapter.submit(message)  # type: ignore[attr-defined]

    @property
    def state(self) -> BreakerState:
        return self.adapter.breaker_state  # type: ignore[attr-defined,no-any-return]


@dataclass
class Processes:
    a: Process
    b: Process
    wall: FakeClock
    sim: SimulatorClient


@pytest.fixture
async def processes(
    redis_url: str, start_simulator: StartSimulator, adapters: AdapterFactory
) -> AsyncIterator[Processes]:
    sim = await start_simulator(FaultSettings(server_error_rate=1.0))
    prefix = f"breaker-test-{uuid.uuid4().hex[:8]}:"
    wall = FakeClock(1_700_000_000.0)
    made = []
    for _ in range(2):
        link = RedisLink(redis_url, prefix)
        assert await link.check()
        adapter = adapters.make("sms", sim.base_url, transport=TRANSPORT)
        adapter.breaker.share(RedisBreakerStore(link, now=wall))
        made.append(Process(adapter, link))
    yield Processes(made[0], made[1], wall, SimulatorClient(sim.base_url))
    for process in made:
        await process.link.aclose()


async def _stalled(sim: SimulatorClient, count: int) -> None:
    for _ in range(500):
        if (await sim.counters()).get("sms_stalled", 0) >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the probe never reached the simulator")


async def test_failures_from_both_processes_open_one_breaker_for_both(processes: Processes) -> None:
    a, b = processes.a, processes.b
    for key in ("a1", "a2"):
        with pytest.raises(Transient):
            await a.submit(key)
    assert a.state is BreakerState.CLOSED and b.state is BreakerState.CLOSED
    with pytest.raises(Transient):
        await b.submit("b1")  # the third consecutive failure, counted across both

    for process in (a, b):
        with pytest.raises(CircuitOpen) as refused:
            await process.submit("refused")
        assert refused.value.retry_in == 30
        assert process.state is BreakerState.OPEN
    assert (await processes.sim.counters())["sms_5xx"] == 3  # refused submits made no request

    processes.wall.now += 10
    with pytest.raises(CircuitOpen) as later:
        await a.submit("later")
    assert later.value.retry_in == 20  # the open-until time is the shared one


async def test_half_open_admits_exactly_one_probe_across_processes_and_its_success_closes_both(
    processes: Processes,
) -> None:
    a, b, sim = processes.a, processes.b, processes.sim
    for number, process in enumerate((a, b, a)):
        with pytest.raises(Transient):
            await process.submit(f"fail-{number}")
    processes.wall.now += 30
    # The provider answers again, but holds each response: the probe stays in flight.
    await sim.set_faults(server_error_rate=0.0, timeout_rate=1.0, stall_s=60)

    probe = asyncio.create_task(a.submit("probe"))
    await _stalled(sim, 1)
    others = await asyncio.gather(
        *(process.submit(f"other-{n}") for n in range(4) for process in (a, b)), return_exceptions=True
    )
    assert all(isinstance(o, CircuitOpen) for o in others), others
    assert (await sim.counters())["sms_accepted"] == 1  # only the probe reached the provider

    with pytest.raises(OutcomeUnknown):
        await probe  # no answer in time: the probe failed, the breaker opens again for both
    for process in (a, b):
        with pytest.raises(CircuitOpen) as refused:
            await process.submit("reopened")
        assert refused.value.retry_in == 30

    processes.wall.now += 30
    await sim.set_faults(timeout_rate=0.0)
    assert await b.submit("probe-2")  # this time the probe comes from the other process
    assert await a.submit("after")
    assert a.state is BreakerState.CLOSED and b.state is BreakerState.CLOSED


async def test_with_redis_down_each_process_breaker_decides_and_sharing_resumes_after(
    redis_url: str, start_simulator: StartSimulator, adapters: AdapterFactory
) -> None:
    sim = await start_simulator(FaultSettings(server_error_rate=1.0))
    client = SimulatorClient(sim.base_url)
    proxy = await TcpProxy.for_url(redis_url)
    link = RedisLink(proxy.url_for(redis_url), f"breaker-test-{uuid.uuid4().hex[:8]}:")
    try:
        assert await link.check()
        local_clock = FakeClock(100.0)
        adapter = adapters.make("sms", sim.base_url, transport=TRANSPORT, clock=local_clock)
        adapter.breaker.share(RedisBreakerStore(link))
        process = Process(adapter, link)
        with pytest.raises(Transient):
            await process.submit("shared-failure")
        assert adapter.breaker.shared

        await proxy.cut()  # Redis is unreachable from here on
        for number in range(3):
            with pytest.raises(Transient):
                await process.submit(f"local-{number}")
        assert not adapter.breaker.shared
        assert process.state is BreakerState.OPEN  # this process's own breaker opened
        with pytest.raises(CircuitOpen) as refused:
            await process.submit("refused")
        assert refused.value.retry_in == 30
        assert (await client.counters())["sms_5xx"] == 4

        await proxy.restore()  # back on the same port; the shared breaker decides again
        await client.set_faults(server_error_rate=0.0)
        assert await process.submit("shared-again")
        assert adapter.breaker.shared
        assert process.state is BreakerState.CLOSED
    finally:
        await link.aclose()
        await proxy.close()


async def test_a_success_resets_failures_counted_since_its_call_was_admitted(redis_url: str) -> None:
    # Replies of concurrent calls arrive out of order, so a call admitted while no failure was
    # counted may succeed after another call's failure: its success must still reset the count,
    # or failures that were never consecutive add up until they open the breaker.
    link = RedisLink(redis_url, f"breaker-test-{uuid.uuid4().hex[:8]}:")
    assert await link.check()
    try:
        store = RedisBreakerStore(link, now=FakeClock(1_700_000_000.0))

        def breaker() -> ProviderBreaker:
            return ProviderBreaker(CircuitBreaker("sms", failure_threshold=2, cool_down_s=30), store)

        first, second = breaker(), breaker()
        for _ in range(3):
            admitted = await first.allow()  # no failure counted yet
            other = await second.allow()
            await second.record_failure(other)
            await first.record_success(admitted)  # after the failure: it resets the count
            assert (await store.read("sms")).failures == 0
        assert first.state is BreakerState.CLOSED and second.state is BreakerState.CLOSED
    finally:
        await link.aclose()
