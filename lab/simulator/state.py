"""The simulator's memory: accepted submits (for dedupe), deliveries, billing, message statuses
(what the status query endpoints answer, whether or not a callback got through), and callback
delivery with the configured retries."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import random
import time
from collections.abc import Coroutine, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import aiohttp

from lab.simulator.population import Population
from lab.simulator.settings import FaultSettings, LatencyRange, SimulatorSettings

log = logging.getLogger(__name__)

PROVIDERS = ("vk", "viber", "sms", "voice")


@dataclass(frozen=True, slots=True)
class AcceptedSubmit:
    """What the simulator answered to the first submit with a given dedupe key."""

    message_id: str
    status: int
    body: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One message the simulator considers delivered to (or answered by) a person."""

    provider: str
    message_id: str
    dedupe_key: str
    recipient_ref: str
    delivered_at: str


@dataclass(frozen=True, slots=True)
class BillingRecord:
    provider: str
    message_id: str
    units: int
    amount: Decimal
    currency: str
    reason: str


@dataclass(frozen=True, slots=True)
class OutgoingCallback:
    """A signed callback request, ready to POST."""

    path: str
    body: bytes
    headers: Mapping[str, str]
    # The answer the provider insists on (VK: "ok"); any other 2xx answer is retried as a
    # failure, as the real provider does. None: any answer below 500 ends the callback.
    expect: bytes | None = None


