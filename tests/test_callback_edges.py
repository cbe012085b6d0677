"""Callback endpoints at their edges, over real HTTP against the real gateway and PostgreSQL.

Deep or absurd bodies are refused with 401 (not authenticated) or 400 (signed but malformed)
and write nothing; while PostgreSQL is away, callbacks get 503 with Retry-After and the log
one warning, not a traceback per request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest

from gateway.core.config import Settings
from gateway.runtime.app import Backends, KaskadApp
from tests.callback_cases import ABSURD, body_of, sane, signed, viber_with
from tests.tcp_proxy import TcpProxy

CALLBACK_LOGGERS = ("gateway.api.http_api", "gateway.store.group_commit", "aiohttp")


def from_callback_path(record: logging.LogRecord) -> bool:
    return record.name.startswith(CALLBACK_LOGGERS)


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """No ERROR and no traceback from the callback path (the handler, the event batcher, aiohttp)."""
    bad = [r for r in caplog.records if from_callback_path(r) and (r.levelno >= logging.ERROR or r.exc_info)]
    assert bad == [], [r.getMessage() for r in bad]


async def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes, str | None]:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers or {}) as r:
        return r.status, await r.read(), r.headers.get("Retry-After")


async def rows(db: asyncpg.Connection) -> int:
    count = await db.fetchval("SELECT count(*) FROM kaskad_delivery_events")
    assert isinstance(count, int)
    return count


async def test_ten_kb_of_nesting_to_vk_is_refused_as_unauthenticated_without_a_traceback(
    app: KaskadApp, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    # VK's secret is inside the body, so a body too deep to parse cannot be authenticated:
    # 401, as for any callback whose secret cannot be checked. The depth is found by a byte
    # scan; the JSON parser (and its recursion) never sees the body.
    caplog.set_level(logging.WARNING)
    url = f"http://127.0.0.1:{app.http_port}/callbacks/vk"
    deep = b"[" * 5_000 + b"]" * 5_000
    secret = app.adapters["vk"].settings.callback_secret  # type: ignore[attr-defined]
    beside_secret = b'{"secret": "%s", "group_id": 1, "x": %s}' % (secret.encode(), deep)
    for body in (deep, beside_secret, b"{" * 10_000):
        for _ in range(20):
            assert (await post(url, body))[0] == 401
    assert await rows(db) == 0
    assert_no_traceback(caplog)
    assert not any("RecursionError" in r.getMessage() for r in caplog.records)
    # Sixty refusals of one kind are one line (or a few): repeated warnings are rate-limited.
    assert len([r for r in caplog.records if r.name == "gateway.api.http_api"]) <= 3


async def test_signed_callbacks_with_absurd_values_get_400_and_write_nothing(
    app: KaskadApp, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    base = f"http://127.0.0.1:{app.http_port}"
    for provider, body in ABSURD:
        adapter = app.adapters[provider]
        status, reply, _ = await post(base + adapter.callback_path, body, signed(adapter, body))
        assert status == 400, (provider, body[:200], reply)
        assert json.loads(reply)["error"] == "malformed callback"
    assert await rows(db) == 0
    assert_no_traceback(caplog)


async def test_a_report_dated_days_ahead_of_the_gateway_is_malformed(
    app: KaskadApp, db: asyncpg.Connection
) -> None:
    adapter = app.adapters["viber"]
    url = f"http://127.0.0.1:{app.http_port}/callbacks/viber"
    ahead = int((datetime.now(UTC) + timedelta(days=3)).timestamp() * 1000)
    body = body_of(viber_with(timestamp=ahead))
    status, reply, _ = await post(url, body, signed(adapter, body))
    assert (status, json.loads(reply)["reason"]) == (400, "timestamp in the future")
    skewed = body_of(viber_with(timestamp=ahead - 2 * 86_400_000 - 60_000, message_token=1))
    assert (await post(url, skewed, signed(adapter, skewed)))[0] == 200  # a few hours of skew is fine
    assert await rows(db) == 1


async def test_the_sane_reports_are_recorded(app: KaskadApp, db: asyncpg.Connection) -> None:
    secret = app.adapters["vk"].settings.callback_secret  # type: ignore[attr-defined]
    for name, adapter in app.adapters.items():
        body = body_of(sane(name, secret))
        assert (
            await post(
                f"http://127.0.0.1:{app.http_port}{adapter.callback_path}", body, signed(adapter, body)
            )
        )[0] == 200
    assert await rows(db) == 4


@pytest.fixture
async def proxied_app(settings: Settings) -> AsyncIterator[tuple[KaskadApp, TcpProxy]]:
    assert settings.database_url and settings.redis_url
    proxy = await TcpProxy.for_url(settings.database_url)
    url = proxy.url_for(settings.database_url)
    started = await KaskadApp.start(
        settings.with_overrides(database_url=url), backends=Backends(url, settings.redis_url)
    )
    try:
        yield started, proxy
    finally:
        await proxy.restore()  # so the app can stop cleanly
        await started.stop(grace=None)
        await proxy.close()


async def test_callbacks_during_a_database_outage_get_503_with_retry_after_and_one_warning(
    proxied_app: tuple[KaskadApp, TcpProxy], db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app, proxy = proxied_app
    adapter = app.adapters["viber"]
    url = f"http://127.0.0.1:{app.http_port}/callbacks/viber"
    bodies = [body_of(viber_with(message_token=token)) for token in range(1, 12)]

    assert (await post(url, bodies[0], signed(adapter, bodies[0])))[0] == 200

    await proxy.cut()
    during = [await post(url, body, signed(adapter, body)) for body in bodies[1:]]
    assert {(status, retry_after) for status, _, retry_after in during} == {(503, "5")}
    assert await rows(db) == 1  # the direct connection sees nothing new

    await proxy.restore()
    answers = []
    for body in bodies[1:]:  # the provider retries each; the pool reconnects on the way
        for _ in range(100):
            status = (await post(url, body, signed(adapter, body)))[0]
            if status != 503:
                break
            await asyncio.sleep(0.05)
        answers.append(status)
    assert answers == [200] * 10
    assert await rows(db) == 11

    mine = [r for r in caplog.records if r.name == "gateway.api.http_api"]
    assert [(r.levelname, "unavailable" in r.getMessage()) for r in mine if r.levelno >= logging.WARNING] == [
        ("WARNING", True)
    ]
    assert [r.getMessage() for r in mine if r.levelno == logging.INFO] == [
        "PostgreSQL is back: callbacks are recorded again"
    ]
    assert not [r for r in caplog.records if r.name == "gateway.store.group_commit"]
    assert_no_traceback(caplog)
