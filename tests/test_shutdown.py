"""SIGTERM drains: health turns NOT_SERVING first, calls in flight finish and commit, none is
CANCELLED, workers finish the batch they hold, and the process exits 0.

The gateway runs as a real process (``kaskad serve``) against the provider simulator, with
many clients sending at once when the signal arrives.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kaskad.v1 import notification_pb2, notification_pb2_grpc
from lab.simulator import run_simulator
from lab.simulator.settings import LatencyRange, ProviderLatencies, SimulatorSettings
from tests.cascade_harness import free_port
from tests.conftest import create_key
from tests.providers.provider_harness import PROMPT_POPULATION

SENDERS = 32
# Submits take a while, so that workers hold submits in flight when the signal comes.
SLOWISH = LatencyRange(0.05, 0.3)


async def _start_gateway(env: dict[str, str], grpc_port: int, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.runtime.cli", "serve",
            env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=60)
        health = health_pb2_grpc.HealthStub(channel)
        for _ in range(600):
            status = await health.Check(health_pb2.HealthCheckRequest())
            if status.status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.05)
    return process


async def test_sigterm_with_calls_in_flight_cancels_none_and_commits_every_ok(
    database_url: str, redis_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    grpc_port, http_port = free_port(), free_port()
    simulator = await run_simulator(
        SimulatorSettings(
            callback_base_url=f"http://127.0.0.1:{http_port}",
            population=PROMPT_POPULATION,
            latencies=ProviderLatencies(
                vk=SLOWISH, viber=SLOWISH, sms=SLOWISH, voice=SLOWISH, read=SLOWISH, slow=SLOWISH
            ),
        ),
        port=0,
    )
    env = {
        **os.environ,
        "KASKAD_DATABASE_URL": database_url,
        "KASKAD_REDIS_URL": redis_url,
        "KASKAD_REDIS_KEY_PREFIX": f"drain-{grpc_port}:",
        "KASKAD_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "KASKAD_HTTP_ADDRESS": f"127.0.0.1:{http_port}",
        "KASKAD_DATA_DIR": str(tmp_path),
        "KASKAD_PROVIDER_BASE_URL": simulator.base_url,
        "KASKAD_WORKERS": "2",
        "KASKAD_ALLOW_SIMULATOR_CREDENTIALS": "true",
        # Long enough for a load balancer's (here: the test's) health poll to see NOT_SERVING.
        "KASKAD_SHUTDOWN_DELAY": "1",
        "KASKAD_SHUTDOWN_GRACE": "60",
    }
    log = tmp_path / "gateway.log"
    key = await create_key(database_url, "courier")
    auth = [("authorization", f"Bearer {key}")]
    process = await _start_gateway(env, grpc_port, log)
    outcomes: dict[str, grpc.StatusCode] = {}
    signalled = asyncio.Event()
    health_seen: list[str] = []

    async def send(stub: notification_pb2_grpc.NotificationServiceStub, sender: int) -> None:
        for i in range(100_000):
            idempotency_key = f"drain-{sender}-{i}"
            request = notification_pb2.SendNotificationRequest(
                idempotency_key=idempotency_key,
                recipient=notification_pb2.Recipient(phone=f"+7916{sender:03d}{i:04d}"),
                text="Your parcel is on its way",
            )
            try:
                await stub.SendNotification(request, metadata=auth, timeout=120)
                outcomes[idempotency_key] = grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                outcomes[idempotency_key] = exc.code()
                if signalled.is_set() and exc.code() == grpc.StatusCode.UNAVAILABLE:
                    return  # the gateway is gone: this client would now go to another one
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    return

    async def watch_health() -> None:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for _ in range(100_000):
                try:
                    response = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                except grpc.aio.AioRpcError as exc:
                    health_seen.append(exc.code().name)
                    return
                health_seen.append(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))
                await asyncio.sleep(0.01)

    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = notification_pb2_grpc.NotificationServiceStub(channel)
            senders = [asyncio.create_task(send(stub, n)) for n in range(SENDERS)]
            for _ in range(2000):  # mid-stream: a few hundred accepted, cascades under way
                if sum(code == grpc.StatusCode.OK for code in outcomes.values()) >= 300:
                    break
                await asyncio.sleep(0.01)
            watcher = asyncio.create_task(watch_health())
            await asyncio.sleep(0.05)  # the watcher has seen SERVING at least once
            process.send_signal(signal.SIGTERM)
            signalled.set()
            await asyncio.wait_for(asyncio.gather(*senders, watcher), timeout=120)
        await asyncio.wait_for(process.wait(), timeout=120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await simulator.close()
    output = log.read_text()
    assert process.returncode == 0, output

    codes = {code.name for code in outcomes.values()}
    assert codes <= {"OK", "UNAVAILABLE"}, (codes, output)
    ok = sorted(k for k, code in outcomes.items() if code == grpc.StatusCode.OK)
    assert len(ok) >= 300
    stored = {
        r["idempotency_key"] for r in await db.fetch("SELECT idempotency_key FROM kaskad_notifications")
    }
    assert set(ok) <= stored, "a call answered OK was not committed"

    # Health said NOT_SERVING before the port closed.
    assert health_seen[0] == "SERVING", health_seen
    assert "NOT_SERVING" in health_seen, health_seen
    after = health_seen[health_seen.index("NOT_SERVING") :]
    assert set(after) == {"NOT_SERVING", "UNAVAILABLE"} and after[-1] == "UNAVAILABLE", health_seen

    # The workers finished the batches they held: every submit a provider accepted has its
    # result recorded, and no item is left leased to the process that exited.
    accepted = {(provider, submit.message_id) for (provider, _), submit in simulator.state.accepted.items()}
    rows = await db.fetch("SELECT provider, provider_message_id FROM kaskad_attempts")
    recorded = {(r["provider"], r["provider_message_id"]) for r in rows}
    assert accepted, "no submit was under way"
    assert accepted <= recorded, f"{len(accepted - recorded)} accepted submits were not recorded"
    leased = "SELECT count(*) FROM kaskad_work_items WHERE done_at IS NULL AND lease_owner IS NOT NULL"
    assert await db.fetchval(leased) == 0
