"""The gateway's HTTP side (aiohttp): health now; provider callbacks, metrics and pages next."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

HealthProbe = Callable[[], Awaitable[dict[str, bool]]]


def create_http_app(health_probe: HealthProbe) -> web.Application:
    app = web.Application()

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
    return app
