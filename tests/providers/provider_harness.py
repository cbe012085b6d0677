"""Fixtures for provider tests: a real simulator on a free port and a real callback receiver.

Nothing here mocks HTTP: adapters talk to the simulator over TCP, and the
simulator POSTs its signed callbacks to a small aiohttp app that runs each
adapter's ``parse_callback``, exactly as the gateway will.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from lab.simulator import (
    FaultSettings,
    LatencyRange,
    PopulationSettings,
    ProviderLatencies,
    RunningSimulator,
    SimulatorSettings,
    run_simulator,
)
from lab.simulator.population import Population
from providers.base import DeliveryEvent, ProviderAdapter
from providers.errors import CallbackRejected
from providers.sms import SmsAdapter, SmsSettings
from providers.transport import TransportSettings
from providers.viber import ViberAdapter, ViberSettings
from providers.vk import VkAdapter, VkSettings
from providers.voice import VoiceAdapter, VoiceSettings

FAST = LatencyRange(0.0, 0.005)
FAST_LATENCIES = ProviderLatencies(vk=FAST, viber=FAST, sms=FAST, voice=FAST, read=FAST, slow=FAST)
PROMPT_POPULATION = PopulationSettings(vk_slow=0, vk_dormant=0, viber_slow=0, viber_dormant=0)
"""Every messenger user gets messages in seconds: tests run in real time, and a dormant
user's message would only expire after a day (tests that need one say so)."""
FAST_TRANSPORT = TransportSettings(
    connect_timeout_s=2.0,
    read_timeout_s=5.0,
    max_attempts=4,
    backoff_initial_s=0.001,
    backoff_max_s=0.01,
    breaker_failure_threshold=1000,
)
PROVIDER_NAMES = ("vk", "viber", "sms", "voice")
ADAPTER_CLASSES: dict[str, tuple[Any, Any]] = {
    "vk": (VkAdapter, VkSettings),
    "viber": (ViberAdapter, ViberSettings),
    "sms": (SmsAdapter, SmsSettings),
    "voice": (VoiceAdapter, VoiceSettings),
}


@dataclass
class CallbackSink:
    """The gateway's side of callbacks: parse with the adapter, remember each event once."""

    parsers: dict[str, ProviderAdapter]
    events: list[DeliveryEvent] = field(default_factory=list)
    by_key: dict[str, DeliveryEvent] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        body = await request.read()
        try:
            events = self.parsers[provider].parse_callback(dict(request.headers), body)
        except CallbackRejected as exc:
            self.refused.append(str(exc))
            return web.Response(status=403, text="forbidden")
        for event in events:
            self.events.append(event)
            self.by_key.setdefault(event.event_key, event)
        return web.Response(text="ok")

    def unique_events(self, provider: str | None = None) -> list[DeliveryEvent]:
        return [e for e in self.by_key.values() if provider is None or e.provider == provider]


def parser_adapters() -> dict[str, ProviderAdapter]:
    """Adapters with default settings, used only to parse callbacks (they never open a session)."""
    return {"vk": VkAdapter(), "viber": ViberAdapter(), "sms": SmsAdapter(), "voice": VoiceAdapter()}


@pytest.fixture
async def callback_sink() -> AsyncIterator[CallbackSink]:
    sink = CallbackSink(parsers=parser_adapters())
    app = web.Application()
    app.router.add_post("/callbacks/{provider}", sink.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sink.url = f"http://127.0.0.1:{port}"
    yield sink
    await runner.cleanup()


StartSimulator = Callable[..., Awaitable[RunningSimulator]]


@pytest.fixture
async def start_simulator(callback_sink: CallbackSink) -> AsyncIterator[StartSimulator]:
    """Start simulators with fast latencies, posting callbacks to ``callback_sink``."""
    running: list[RunningSimulator] = []

    async def start(faults: FaultSettings | None = None, **overrides: Any) -> RunningSimulator:
        settings = SimulatorSettings(
            seed=7,
            callback_base_url=callback_sink.url,
            latencies=FAST_LATENCIES,
            population=PROMPT_POPULATION,
            faults=faults or FaultSettings(),
        )
        simulator = await run_simulator(replace(settings, **overrides), port=0)
        running.append(simulator)
        return simulator

    yield start
    for simulator in running:
        await simulator.close()


@pytest.fixture
async def simulator(start_simulator: StartSimulator) -> RunningSimulator:
    return await start_simulator()


@dataclass
class AdapterFactory:
    """Builds adapters pointed at a simulator and closes them after the test."""

    created: list[ProviderAdapter] = field(default_factory=list)

    def make(
        self,
        name: str,
        base_url: str,
        transport: TransportSettings = FAST_TRANSPORT,
        **kwargs: Any,
    ) -> Any:
        settings_overrides = kwargs.pop("settings", {})
        adapter_cls, settings_cls = ADAPTER_CLASSES[name]
        adapter = adapter_cls(
            settings_cls(base_url=base_url, transport=transport, **settings_overrides), **kwargs
        )
        self.created.append(adapter)
        return adapter


@pytest.fixture
async def adapters() -> AsyncIterator[AdapterFactory]:
    factory = AdapterFactory()
    yield factory
    for adapter in factory.created:
        await adapter.aclose()


def find_phone(seed: int, predicate: Callable[[Population, str], bool], start: int = 0) -> str:
    """The first test phone number for which ``predicate`` holds in the seeded population."""
    population = Population(seed, SimulatorSettings().population)
    for i in range(start, start + 10_000):
        phone = f"+7916{i:07d}"
        if predicate(population, phone):
            return phone
    raise AssertionError("no phone matches")


def reachable_phone(provider: str, seed: int = 7) -> str:
    """A phone that reaches a person on ``provider`` in the simulator with ``seed``."""
    checks: dict[str, Callable[[Population, str], bool]] = {
        "vk": lambda p, phone: p.on_vk(phone),
        "viber": lambda p, phone: p.on_viber(phone),
        "sms": lambda p, phone: p.sms_deliverable(phone),
        "voice": lambda p, phone: p.answers_voice(phone),
    }
    return find_phone(seed, checks[provider])


class SimulatorClient:
    """Reads the simulator's /_sim endpoints over HTTP."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    async def _call(self, method: str, path: str, json_body: Any = None) -> Any:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, self.base_url + path, json=json_body) as resp,
        ):
            assert resp.status == 200, await resp.text()
            return await resp.json()

    async def settle(self) -> None:
        await self._call("POST", "/_sim/settle")

    async def deliveries(self) -> list[dict[str, Any]]:
        return list((await self._call("GET", "/_sim/deliveries"))["deliveries"])

    async def billing(self) -> dict[str, Any]:
        return dict(await self._call("GET", "/_sim/billing"))

    async def counters(self) -> dict[str, int]:
        return dict((await self._call("GET", "/_sim/stats"))["counters"])

    async def set_faults(self, provider: str | None = None, **faults: Any) -> None:
        body = dict(faults)
        if provider is not None:
            body["provider"] = provider
        await self._call("PUT", "/_sim/faults", body)


@pytest.fixture
def sim_client(simulator: RunningSimulator) -> SimulatorClient:
    return SimulatorClient(simulator.base_url)
