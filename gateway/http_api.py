"""The gateway's HTTP side (aiohttp): provider delivery callbacks, health, the cost report page.

A callback is authenticated by its adapter (signature or shared secret); a forged or
unsigned one gets 401 and changes nothing. Accepted events are recorded exactly once
(a repeated callback hits the primary key) before the 200 goes back, so a provider
that retries on error never loses a report.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiohttp import web
from opentelemetry.trace import SpanKind

from gateway.clock import Clock, SystemClock
from gateway.report_page import Authenticate, ReportPage
from gateway.store.ledger import CostLedger
from gateway.telemetry import Telemetry
from providers.base import DeliveryEvent, ProviderAdapter
from providers.errors import CallbackRejected

log = logging.getLogger(__name__)

HealthProbe = Callable[[], Awaitable[dict[str, bool]]]
EventSink = Callable[[Sequence[DeliveryEvent]], Awaitable[int]]

_MAX_CALLBACK_BYTES = 256 * 1024


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
        sink = record_events

        def receiver(adapter: ProviderAdapter) -> Callable[[web.Request], Awaitable[web.Response]]:
            async def receive(request: web.Request) -> web.Response:
                body = await request.read()
                try:
                    events = adapter.parse_callback(request.headers, body)
                except CallbackRejected as exc:
                    log.warning("refused %s callback: %s", adapter.name, exc)
                    return web.json_response({"error": "callback refused"}, status=401)
                if telemetry is None:
                    new = await sink(events)
                else:
                    with telemetry.span(
                        "kaskad.callback", kind=SpanKind.SERVER, provider=adapter.name
                    ) as span:
                        new = await sink(events)
                        span.set_attribute("kaskad.events", len(events))
                        span.set_attribute("kaskad.new_events", new)
                reply = adapter.callback_reply(body)
                if reply is not None:  # the provider's own acknowledgement (VK: plain "ok")
                    return web.Response(body=reply.body, status=reply.status, content_type=reply.content_type)
                return web.json_response({"status": "ok", "events": len(events), "new": new})

            return receive

        for adapter in adapters.values():
            app.router.add_post(adapter.callback_path, receiver(adapter))
    return app
