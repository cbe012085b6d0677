"""The composition root: the one place where concrete parts are built and wired together.

:class:`KaskadApp` owns every resource it opens (embedded servers, pools, servers, tasks)
and closes them in reverse order on :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2
from opentelemetry.sdk.trace import SpanProcessor

from gateway.accept.admission import Admission
from gateway.accept.desk import NotificationDesk
from gateway.accept.intake import Intake
from gateway.accept.planning import CostPlanner, RoutePlanner
from gateway.accept.templates import TemplateCatalog
from gateway.api.authentication import ClientAuthenticator
from gateway.api.http_api import create_http_app
from gateway.api.server import REDIS_HEALTH_NAME, CallGate, HealthServicer, create_server, set_serving
from gateway.api.servicers import CostReportServicer, NotificationServicer
from gateway.cascade.engine import CascadeEngine
from gateway.cascade.worker import AcceptPressure, WorkRunner, WorkSignal, worker_identity
from gateway.core.clock import Clock, SystemClock
from gateway.core.config import ConfigError, Settings
from gateway.core.telemetry import BreakerGauge, Telemetry
from gateway.runtime.embedded import EmbeddedPostgres, EmbeddedRedis
from gateway.runtime.health import HealthMonitor, PostgresProbe
from gateway.runtime.provider_registry import (
    build_adapters_by_name,
    provider_settings,
    refuse_simulator_credentials,
)
from gateway.store.breakers import RedisBreakerStore
from gateway.store.cascade import CascadeStore
from gateway.store.ledger import CostLedger
from gateway.store.postgres import NotificationStore, connect_one, connect_pool, migrate
from gateway.store.queries import Queries
from gateway.store.rate_limits import ProviderRateLimits, limits_from_config
from gateway.store.reachability import ReachabilityStore
from gateway.store.redis_link import RedisLink
from gateway.store.wake import WakeListener, WakeNotifier
from gateway.store.work_queue import Lease, WorkQueue
from providers.base import DeliveryEvent, ProviderAdapter
from providers.registry import price_book as configured_price_book
from router.domain import Channel
from router.planner import Planner, PlannerSettings
from router.reachability import ReachabilitySettings

log = logging.getLogger(__name__)

# On a drain, new calls are refused until none has arrived for this long (gateway.api.server.CallGate).
_DRAIN_QUIET = 0.25


def planner_settings(settings: Settings) -> PlannerSettings:
    return PlannerSettings(
        min_wait=settings.step_wait_min,
        max_wait=settings.step_wait_max,
        default_wait=settings.step_wait_default,
        voice_retries=settings.voice_retries,
        voice_retry_spacing=settings.voice_retry_spacing,
        value_of_an_hour=settings.value_of_an_hour,
        provider_patience=settings.provider_patience,
        # A report within the longest wait a step may get was a wait too short, not a failure.
        reachability=ReachabilitySettings(catchable_within=settings.step_wait_max),
    )


RoutePlannerFactory = Callable[[RoutePlanner, Mapping[Channel, ProviderAdapter]], RoutePlanner]
"""Given the gateway's own planner and the adapter of each channel, the planner to use."""


@dataclass
class Backends:
    """PostgreSQL and Redis URLs, with the embedded servers started for them, if any."""

    database_url: str
    redis_url: str
    embedded_postgres: EmbeddedPostgres | None = None
    embedded_redis: EmbeddedRedis | None = None

    @classmethod
    def resolve(cls, settings: Settings) -> Backends:
        """Use the configured URLs; start embedded servers under data_dir for the unset ones."""
        pg = redis = None
        database_url = settings.database_url
        if database_url is None:
            pg = EmbeddedPostgres.start(settings.data_dir)
            database_url = pg.url
        redis_url = settings.redis_url
        if redis_url is None:
            redis = EmbeddedRedis.start(settings.data_dir)
            redis_url = redis.url
        return cls(database_url, redis_url, pg, redis)

    def stop(self) -> None:
        if self.embedded_redis is not None:
            self.embedded_redis.stop()


async def open_store(
    settings: Settings, database_url: str, clock: Clock
) -> tuple[asyncpg.Pool, NotificationStore]:
    """Connect, migrate and return the pool and the store (used by the server and the CLI)."""
    pool = await connect_pool(database_url, settings.database_pool_min, settings.database_pool_max)
    try:
        async with pool.acquire() as conn:
            await migrate(conn, clock.now())
    except BaseException:
        await pool.close()
        raise
    store = NotificationStore(
        pool,
        settings.accept_batch_size,
        settings.accept_batch_delay.total_seconds(),
        settings.accept_batch_idle_delay.total_seconds(),
    )
    return pool, store


