"""A gateway process killed with SIGKILL halfway through 2,000 notifications loses none.

The gateway runs as a real process (``kaskad serve``) against the provider simulator;
the test kills it with SIGKILL while cascades are under way, starts a new process on the
same database, and checks that every notification ends in a final state and that no
person received one notification twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kaskad.v1 import notification_pb2, notification_pb2_grpc
from providers.simulator import run_simulator
from providers.simulator.settings import LatencyRange, ProviderLatencies, SimulatorSettings
from tests.cascade_harness import free_port
from tests.conftest import create_key
from tests.kill_harness import run_kill_test
from tests.providers.provider_harness import PROMPT_POPULATION

TOTAL = 2000
FAST = LatencyRange(0.01, 0.2)


async def _start_gateway(env: dict[str, str], grpc_port: int, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "serve",
            env=env, stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=60)
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return process


async def _open(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM kaskad_notifications WHERE state IN ('accepted', 'in_progress')"
        )
    )


async def test_sigkill_halfway_loses_nothing_and_sends_nothing_twice(
    database_url: str, redis_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    grpc_port, http_port = free_port(), free_port()
    simulator = await run_simulator(
        SimulatorSettings(
            callback_base_url=f"http://127.0.0.1:{http_port}",
            population=PROMPT_POPULATION,
            latencies=ProviderLatencies(vk=FAST, viber=FAST, sms=FAST, voice=FAST, read=FAST, slow=FAST),
            # Providers retry a refused callback for hours; here about a minute and a half,
            # well past the restart, so reports sent while the gateway is down still arrive.
            callback_attempts=30,
        ),
        port=0,
    )
    env = {
        **os.environ,
        "KASKAD_DATABASE_URL": database_url,
        "KASKAD_REDIS_URL": redis_url,
        "KASKAD_REDIS_KEY_PREFIX": f"crash-{grpc_port}:",
        "KASKAD_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "KASKAD_HTTP_ADDRESS": f"127.0.0.1:{http_port}",
        "KASKAD_DATA_DIR": str(tmp_path),
        "KASKAD_PROVIDER_BASE_URL": simulator.base_url,
        "KASKAD_WORKERS": "2",
        # A short lease, so the takeover happens within the test; step waits longer than the
        # restart, so a report retried by the provider ends its cascade before a fallback starts.
        "KASKAD_WORK_LEASE": "2",
        "KASKAD_STEP_WAIT_MIN": "20",
        "KASKAD_STEP_WAIT_DEFAULT": "20",
        "KASKAD_ALLOW_SIMULATOR_CREDENTIALS": "true",
    }
    log = tmp_path / "gateway.log"
    key = await create_key(database_url, "courier")
    auth = [("authorization", f"Bearer {key}")]
    first = await _start_gateway(env, grpc_port, log)
    second = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = notification_pb2_grpc.NotificationServiceStub(channel)
            for offset in range(0, TOTAL, 1000):
                batch = notification_pb2.SendNotificationBatchRequest(
                    requests=[
                        notification_pb2.SendNotificationRequest(
                            idempotency_key=f"crash-{i}",
                            recipient=notification_pb2.Recipient(phone=f"+7916{i:07d}"),
                            text=f"Parcel {i} is on its way",
                        )
                        for i in range(offset, offset + 1000)
                    ]
                )
                response = await stub.SendNotificationBatch(batch, metadata=auth, timeout=120)
                assert all(r.WhichOneof("result") == "response" for r in response.results)

        for _ in range(600):  # halfway: some finished, many still under way
            if await _open(db) <= TOTAL // 2:
                break
            await asyncio.sleep(0.05)
        assert 0 < await _open(db) < TOTAL
        first.send_signal(signal.SIGKILL)
        await first.wait()

        second = await _start_gateway(env, grpc_port, log)
        for _ in range(1200):
            if await _open(db) == 0:
                break
            await asyncio.sleep(0.1)
        assert await _open(db) == 0, "every notification must reach a final state after the restart"
        assert await db.fetchval("SELECT count(*) FROM kaskad_notifications") == TOTAL

        async with aiohttp.ClientSession() as http:
            await (await http.post(simulator.base_url + "/_sim/settle")).read()
            deliveries = (await (await http.get(simulator.base_url + "/_sim/deliveries")).json())[
                "deliveries"
            ]
        rows = await db.fetch("SELECT provider, provider_message_id, notification_id FROM kaskad_attempts")
        owner = {(r["provider"], r["provider_message_id"]): r["notification_id"] for r in rows}
        per_attempt = Counter((d["provider"], d["dedupe_key"]) for d in deliveries)
        assert max(per_attempt.values()) == 1, "a provider delivered one attempt twice"
        per_notification = Counter(owner[(d["provider"], str(d["message_id"]))] for d in deliveries)
        assert max(per_notification.values()) == 1, "a person received one notification twice"
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), timeout=30)
                except TimeoutError:
                    process.kill()
                    await process.wait()
        await simulator.close()


async def test_kill_9_several_times_with_callbacks_retried_for_a_second(
    database_url: str, redis_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """Reports lost while the gateway is down must not become duplicates or false FAILED."""
    key = await create_key(database_url, "courier")
    figures = await run_kill_test(
        database_url, redis_url, db, key, tmp_path, total=400, batch=50, kills=3, finish_within_s=150
    )
    print(figures)
    assert figures.kills == 3
    assert figures.accepted == 400
    assert figures.open_left == 0, "every accepted notification reaches a final state"
    assert figures.delivered_twice_by_one_provider == 0
    assert figures.false_failed == 0, "nothing is FAILED where the simulator delivered"
    assert figures.billed_twice == 0
    assert figures.duplicates == 0, f"people reached twice: {figures.duplicate_routes}"
