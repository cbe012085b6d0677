"""The composition root: the one place where concrete parts are built and wired together.

:class:`KaskadApp` owns every resource it opens (embedded servers, pools, servers, tasks)
and closes them in reverse order on :meth:`stop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import grpc
from aiohttp import web
from grpc_health.v1 import health, health_pb2

from gateway.clock import Clock, SystemClock
from gateway.config import Settings
from gateway.desk import NotificationDesk
from gateway.embedded import EmbeddedPostgres, EmbeddedRedis
from gateway.grpc_api.server import REDIS_HEALTH_NAME, create_server, mark_serving
from gateway.grpc_api.servicers import ClientAuthenticator, CostReportServicer, NotificationServicer
from gateway.http_api import create_http_app
from gateway.intake import Intake
from gateway.planning import FixedOrderPlanner
from gateway.redis_link import RedisLink
from gateway.store.postgres import NotificationStore, connect_pool, migrate
from gateway.templates import TemplateCatalog
from router.domain import Channel

log = logging.getLogger(__name__)

_DEFAULT_PRICES = {
    Channel.VK: Decimal("0.35"),
    Channel.VIBER: Decimal("1.20"),
    Channel.SMS: Decimal("4.50"),
    Channel.VOICE: Decimal("2.50"),
}


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
    return pool, NotificationStore(pool)


@dataclass
class KaskadApp:
    """A running Kaskad gateway. Build with :meth:`start`; stop with :meth:`stop`."""

    settings: Settings
    clock: Clock
    backends: Backends
    pool: asyncpg.Pool
    store: NotificationStore
    redis: RedisLink
    grpc_server: grpc.aio.Server
    grpc_port: int
    http_runner: web.AppRunner
    http_port: int
    health: health.aio.HealthServicer
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)

    @classmethod
    async def start(
        cls,
        settings: Settings,
        clock: Clock | None = None,
        backends: Backends | None = None,
    ) -> KaskadApp:
        clock = clock or SystemClock()
        if backends is None:
            backends = await asyncio.to_thread(Backends.resolve, settings)
        pool, store = await open_store(settings, backends.database_url, clock)
        redis = RedisLink(backends.redis_url, settings.redis_key_prefix)
        await redis.check()

        templates = TemplateCatalog(settings.templates)
        desk = NotificationDesk(
            store=store,
            intake=Intake(settings, templates),
            planner=FixedOrderPlanner(_DEFAULT_PRICES, settings.currency, timedelta(minutes=2)),
            clock=clock,
            max_batch_size=settings.max_batch_size,
            batch_concurrency=settings.database_pool_max,
        )
        auth = ClientAuthenticator(store)
        health_servicer = health.aio.HealthServicer()
        server, grpc_port = create_server(
            settings.grpc_address,
            NotificationServicer(desk, auth),
            CostReportServicer(auth),
            health_servicer,
        )

        async def probe() -> dict[str, bool]:
            return {"postgres": await store.ping(), "redis": redis.healthy}

        http_runner = web.AppRunner(create_http_app(probe), access_log=None)
        await http_runner.setup()
        host, _, port = settings.http_address.rpartition(":")
        site = web.TCPSite(http_runner, host, int(port))
        await site.start()
        http_port = http_runner.addresses[0][1]

        await server.start()
        await mark_serving(health_servicer)
        app = cls(
            settings,
            clock,
            backends,
            pool,
            store,
            redis,
            server,
            grpc_port,
            http_runner,
            http_port,
            health_servicer,
        )
        await app._set_redis_health()
        app._tasks.append(asyncio.create_task(app._watch_redis(), name="kaskad-redis-watch"))
        log.info("Kaskad serving gRPC on port %d and HTTP on port %d", grpc_port, http_port)
        return app

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

    async def stop(self, grace: timedelta | None = None) -> None:
        """Stop accepting, let in-flight calls finish within the grace period, close everything."""
        grace = self.settings.shutdown_grace if grace is None else grace
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(grace.total_seconds())
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.http_runner.cleanup()
        await self.redis.aclose()
        await self.pool.close()
        await asyncio.to_thread(self.backends.stop)

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()
