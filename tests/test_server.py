"""The server as generic gRPC tools see it: health, reflection, degraded mode, SIGTERM."""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from gateway.api.server import REDIS_HEALTH_NAME
from gateway.core.config import Settings
from gateway.runtime.app import Backends, KaskadApp
from kaskad.v1 import notification_pb2, notification_pb2_grpc
from tests.conftest import create_key


async def test_health_reports_serving(channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "kaskad.v1.NotificationService", REDIS_HEALTH_NAME):
        response = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, service


async def test_reflection_lists_both_services(channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo()
    await call.write(reflection_pb2.ServerReflectionRequest(list_services=""))
    response = await call.read()
    await call.done_writing()
    names = {s.name for s in response.list_services_response.service}
    assert {"kaskad.v1.NotificationService", "kaskad.v1.CostReportService"} <= names
    assert "grpc.health.v1.Health" in names


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_without_redis_it_accepts_and_reports_degraded(settings: Settings, database_url) -> None:
    dead_redis = f"redis://127.0.0.1:{_closed_port()}/0"
    app = await KaskadApp.start(
        settings.with_overrides(redis_url=dead_redis), backends=Backends(database_url, dead_redis)
    )
    try:
        key = await create_key(database_url, "courier")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
            sent = await notification_pb2_grpc.NotificationServiceStub(ch).SendNotification(
                notification_pb2.SendNotificationRequest(
                    idempotency_key="k1",
                    recipient=notification_pb2.Recipient(phone="+79161234567"),
                    text="hello",
                ),
                metadata=[("authorization", f"Bearer {key}")],
            )
            health = health_pb2_grpc.HealthStub(ch)
            overall = await health.Check(health_pb2.HealthCheckRequest(service=""))
            redis = await health.Check(health_pb2.HealthCheckRequest(service=REDIS_HEALTH_NAME))
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{app.http_port}/healthz") as response,
        ):
            body = await response.json()
    finally:
        await app.stop()
    assert sent.notification_id
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert redis.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert body == {"status": "degraded", "checks": {"postgres": True, "redis": False}}


async def test_a_start_that_fails_half_way_closes_what_it_opened(
    settings: Settings, database_url: str, redis_url: str, db
) -> None:
    connected = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    before = await db.fetchval(connected)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=r"(?i)address already in use") as failed:
            await KaskadApp.start(
                settings.with_overrides(http_address=f"127.0.0.1:{port}"),
                backends=Backends(database_url, redis_url),
            )
    assert failed.value.errno == errno.EADDRINUSE
    # The HTTP port came last: by then the pool had connected (and Redis, the providers'
    # sessions, the gRPC server had opened). The pool's connections are gone again.
    assert await db.fetchval(connected) == before
    app = await KaskadApp.start(settings, backends=Backends(database_url, redis_url))
    assert await db.fetchval(connected) > before
    await app.stop()


async def test_sigterm_stops_the_server_gracefully(database_url, redis_url, tmp_path: Path) -> None:
    port = _closed_port()
    env = {
        **os.environ,
        "KASKAD_DATABASE_URL": database_url,
        "KASKAD_REDIS_URL": redis_url,
        "KASKAD_REDIS_KEY_PREFIX": f"sigterm-{uuid.uuid4().hex[:6]}:",
        "KASKAD_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "KASKAD_HTTP_ADDRESS": "127.0.0.1:0",
        "KASKAD_DATA_DIR": str(tmp_path),
        "KASKAD_SHUTDOWN_GRACE": "5",
        "KASKAD_ALLOW_SIMULATOR_CREDENTIALS": "true",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway.runtime.cli",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            await asyncio.wait_for(ch.channel_ready(), timeout=60)
            status = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert status.status == health_pb2.HealthCheckResponse.SERVING
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, output.decode()
    assert b"Shutting down" in output


async def test_a_second_sigterm_cuts_the_drain_short(database_url, redis_url, tmp_path: Path) -> None:
    port = _closed_port()
    env = {
        **os.environ,
        "KASKAD_DATABASE_URL": database_url,
        "KASKAD_REDIS_URL": redis_url,
        "KASKAD_REDIS_KEY_PREFIX": f"sigterm2-{uuid.uuid4().hex[:6]}:",
        "KASKAD_GRPC_ADDRESS": f"127.0.0.1:{port}",
        "KASKAD_HTTP_ADDRESS": "127.0.0.1:0",
        "KASKAD_DATA_DIR": str(tmp_path),
        # A drain that would outlast the test: only the second signal can end it in time.
        "KASKAD_SHUTDOWN_DELAY": "600",
        "KASKAD_ALLOW_SIMULATOR_CREDENTIALS": "true",
        "KASKAD_SHUTDOWN_GRACE": "600",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.runtime.cli", "serve",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    lines: list[bytes] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            await asyncio.wait_for(ch.channel_ready(), timeout=60)
            process.send_signal(signal.SIGTERM)
            while b"Shutting down" not in (line := await asyncio.wait_for(process.stdout.readline(), 60)):
                assert line, b"".join(lines).decode()
                lines.append(line)
            # Draining: health says NOT_SERVING while calls are still served.
            status = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
            assert status.status == health_pb2.HealthCheckResponse.NOT_SERVING
        process.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 1, output.decode()
    assert b"Second signal" in output


async def test_a_watching_load_balancer_sees_not_serving_and_does_not_hold_the_stop(
    settings: Settings, database_url: str, redis_url: str
) -> None:
    app = await KaskadApp.start(settings, backends=Backends(database_url, redis_url))
    seen: list[str] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await watch.read()
        seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(first.status))

        async def follow() -> None:
            while (update := await watch.read()) is not grpc.aio.EOF:
                seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(update.status))

        following = asyncio.create_task(follow())
        # The grace would outlast the test: the stop ends only if the watch lets it.
        await asyncio.wait_for(app.stop(grace=timedelta(seconds=600)), timeout=60)
        await asyncio.wait_for(following, timeout=60)
        code = await watch.code()
    assert seen == ["SERVING", "NOT_SERVING"]
    assert code != grpc.StatusCode.CANCELLED