@dataclass
class KaskadApp:
    """A running Kaskad gateway. Build with :meth:`start`; stop with :meth:`stop`."""

    settings: Settings
    clock: Clock
    backends: Backends
    pool: asyncpg.Pool
    store: NotificationStore
    redis: RedisLink
    adapters: dict[str, ProviderAdapter]
    cascades: CascadeStore
    reachability: ReachabilityStore
    ledger: CostLedger
    engine: CascadeEngine
    admission: Admission
    telemetry: Telemetry
    runner: WorkRunner
    grpc_server: grpc.aio.Server
    grpc_port: int
    http_runner: web.AppRunner
    http_port: int
    health: HealthServicer
    gate: CallGate
    health_monitor: HealthMonitor
    postgres_probe: PostgresProbe
    wake: WorkSignal
    wake_listener: WakeListener | None
    wake_notifier: WakeNotifier | None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _workers: list[asyncio.Task[None]] = field(default_factory=list)
    _hurry: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    async def start(
        cls,
        settings: Settings,
        clock: Clock | None = None,
        backends: Backends | None = None,
        route_planner: RoutePlannerFactory | None = None,
        span_processors: Sequence[SpanProcessor] = (),
    ) -> KaskadApp:
        """``route_planner`` (``kaskad simulate``) wraps or replaces the accept path's planner.

        A start that fails half way (a port taken, PostgreSQL away) closes what it opened."""
        undo = contextlib.AsyncExitStack()
        try:
            return await cls._start(settings, clock, backends, route_planner, span_processors, undo)
        except BaseException:
            await undo.aclose()
            raise

    @classmethod
    async def _start(
        cls,
        settings: Settings,
        clock: Clock | None,
        backends: Backends | None,
        route_planner: RoutePlannerFactory | None,
        span_processors: Sequence[SpanProcessor],
        undo: contextlib.AsyncExitStack,
    ) -> KaskadApp:
        """Build and start everything; each resource registers its closing on ``undo``, which
        the caller runs only if the start fails (afterwards :meth:`stop` owns them)."""
        clock = clock or SystemClock()
        templates = TemplateCatalog(settings.templates)  # a bad template stops the start early
        providers = provider_settings(settings.providers, settings.provider_base_url)
        if not settings.allow_simulator_credentials:
            refuse_simulator_credentials(providers)
        adapters = build_adapters_by_name(providers)
        for adapter in adapters.values():
            undo.push_async_callback(adapter.aclose)
        try:
            price_book = configured_price_book({n: providers.of(n) for n in adapters}, settings.currency)
        except ValueError as exc:
            raise ConfigError(f"prices: {exc}") from exc
        if backends is None:
            backends = await asyncio.to_thread(Backends.resolve, settings)
            undo.push_async_callback(asyncio.to_thread, backends.stop)
        pool, store = await open_store(settings, backends.database_url, clock)
        undo.push_async_callback(pool.close)
        undo.push_async_callback(store.aclose)
        redis = RedisLink(backends.redis_url, settings.redis_key_prefix)
        undo.push_async_callback(redis.aclose)
        await redis.check()
        # Each provider's breaker is shared by every gateway process; its own is the fallback.
        breaker_store = RedisBreakerStore(redis)
        for adapter in adapters.values():
            adapter.breaker.share(breaker_store)

        telemetry = Telemetry(otlp_endpoint=settings.otlp_endpoint, span_processors=span_processors)
        undo.callback(telemetry.shutdown)
        queries = Queries()
        queue = WorkQueue(pool, queries)
        cascades = CascadeStore(
            pool,
            queries,
            queue,
            settings.callback_batch_size,
            settings.callback_batch_delay.total_seconds(),
            settings.callback_batch_idle_delay.total_seconds(),
        )
        undo.push_async_callback(cascades.aclose)
        planning = planner_settings(settings)
        reachability = ReachabilityStore(
            pool, queries, redis, settings.recipient_hash_key, planning.reachability
        )
        ledger = CostLedger(pool, queries, settings.currency)
        rate_limits = ProviderRateLimits(redis, limits_from_config(settings.rate_limits))
        lease = Lease(worker_identity(), settings.work_lease)  # this gateway's workers' leases
        engine = CascadeEngine(
            pool,
            cascades,
            queue,
            reachability,
            adapters,
            clock,
            telemetry,
            rate_limits,
            overdue_wait_grace=settings.overdue_wait_grace,
            messenger_ttl_margin=settings.messenger_ttl_margin,
            status_recheck_after=settings.status_recheck_after,
            lease=lease,
            provider_concurrency={
                name: rate_limits.limit(name).concurrency or settings.provider_concurrency
                for name in adapters
            },
        )
        runner = WorkRunner(
            queue,
            engine.hand_off,
            clock,
            batch_size=settings.worker_batch_size,
            lease=lease,
            settle=engine.settle,
        )
        wake = WorkSignal()
        pressure = AcceptPressure(settings.accept_latency_target.total_seconds())
        # Work committed here is run here when this gateway has workers; an accept-only
        # gateway tells the others' workers (LISTEN/NOTIFY), which poll otherwise.
        notifier: WakeNotifier | None = None
        if settings.workers > 0:
            listener = WakeListener(functools.partial(connect_one, backends.database_url), wake.notify)
            await listener.start()
            undo.push_async_callback(listener.aclose)
            work_added = wake.notify
        else:
            listener = None
            notifier = WakeNotifier(pool, queries)
            undo.push_async_callback(notifier.aclose)
            work_added = notifier.notify
        admission = Admission(
            queue,
            redis,
            clock,
            max_backlog=settings.max_backlog,
            client_quota_per_second=settings.client_quota_per_second,
        )
        await admission.sample()
        telemetry.watch_breakers(
            lambda: {name: BreakerGauge[a.breaker_state.name] for name, a in adapters.items()}
        )
        telemetry.watch_queue(admission.snapshot)
        by_channel = {adapter.channel: adapter for adapter in adapters.values()}
        planner: RoutePlanner = CostPlanner(
            Planner(price_book, planning), by_channel, reachability, rate_limits, redis
        )
        if route_planner is not None:
            planner = route_planner(planner, by_channel)
        desk = NotificationDesk(
            store=store,
            intake=Intake(settings, templates),
            planner=planner,
            cascades=cascades,
            engine=engine,
            clock=clock,
            max_batch_size=settings.max_batch_size,
            # Items of a batch share group commits: as many at once as one commit takes.
            batch_concurrency=max(settings.database_pool_max, settings.accept_batch_size),
            admission=admission,
            telemetry=telemetry,
            on_accepted=work_added,
            on_accept_time=pressure.record,
        )
        auth = ClientAuthenticator(store, settings.auth_cache_ttl.total_seconds())
        health_servicer = HealthServicer()
        gate = CallGate()
        server, grpc_port = create_server(
            settings.grpc_address,
            NotificationServicer(desk),
            CostReportServicer(ledger),
            health_servicer,
            gate,
            auth,
        )
        undo.push_async_callback(server.stop, 0)
        postgres_probe = PostgresProbe(
            functools.partial(connect_one, backends.database_url), settings.health_timeout.total_seconds()
        )
        undo.push_async_callback(postgres_probe.aclose)
        monitor = HealthMonitor(
            postgres_probe,
            functools.partial(set_serving, health_servicer),
            settings.health_interval.total_seconds(),
        )

        async def probe() -> dict[str, bool]:
            return {"postgres": await store.ping(), "redis": redis.healthy}

        async def record_events(events: Sequence[DeliveryEvent]) -> int:
            new = await cascades.record_events(events, clock.now())
            if new:
                work_added()
            return new

        http_runner = web.AppRunner(
            create_http_app(
                probe,
                adapters,
                record_events,
                ledger=ledger,
                clock=clock,
                telemetry=telemetry,
                authenticate=auth.authenticate,
            ),
            access_log=None,
        )
        await http_runner.setup()
        undo.push_async_callback(http_runner.cleanup)
        host, _, port = settings.http_address.rpartition(":")
        site = web.TCPSite(http_runner, host, int(port))
        await site.start()
        http_port = http_runner.addresses[0][1]

        await server.start()
        await monitor.check()
        app = cls(
            settings=settings,
            clock=clock,
            backends=backends,
            pool=pool,
            store=store,
            redis=redis,
            adapters=adapters,
            cascades=cascades,
            reachability=reachability,
            ledger=ledger,
            engine=engine,
            admission=admission,
            telemetry=telemetry,
            runner=runner,
            grpc_server=server,
            grpc_port=grpc_port,
            http_runner=http_runner,
            http_port=http_port,
            health=health_servicer,
            gate=gate,
            health_monitor=monitor,
            postgres_probe=postgres_probe,
            wake=wake,
            wake_listener=listener,
            wake_notifier=notifier,
        )
        await app._set_redis_health()
        app._tasks.append(asyncio.create_task(monitor.run(), name="kaskad-health-monitor"))
        app._tasks.append(asyncio.create_task(app._watch_redis(), name="kaskad-redis-watch"))
        app._tasks.append(asyncio.create_task(app._watch_breakers(), name="kaskad-breaker-watch"))
        app._tasks.append(asyncio.create_task(app._flush_traffic(), name="kaskad-traffic-flush"))
        app._tasks.append(asyncio.create_task(app._sample_backlog(), name="kaskad-backlog-sampler"))
        for number in range(settings.workers):
            worker = runner.run_forever(
                settings.worker_poll_interval, wake, pressure, settings.worker_gather_delay
            )
            app._workers.append(asyncio.create_task(worker, name=f"kaskad-worker-{number}"))
        log.info("Kaskad serving gRPC on port %d and HTTP on port %d", grpc_port, http_port)
        return app

    async def _sample_backlog(self) -> None:
        while True:
            await asyncio.sleep(1)  # a sampling cadence for backpressure, not a business timer
            try:
                await self.admission.sample()
            except Exception:
                log.exception("sampling the work backlog failed; will retry")

    async def _flush_traffic(self) -> None:
        while True:
            await asyncio.sleep(5)  # a flush cadence for channel-wide priors, not a business timer
            try:
                await self.reachability.flush(self.clock.now())
            except Exception:
                log.exception("flushing channel stats failed; will retry")

    async def _set_redis_health(self) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self.redis.healthy
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(REDIS_HEALTH_NAME, status)

    async def _watch_redis(self) -> None:
        interval = self.settings.redis_check_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)  # a health poll, not a business timer
            before = self.redis.healthy
            if await self.redis.check() != before:
                await self._set_redis_health()

    async def _watch_breakers(self) -> None:
        """Keep each breaker's view of the shared state fresh for metrics and the planner,
        also in a process that makes no calls to a provider."""
        while True:
            await asyncio.sleep(1)  # a refresh cadence for a gauge, not a business timer
            for adapter in self.adapters.values():
                await adapter.breaker.refresh()

    async def stop(self, grace: timedelta | None = None, delay: timedelta = timedelta(0)) -> None:
        """Drain, then close everything.

        Health turns NOT_SERVING at once, and workers stop claiming (each finishes the batch it
        holds). Calls are still served for ``delay``, so that load balancers notice; then new
        calls are refused with UNAVAILABLE, and those in flight get the rest of ``grace``
        (default: the setting) to finish and commit. Callbacks are taken until the workers are
        done, so their submits' results are recorded. :meth:`hurry` cuts every wait short."""
        grace = self.settings.shutdown_grace if grace is None else grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (delay + grace).total_seconds()
        await self.health.enter_graceful_shutdown()  # every name NOT_SERVING, and it stays so
        for worker in self._workers:
            worker.cancel()  # the first cancel drains: see WorkRunner.run_forever
        workers = asyncio.gather(*self._workers, return_exceptions=True)
        if delay:
            await self._until(loop.time() + delay.total_seconds())
        self.health.end_watches()
        refusing = asyncio.ensure_future(self.gate.refuse_new_calls(_DRAIN_QUIET))
        if not await self._until(deadline, refusing):
            refusing.cancel()
        grpc_stopped = asyncio.ensure_future(self.grpc_server.stop(max(0.0, deadline - loop.time())))
        if not await self._until(None, grpc_stopped):
            await self.grpc_server.stop(0)  # hurried: cancel the calls still in flight
            await grpc_stopped
        if not await self._until(deadline, workers):
            log.warning("workers did not finish their batches in time; their items wait for the lease")
            for worker in self._workers:
                worker.cancel()
        await workers
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # Submits under way are recorded (callbacks are still taken) within what is left of
        # the grace; the rest stay leased and run again, with the same dedupe keys.
        settled = asyncio.ensure_future(self.engine.settle())
        if not await self._until(deadline, settled):
            settled.cancel()
        await self.engine.aclose(timedelta(0))
        await self.http_runner.cleanup()
        await self.cascades.aclose()
        await self.postgres_probe.aclose()
        if self.wake_listener is not None:
            await self.wake_listener.aclose()
        try:
            await self.reachability.flush(self.clock.now())
        except Exception:
            log.exception("final flush of channel stats failed")
        for adapter in self.adapters.values():
            await adapter.aclose()
        await self.redis.aclose()
        self.telemetry.shutdown()
        await self.store.aclose()
        if self.wake_notifier is not None:
            await self.wake_notifier.aclose()
        await self.pool.close()
        await asyncio.to_thread(self.backends.stop)

    def hurry(self) -> None:
        """Cut a drain short (a second signal): calls and batches still in flight are cancelled."""
        self._hurry.set()

    async def _until(self, deadline: float | None, work: asyncio.Future[Any] | None = None) -> bool:
        """Wait for ``work`` (or only the time) until ``deadline`` (loop time) or a hurry;
        whether ``work`` is done. ``work`` is left running."""
        hurry = asyncio.ensure_future(self._hurry.wait())
        timeout = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        try:
            await asyncio.wait(
                {hurry} if work is None else {hurry, work},
                timeout=timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            hurry.cancel()
        return work is not None and work.done()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()
