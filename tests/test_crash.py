"""Gateway crashes, deploys and PostgreSQL outages lose nothing and send nothing twice.

The gateway runs as a real process (``kaskad serve``) against the provider simulator. The
first test kills it with SIGKILL halfway through 2,000 notifications, with callbacks retried
long; the others (``tests/kill_harness.py``) strike kill -9, SIGTERM restarts or a 20 s
PostgreSQL outage during sends, with callbacks retried for only about a second. Each checks
that every notification ends in a final state and that no person received one twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import grpc

from kaskad.v1 import notification_pb2, notification_pb2_grpc
from lab.simulator import run_simulator
from lab.simulator.settings import LatencyRange, ProviderLatencies, SimulatorSettings
from tests.cascade_harness import free_port
from tests.conftest import create_key
from tests.kill_harness import GatewayProcess, KillFigures, open_notifications, run_kill_test
from tests.providers.provider_harness import PROMPT_POPULATION

TOTAL = 2000
FAST = LatencyRange(0.01, 0.2)


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
    gateway = GatewayProcess(env, grpc_port, log)
    try:
        await gateway.start()
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
            if await open_notifications(db) <= TOTAL // 2:
                break
            await asyncio.sleep(0.05)
        assert 0 < await open_notifications(db) < TOTAL
        await gateway.restart(signal.SIGKILL)
        for _ in range(1200):
            if await open_notifications(db) == 0:
                break
            await asyncio.sleep(0.1)
        assert await open_notifications(db) == 0, (
            "every notification must reach a final state after the restart"
        )
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
        await gateway.stop()
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
    assert_nothing_lost_or_twice(figures)


async def test_a_20_s_postgresql_outage_during_sends_with_callbacks_retried_for_a_second(
    database_url: str, redis_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """PostgreSQL cut for 20 s while the gateway runs: calls get UNAVAILABLE and are retried,
    health says NOT_SERVING, callbacks get 503 and are lost after a second of retries."""
    key = await create_key(database_url, "courier")
    figures = await run_kill_test(
        database_url, redis_url, db, key, tmp_path,
        total=400, batch=50, kills=1, finish_within_s=150, fault="db_outage", outage_s=20,
    )  # fmt: skip
    print(figures)
    assert figures.kills == 1
    assert_nothing_lost_or_twice(figures)
    assert figures.health_during_outage.get("NOT_SERVING", 0) > 0, figures.health_during_outage
    assert figures.callback_answers.get("callback_answered_503", 0) > 0, figures.callback_answers
    assert any("UNAVAILABLE" in refusal for refusal in figures.refusals), figures.refusals


async def test_sigterm_restarts_during_sends_cancel_no_call(
    database_url: str, redis_url: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    """A deploy: SIGTERM while a batch is in flight, the gateway drains and exits 0, a new one starts."""
    key = await create_key(database_url, "courier")
    figures = await run_kill_test(
        database_url, redis_url, db, key, tmp_path,
        total=400, batch=50, kills=2, finish_within_s=150, fault="sigterm",
    )  # fmt: skip
    print(figures)
    assert figures.kills == 2
    assert figures.exit_codes == [0, 0]
    assert figures.served_across > 0, "some calls were in flight at a SIGTERM and answered by that gateway"
    assert "CANCELLED" not in figures.refusals, figures.refusals
    assert_nothing_lost_or_twice(figures)


def assert_nothing_lost_or_twice(figures: KillFigures) -> None:
    assert figures.accepted == 400
    assert figures.open_left == 0, "every accepted notification reaches a final state"
    assert figures.delivered_twice_by_one_provider == 0
    assert figures.false_failed == 0, "nothing is FAILED where the simulator delivered"
    assert figures.billed_twice == 0
    assert figures.duplicates == 0, f"people reached twice: {figures.duplicate_routes}"