class SimulatorState:
    """Mutable state of one running simulator (one per application, never module-global)."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.population = Population(settings.seed, settings.population)
        self.rng = random.Random(settings.seed)
        self.faults: dict[str, FaultSettings] = dict.fromkeys(PROVIDERS, settings.faults)
        self._burst_left: dict[str, int] = {p: settings.faults.rate_limit_burst for p in PROVIDERS}
        self.accepted: dict[tuple[str, str], AcceptedSubmit] = {}
        self.deliveries: list[DeliveryRecord] = []
        self.billing: list[BillingRecord] = []
        self.counters: dict[str, int] = {}
        # What a status query answers per (provider, message id or client id): the provider's
        # own status document, pending until the delivery is decided.
        self.statuses: dict[tuple[str, str], dict[str, Any]] = {}
        self._next_id = 100_000
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._stopping: asyncio.Event | None = None
        # Virtual time (settings.virtual_time): sleepers wait in a heap of (due, seq, future,
        # task) until advance_to() passes their due time; parked tasks count as settled.
        self._virtual_now = time.time() if settings.virtual_start is None else settings.virtual_start
        self._sleepers: list[tuple[float, int, asyncio.Future[None], asyncio.Task[Any] | None]] = []
        self._sleeper_seq = itertools.count()
        self._parked: set[asyncio.Task[Any]] = set()
        self._changed: asyncio.Event | None = None

    # ---- time ------------------------------------------------------------------------------

    @property
    def virtual(self) -> bool:
        return self.settings.virtual_time

    def now(self) -> float:
        """Seconds since the epoch: the virtual clock in virtual-time mode, else the wall clock."""
        return self._virtual_now if self.virtual else time.time()

    def now_datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)

    async def sleep(self, seconds: float) -> None:
        """Simulated latency: a real sleep, or in virtual time a wait for the clock to pass it."""
        if not self.virtual:
            if seconds > 0:
                await asyncio.sleep(seconds)
            return
        if seconds <= 0:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        task = asyncio.current_task()
        heapq.heappush(self._sleepers, (self._virtual_now + seconds, next(self._sleeper_seq), future, task))
        if task is not None:
            self._parked.add(task)
            self._signal()
        try:
            await future
        finally:
            if task is not None:
                self._parked.discard(task)

    def next_due(self) -> datetime | None:
        """When the earliest virtual sleeper wakes (virtual time only); None if nobody sleeps."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # cancelled at shutdown
        return datetime.fromtimestamp(self._sleepers[0][0], UTC) if self._sleepers else None

    def advance_to(self, at: datetime) -> int:
        """Move the virtual clock to ``at`` (never back) and wake every sleeper due by then.

        Returns how many were woken; follow with :meth:`settle` to let them post their
        callbacks. Sleepers wake in due order.
        """
        if not self.virtual:
            raise RuntimeError("advance_to needs SimulatorSettings(virtual_time=True)")
        self._virtual_now = max(self._virtual_now, at.timestamp())
        woken = 0
        while self._sleepers and self._sleepers[0][0] <= self._virtual_now:
            _, _, future, task = heapq.heappop(self._sleepers)
            if future.done():
                continue
            if task is not None:
                self._parked.discard(task)
            future.set_result(None)
            woken += 1
        return woken

    def _signal(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # ---- ids, counters, faults -------------------------------------------------------------

    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def count(self, name: str, by: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def set_faults(self, faults: FaultSettings, provider: str | None = None) -> None:
        for name in PROVIDERS if provider is None else (provider,):
            self.faults[name] = faults
            self._burst_left[name] = faults.rate_limit_burst

    def update_faults(self, changes: Mapping[str, Any], provider: str | None = None) -> None:
        for name in PROVIDERS if provider is None else (provider,):
            self.set_faults(replace(self.faults[name], **changes), name)

    def is_down(self, provider: str) -> bool:
        """True while the provider is in an injected outage (``down`` or before ``down_until``)."""
        faults = self.faults[provider]
        return faults.down or (faults.down_until is not None and time.time() < faults.down_until)

    def set_status(self, provider: str, keys: tuple[str, ...], status: Mapping[str, Any]) -> None:
        """Remember the message's status under each of its ids, for the status query endpoints."""
        for key in keys:
            self.statuses[(provider, key)] = dict(status)

    def take_rate_limit(self, provider: str) -> bool:
        """True if this submit falls in a 429 burst."""
        if self._burst_left[provider] > 0:
            self._burst_left[provider] -= 1
            return True
        return False

    def chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def delay(self, latency: LatencyRange) -> float:
        return self.rng.uniform(latency.low_s, latency.high_s)

    # ---- ledger ----------------------------------------------------------------------------

    def record_delivery(self, provider: str, message_id: str, dedupe_key: str, recipient: str) -> None:
        self.deliveries.append(
            DeliveryRecord(
                provider=provider,
                message_id=message_id,
                dedupe_key=dedupe_key,
                recipient_ref=self.population.reference(recipient),
                delivered_at=self.now_datetime().isoformat(),
            )
        )

    def record_billing(
        self, provider: str, message_id: str, units: int, amount: Decimal, currency: str, reason: str
    ) -> None:
        self.billing.append(BillingRecord(provider, message_id, units, amount, currency, reason))

    def deliveries_json(self) -> dict[str, Any]:
        return {"deliveries": [asdict(d) for d in self.deliveries]}

    def billing_json(self) -> dict[str, Any]:
        totals: dict[tuple[str, str], Decimal] = {}
        for entry in self.billing:
            key = (entry.provider, entry.currency)
            totals[key] = totals.get(key, Decimal(0)) + entry.amount
        return {
            "entries": [{**asdict(entry), "amount": str(entry.amount)} for entry in self.billing],
            "totals": [
                {"provider": p, "currency": c, "amount": str(a)} for (p, c), a in sorted(totals.items())
            ],
        }

    # ---- background work -------------------------------------------------------------------

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._parked.discard(task)
        self._signal()
        if not task.cancelled() and task.exception() is not None:
            log.error("simulator task failed", exc_info=task.exception())

    async def settle(self) -> None:
        """Wait until every scheduled delivery and callback has finished.

        In virtual time, until every one has finished or waits for a later virtual time
        (otherwise this would wait for a clock that only the caller can move).
        """
        if not self.virtual:
            while self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            return
        assert self._changed is not None, "simulator not started"
        while True:
            self._changed.clear()
            if not any(task not in self._parked for task in self._tasks):
                return
            await self._changed.wait()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        self._stopping = asyncio.Event()
        self._changed = asyncio.Event()

    async def stall(self, seconds: float) -> None:
        """Hold a response for ``seconds``, but let shutdown cut the wait short."""
        assert self._stopping is not None, "simulator not started"
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def send_callbacks(self, provider: str, timeline: list[tuple[float, OutgoingCallback]]) -> None:
        """POST a message's callbacks, each after its delay (seconds after the previous one).

        Applies the provider's faults: a reordered timeline is sent all at once
        at its end, last event first; dropped callbacks are never sent;
        duplicated ones are sent twice.
        """
        base = self.settings.callback_base_url
        faults = self.faults[provider]
        if len(timeline) > 1 and self.chance(faults.reorder_callback_rate):
            self.count("callbacks_reordered")
            timeline = [(sum(d for d, _ in timeline), timeline[-1][1])] + [
                (0.0, cb) for _, cb in reversed(timeline[:-1])
            ]
        for wait_s, callback in timeline:
            await self.sleep(wait_s)
            if base is None:
                continue
            if self.chance(faults.drop_callback_rate):
                self.count("callbacks_dropped")
                continue
            await self._post(base, callback, provider)
            if self.chance(faults.duplicate_callback_rate):
                self.count("callbacks_duplicated")
                await self._post(base, callback, provider)

    async def _post(self, base: str, callback: OutgoingCallback, provider: str) -> None:
        assert self._session is not None, "simulator not started"
        url = base.rstrip("/") + callback.path
        faults = self.faults[provider]
        retry_for = faults.callback_retry_for_s
        give_up_at = None if retry_for is None else time.monotonic() + retry_for
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._session.post(url, data=callback.body, headers=callback.headers) as resp:
                    answer = await resp.read()
                    # Each refusal counted (503 in a database outage, for one), retried or not.
                    if resp.status >= 500:
                        self.count(f"callback_answered_{resp.status}")
                    if resp.status < 300 and callback.expect is not None and answer != callback.expect:
                        self.count("callbacks_unacknowledged")
                    elif resp.status < 500:
                        self.count("callbacks_sent")
                        if resp.status >= 400:
                            self.count("callbacks_refused")
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if give_up_at is None:
                if attempt >= self.settings.callback_attempts:
                    break
                # Real providers retry callbacks with backoff; keep it short for a simulator.
                await asyncio.sleep(0.2 * attempt)
            else:
                if time.monotonic() + faults.callback_retry_every_s > give_up_at:
                    break
                await asyncio.sleep(faults.callback_retry_every_s)
        self.count("callbacks_failed")
        log.warning("callback to %s failed after %d attempts", callback.path, attempt)


def json_bytes(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")
