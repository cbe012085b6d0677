"""The simulator application: the four provider APIs plus ``/_sim`` inspection and control endpoints.

``GET /_sim/deliveries``  every message the simulator considers delivered to a person
``GET /_sim/billing``     what it billed, amounts as Decimal strings, with totals per provider
``GET /_sim/stats``       counters (accepted, deduplicated, 429s, 5xx, callbacks sent/duplicated/dropped,
                          ``callback_answered_503`` and such: the gateway's 5xx answers to callbacks)
``POST /_sim/settle``     wait until all scheduled deliveries and callbacks have finished (in
                          virtual time: finished or waiting for a later virtual time)
``POST /_sim/advance``    virtual time only: ``{"to": ISO time}`` or ``{"seconds": N}`` moves the
                          virtual clock, wakes what is due, settles; answers ``now`` and ``next_due``
``PUT /_sim/faults``      change failure injection at runtime (JSON fields of FaultSettings,
                          optional ``provider``; without it every provider changes). Per
                          provider: ``down``/``down_until`` (an outage window, refused with 503
                          or a reset connection, ``down_mode``), ``rate_limit_burst`` with
                          ``retry_after_s`` (the next N submits get 429), ``timeout_rate`` with
                          ``stall_s`` (stalls), ``callback_retry_for_s``/``callback_retry_every_s``
                          (how long and how often an untaken callback is posted again)

The providers' own status queries (``GET /sms/1/logs``, ``GET /voice/v1/calls/...``) are in
:mod:`lab.simulator.apis`.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from aiohttp import web

from lab.simulator.apis import ProviderApis
from lab.simulator.settings import DEFAULT_PORT, FaultSettings, SimulatorSettings
from lab.simulator.state import PROVIDERS, SimulatorState

log = logging.getLogger(__name__)

STATE_KEY = web.AppKey("simulator_state", SimulatorState)

_FAULT_FIELDS = {f.name: f.type for f in dataclasses.fields(FaultSettings)}


def create_app(settings: SimulatorSettings | None = None) -> web.Application:
    """Build the simulator's aiohttp application; its state is at ``app[STATE_KEY]``."""
    state = SimulatorState(settings or SimulatorSettings())
    app = web.Application()
    app[STATE_KEY] = state
    app.add_routes(ProviderApis(state).routes())
    app.add_routes(
        [
            web.get("/_sim/deliveries", _deliveries),
            web.get("/_sim/billing", _billing),
            web.get("/_sim/stats", _stats),
            web.post("/_sim/settle", _settle),
            web.post("/_sim/advance", _advance),
            web.put("/_sim/faults", _faults),
        ]
    )

    async def start(_: web.Application) -> None:
        await state.start()

    async def stop(_: web.Application) -> None:
        await state.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return app


async def _deliveries(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].deliveries_json())


async def _billing(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].billing_json())


async def _stats(request: web.Request) -> web.Response:
    return web.json_response({"counters": dict(sorted(request.app[STATE_KEY].counters.items()))})


async def _settle(request: web.Request) -> web.Response:
    await request.app[STATE_KEY].settle()
    return web.json_response({"settled": True})


async def _advance(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    if not state.virtual:
        raise web.HTTPConflict(text="the simulator runs in real time (start it with virtual_time=True)")
    body = await request.json()
    if not isinstance(body, dict) or ("to" in body) == ("seconds" in body):
        raise web.HTTPBadRequest(text='expected {"to": ISO time} or {"seconds": N}')
    try:
        if "to" in body:
            at = datetime.fromisoformat(str(body["to"]))
            if at.tzinfo is None:
                raise ValueError("the time needs a UTC offset")
        else:
            seconds = float(body["seconds"])
            if seconds < 0:
                raise ValueError("seconds must not be negative")
            at = state.now_datetime() + timedelta(seconds=seconds)
    except (TypeError, ValueError) as exc:
        raise web.HTTPBadRequest(text=str(exc)) from exc
    woken = state.advance_to(at)
    await state.settle()
    due = state.next_due()
    return web.json_response(
        {
            "now": state.now_datetime().isoformat(),
            "woken": woken,
            "next_due": None if due is None else due.isoformat(),
        }
    )


async def _faults(request: web.Request) -> web.Response:
    body = await request.json()
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="expected a JSON object")
    provider = body.pop("provider", None)
    if provider is not None and provider not in PROVIDERS:
        raise web.HTTPBadRequest(text=f"unknown provider {provider!r}")
    unknown = set(body) - set(_FAULT_FIELDS)
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown fault fields: {sorted(unknown)}")
    request.app[STATE_KEY].update_faults(body, provider)
    return web.json_response({"ok": True})


@dataclass(frozen=True, slots=True)
class RunningSimulator:
    """A simulator serving on a real port; ``base_url`` is what adapters should point at."""

    runner: web.AppRunner
    host: str
    port: int
    state: SimulatorState

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def close(self) -> None:
        await self.runner.cleanup()


async def run_simulator(
    settings: SimulatorSettings | None = None, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT
) -> RunningSimulator:
    """Start the simulator on ``host:port`` (0 picks a free port) and return once it is listening."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = port
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            bound_port = int(address[1])
            break
    log.info("provider simulator listening on http://%s:%d", host, bound_port)
    return RunningSimulator(runner=runner, host=host, port=bound_port, state=app[STATE_KEY])
