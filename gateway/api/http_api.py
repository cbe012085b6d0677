"""The gateway's HTTP side (aiohttp): provider delivery callbacks, health, the cost report page.

A callback is authenticated by its adapter (signature or shared secret); a forged or
unsigned one gets 401 and changes nothing, an authenticated but malformed one 400 with a
short reason, and changes nothing either. Accepted events are recorded exactly once
(a repeated callback hits the primary key) before the 200 goes back, so a provider
that retries on error never loses a report; while PostgreSQL is unavailable the answer is
503 with Retry-After, so it retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from datetime import timedelta

import asyncpg
from aiohttp import web
from opentelemetry.trace import SpanKind

from gateway.api.report_page import Authenticate, ReportPage
from gateway.core.clock import Clock, SystemClock
from gateway.core.errors import StoreUnavailable
from gateway.core.telemetry import Telemetry
from gateway.store.ledger import CostLedger
from gateway.store.postgres import transient_as_unavailable
from providers.base import DeliveryEvent, ProviderAdapter
from providers.errors import CallbackMalformed, CallbackRejected, CallbackUnauthenticated

log = logging.getLogger(__name__)

HealthProbe = Callable[[], Awaitable[dict[str, bool]]]
EventSink = Callable[[Sequence[DeliveryEvent]], Awaitable[int]]

_MAX_CALLBACK_BYTES = 256 * 1024
# What a provider is told to wait during a database outage before it sends the callback again.
_OUTAGE_RETRY_AFTER_S = 5
# A report dated further ahead of the gateway's clock than this is no clock skew but nonsense.
_MAX_CLOCK_AHEAD = timedelta(days=1)
_WARNING_INTERVAL_S = 60.0
_MAX_WARNING_KEYS = 1000
# PostgreSQL cannot record now: StoreUnavailable, or a connection lost mid-statement should
# one escape transient_as_unavailable.
_STORE_DOWN = (StoreUnavailable, asyncpg.PostgresConnectionError)


def create_http_app(
    health_probe: HealthProbe,
    adapters: Mapping[str, ProviderAdapter] | None = None,
    record_events: EventSink | None = None,
    ledger: CostLedger | None = None,
    clock: Clock | None = None,
    telemetry: Telemetry | None = None,
    authenticate: Authenticate | None = None,
) -> web.Application:
    app = web.Application(client_max_size=_MAX_CALLBACK_BYTES)

    if telemetry is not None:
        observed = telemetry

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=observed.prometheus_text(), content_type="text/plain", charset="utf-8")

        app.router.add_get("/metrics", metrics)

    async def healthz(request: web.Request) -> web.Response:
        checks = await health_probe()
        if not checks.get("postgres", False):
            status, code = "down", 503
        elif all(checks.values()):
            status, code = "ok", 200
        else:
            status, code = "degraded", 200
        return web.json_response({"status": status, "checks": checks}, status=code)

    app.router.add_get("/healthz", healthz)
    if ledger is not None:
        if authenticate is None:
            raise ValueError("the cost report page needs a way to check API keys")
        ReportPage(ledger, clock or SystemClock(), authenticate).register(app)

    if adapters and record_events is not None:
        callbacks = _CallbackEndpoint(record_events, clock or SystemClock(), telemetry)
        for adapter in adapters.values():
            app.router.add_post(adapter.callback_path, callbacks.receiver(adapter))
    return app


class _CallbackEndpoint:
    """Receives one provider's callbacks: authenticate, read, record, answer.

    401: not authenticated (nothing read further). 400: authenticated but malformed.
    503 with Retry-After: PostgreSQL cannot record it now, so the provider retries.
    Client mistakes and outages cost a warning line at most, never a traceback.
    """

    def __init__(self, sink: EventSink, clock: Clock, telemetry: Telemetry | None) -> None:
        self._sink = sink
        self._clock = clock
        self._telemetry = telemetry
        self._warnings = _QuietWarnings(_WARNING_INTERVAL_S)
        self._store_down = False

    def receiver(self, adapter: ProviderAdapter) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def receive(request: web.Request) -> web.Response:
            return await self._receive(adapter, request)

        return receive

    async def _receive(self, adapter: ProviderAdapter, request: web.Request) -> web.Response:
        body = await request.read()  # over _MAX_CALLBACK_BYTES: aiohttp answers 413
        try:
            events = self._events(adapter, request, body)
        except CallbackMalformed as exc:
            self._warnings.warn((adapter.name, 400, str(exc)), "malformed %s callback: %s", adapter.name, exc)
            return web.json_response({"error": "malformed callback", "reason": exc.args[0]}, status=400)
        except CallbackRejected as exc:
            self._warnings.warn((adapter.name, 401, str(exc)), "refused %s callback: %s", adapter.name, exc)
            return web.json_response({"error": "callback refused"}, status=401)
        try:
            new = await self._record(adapter, events)
        except _STORE_DOWN as exc:
            if not self._store_down:
                self._store_down = True
                log.warning(
                    "PostgreSQL is unavailable (%s): callbacks get 503 and Retry-After %d s until it is back",
                    type(exc).__name__,
                    _OUTAGE_RETRY_AFTER_S,
                )
            return web.json_response(
                {"error": "cannot record callbacks now; retry"},
                status=503,
                headers={"Retry-After": str(_OUTAGE_RETRY_AFTER_S)},
            )
        if self._store_down:
            self._store_down = False
            log.info("PostgreSQL is back: callbacks are recorded again")
        reply = adapter.callback_reply(body)
        if reply is not None:  # the provider's own acknowledgement (VK: plain "ok")
            return web.Response(body=reply.body, status=reply.status, content_type=reply.content_type)
        return web.json_response({"status": "ok", "events": len(events), "new": new})

    def _events(self, adapter: ProviderAdapter, request: web.Request, body: bytes) -> list[DeliveryEvent]:
        """The adapter's events, checked against the gateway's own clock; raises CallbackRejected."""
        try:
            events = adapter.parse_callback(request.headers, body)
        except CallbackRejected:
            raise
        except Exception as exc:
            # Adapters turn faults after authentication into CallbackMalformed; one that escapes
            # came before it (or from an adapter that does not), so nothing vouches for the body.
            raise CallbackUnauthenticated(
                f"callback could not be read ({type(exc).__name__})", provider=adapter.name
            ) from exc
        latest = self._clock.now() + _MAX_CLOCK_AHEAD
        if any(e.occurred_at > latest for e in events):
            raise CallbackMalformed("timestamp in the future", provider=adapter.name)
        return events

    async def _record(self, adapter: ProviderAdapter, events: list[DeliveryEvent]) -> int:
        with transient_as_unavailable():  # asyncpg's connection failures become StoreUnavailable
            if self._telemetry is None:
                return await self._sink(events)
            with self._telemetry.span("kaskad.callback", kind=SpanKind.SERVER, provider=adapter.name) as span:
                new = await self._sink(events)
                span.set_attribute("kaskad.events", len(events))
                span.set_attribute("kaskad.new_events", new)
                return new


class _QuietWarnings:
    """Log a warning per key at most once an interval, counting the ones left out.

    A provider (or a forger) repeating one mistake thousands of times gets a line a minute.
    """

    def __init__(self, interval_s: float) -> None:
        self._interval_s = interval_s
        self._last: dict[Hashable, tuple[float, int]] = {}

    def warn(self, key: Hashable, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last[0] < self._interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return
        if len(self._last) >= _MAX_WARNING_KEYS:  # keys carry reasons; never let them pile up
            self._last.clear()
        self._last[key] = (now, 0)
        if last is not None and last[1]:
            message += " (and %d more like it since the last line)"
            args = (*args, last[1])
        log.warning(message, *args)
