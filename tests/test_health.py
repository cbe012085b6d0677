"""gRPC health tells the truth: NOT_SERVING while PostgreSQL cannot serve, SERVING once it can.

The outage is a TCP proxy between the gateway and the machine's PostgreSQL that the test cuts
and restores (tests/tcp_proxy.py); the shared server itself is never stopped.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.api.server import SERVICE_NAMES
from gateway.core.config import Settings
from gateway.core.errors import StoreUnavailable
from gateway.runtime.app import Backends, KaskadApp
from gateway.runtime.health import HealthMonitor, PostgresProbe
from gateway.store.postgres import connect_one
from kaskad.v1 import notification_pb2, notification_pb2_grpc
from tests.conftest import create_key
from tests.tcp_proxy import TcpProxy

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_monitor_publishes_changes_and_logs_each_once(caplog: pytest.LogCaptureFixture) -> None:
    answers = [True, False, False, False, True, True, False]
    published: list[bool] = []

    async def probe() -> None:
        if not answers.pop(0):
            raise StoreUnavailable("PostgreSQL is unavailable (ConnectionRefusedError)")

    async def publish(serving: bool) -> None:
        published.append(serving)

    monitor = HealthMonitor(probe, publish, interval=1.0)
    with caplog.at_level(logging.INFO, logger="gateway.runtime.health"):
        seen = [await monitor.check() for _ in range(7)]
    assert seen == [True, False, False, False, True, True, False]
    assert published == [True, False, True, False]
    assert [(r.levelname, "NOT_SERVING" in r.getMessage()) for r in caplog.records] == [
        ("WARNING", True),
        ("INFO", False),
        ("WARNING", True),
    ]
    assert "ConnectionRefusedError" in caplog.records[0].getMessage()


async def test_probe_fails_while_the_proxy_is_cut_and_passes_after(database_url: str) -> None:
    proxy = await TcpProxy.for_url(database_url)
    probe = PostgresProbe(lambda: connect_one(proxy.url_for(database_url)), timeout=5.0)
    try:
        await probe()
        await proxy.cut()
        with pytest.raises(StoreUnavailable):
            await probe()
        with pytest.raises(StoreUnavailable):  # a new connection is refused too
            await probe()
        await proxy.restore()
        await probe()
    finally:
        await probe.aclose()
        await proxy.close()


async def _statuses(health: health_pb2_grpc.HealthStub) -> set[int]:
    names = ("", *SERVICE_NAMES)
    return {(await health.Check(health_pb2.HealthCheckRequest(service=name))).status for name in names}


async def _until(health: health_pb2_grpc.HealthStub, status: int) -> None:
    for _ in range(600):  # bounded: a monitor that never flips fails the test
        if await _statuses(health) == {status}:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"health never became {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}")


async def test_health_is_not_serving_while_postgres_is_down_and_serving_after(
    settings: Settings, database_url: str, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await TcpProxy.for_url(database_url)
    proxied = proxy.url_for(database_url)
    app = await KaskadApp.start(
        settings.with_overrides(database_url=proxied, health_interval=timedelta(milliseconds=100)),
        backends=Backends(proxied, redis_url),
    )
    key = await create_key(database_url, "courier")
    auth = [("authorization", f"Bearer {key}")]

    def send(i: int) -> notification_pb2.SendNotificationRequest:
        return notification_pb2.SendNotificationRequest(
            idempotency_key=f"outage-{i}",
            recipient=notification_pb2.Recipient(phone="+79161234567"),
            text="hi",
        )

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = notification_pb2_grpc.NotificationServiceStub(channel)
            assert await _statuses(health) == {SERVING}
            await stub.SendNotification(send(0), metadata=auth, timeout=30)

            with caplog.at_level(logging.INFO, logger="gateway.runtime.health"):
                await proxy.cut()
                await _until(health, NOT_SERVING)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.SendNotification(send(1), metadata=auth, timeout=30)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                for _ in range(3):  # more failed probes: still one warning
                    assert not await app.health_monitor.check()

                await proxy.restore()
                await _until(health, SERVING)
                assert await app.health_monitor.check()
            refusals = []
            for i in range(2, 100):  # the pool reconnects on its own; bounded
                try:
                    await stub.SendNotification(send(i), metadata=auth, timeout=30)
                    break
                except grpc.aio.AioRpcError as exc:
                    refusals.append(exc.code())
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("sends never succeeded after PostgreSQL came back")
            assert set(refusals) <= {grpc.StatusCode.UNAVAILABLE}
    finally:
        await app.stop()
        await proxy.close()
    health_lines = [
        (r.levelname, r.getMessage()) for r in caplog.records if r.name == "gateway.runtime.health"
    ]
    assert [level for level, _ in health_lines] == ["WARNING", "INFO"], health_lines
