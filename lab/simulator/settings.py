"""Settings of the provider simulator: population, latencies, failure injection, credentials."""

from __future__ import annotations

from dataclasses import dataclass, field

from providers.sms import SmsSettings
from providers.viber import ViberSettings
from providers.vk import VkSettings
from providers.voice import VoiceSettings

DEFAULT_PORT = 8790


@dataclass(frozen=True, slots=True)
class LatencyRange:
    """A uniform delay range in seconds."""

    low_s: float
    high_s: float

    def __post_init__(self) -> None:
        if not 0 <= self.low_s <= self.high_s:
            raise ValueError("need 0 <= low_s <= high_s")


@dataclass(frozen=True, slots=True)
class PopulationSettings:
    """Share of phones reachable per channel, decided deterministically from (seed, recipient).

    Messenger users differ in how soon a message reaches them: most have the app running
    (``latencies.vk``/``viber``: seconds); the ``*_slow`` share often have their phone
    offline or the app asleep (``latencies.slow``: minutes); the ``*_dormant`` share have an
    account but have not been active lately, and their messages are never delivered: the
    gateway accepts them and reports them expired when their TTL runs out (a day when the
    submit names none). A message is billed when it is delivered, however late.
    """

    vk_reachable: float = 0.5
    viber_reachable: float = 0.6
    sms_reachable: float = 0.98
    voice_answer_rate: float = 0.7
    # Share of delivered messenger messages the person also reads.
    read_rate: float = 0.6
    vk_slow: float = 0.2
    vk_dormant: float = 0.1
    viber_slow: float = 0.15
    viber_dormant: float = 0.05

    def __post_init__(self) -> None:
        for name in ("vk_reachable", "viber_reachable", "sms_reachable", "voice_answer_rate", "read_rate"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a share in [0, 1]")
        for channel in ("vk", "viber"):
            slow, dormant = getattr(self, f"{channel}_slow"), getattr(self, f"{channel}_dormant")
            if not (slow >= 0 and dormant >= 0 and slow + dormant <= 1):
                raise ValueError(
                    f"{channel}_slow and {channel}_dormant must be shares adding up to at most 1"
                )


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """Failure injection; every rate is a probability per submit or per callback."""

    server_error_rate: float = 0.0
    # The provider's own "try later" answer (VK error 10, Viber status 12, voice capacity_exceeded).
    api_error_rate: float = 0.0
    # The next N submits are answered 429 with Retry-After: retry_after_s.
    rate_limit_burst: int = 0
    retry_after_s: int = 1
    # Accept the message, then hold the response for stall_s (the client times out: unknown outcome).
    timeout_rate: float = 0.0
    stall_s: float = 30.0
    duplicate_callback_rate: float = 0.0
    drop_callback_rate: float = 0.0
    # Send a message's later event (read/seen) before its earlier one (delivered).
    reorder_callback_rate: float = 0.0
    # Outages and callback retries (issue 17).
    # The provider is down: while ``down`` is set, or until ``down_until`` (seconds since the
    # epoch), every API call (submits and status queries) is refused as ``down_mode`` says:
    # "503" (Service Unavailable with Retry-After: retry_after_s) or "reset" (the connection
    # is closed without an answer). A closed port is best had by stopping the simulator.
    down: bool = False
    down_until: float | None = None
    down_mode: str = "503"
    # How long (seconds) and how often a callback the gateway does not take (refused
    # connection, 5xx, wrong answer) is posted again; None keeps the simulator's
    # ``callback_attempts`` with a short backoff. Real providers retry for minutes to hours;
    # about a second is the worst case a gateway restart must survive.
    callback_retry_for_s: float | None = None
    callback_retry_every_s: float = 0.2

    def __post_init__(self) -> None:
        if self.down_mode not in ("503", "reset"):
            raise ValueError('down_mode must be "503" or "reset"')
        if self.callback_retry_every_s <= 0:
            raise ValueError("callback_retry_every_s must be positive")


@dataclass(frozen=True, slots=True)
class ProviderLatencies:
    """Delay from submit to delivery report, and from delivery to read, per provider."""

    vk: LatencyRange = LatencyRange(0.5, 3.0)
    viber: LatencyRange = LatencyRange(0.5, 3.0)
    sms: LatencyRange = LatencyRange(2.0, 10.0)
    voice: LatencyRange = LatencyRange(5.0, 30.0)
    read: LatencyRange = LatencyRange(1.0, 20.0)
    # Messenger users who are slow (PopulationSettings): their delivery comes this late.
    slow: LatencyRange = LatencyRange(60.0, 1200.0)


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    """Everything the simulator needs.

    ``vk``/``viber``/``sms``/``voice`` are the adapters' own settings: the
    simulator accepts their credentials, signs callbacks with their secrets and
    bills at their prices, so adapters and simulator agree by construction.
    ``callback_base_url`` of ``None`` records deliveries but posts no callbacks.

    ``virtual_time``: latencies are simulated seconds on the simulator's own virtual
    clock, which moves only when the driver calls :meth:`SimulatorState.advance_to`
    (or ``POST /_sim/advance``); a delivery report is posted once the clock reaches its
    due time, so days of traffic run in minutes. Off by default: real ``asyncio`` sleeps.
    """

    seed: int = 1
    callback_base_url: str | None = "http://127.0.0.1:8080"
    population: PopulationSettings = field(default_factory=PopulationSettings)
    faults: FaultSettings = field(default_factory=FaultSettings)
    latencies: ProviderLatencies = field(default_factory=ProviderLatencies)
    callback_attempts: int = 3
    virtual_time: bool = False
    # Where the virtual clock starts (seconds since the epoch); None: the wall clock at start.
    virtual_start: float | None = None
    vk: VkSettings = field(default_factory=VkSettings)
    viber: ViberSettings = field(default_factory=ViberSettings)
    sms: SmsSettings = field(default_factory=SmsSettings)
    voice: VoiceSettings = field(default_factory=VoiceSettings)
