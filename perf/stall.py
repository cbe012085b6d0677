"""One stalled provider must not slow the others: accept to first submit, with and without a stall.

Runs the same load twice against a gateway with the default single worker and the provider
simulator (both in this process, on 127.0.0.1): first fault-free, then with one provider
(``STALL_PROVIDER``, vk) holding ``STALL_RATE`` (10%) of its responses for ``STALL_S`` (12 s).
Each notification allows one channel, the four in turn, so every provider gets a quarter of
the first submits. From the database (``kaskad_notifications.created_at`` to the first
attempt's ``kaskad_attempts.submitted_at``) it prints the other providers' p95 in both runs
and their ratio (the target: at most 2), and writes them to ``perf/results/stall.json``.

Environment: ``KASKAD_DATABASE_URL`` and ``KASKAD_REDIS_URL`` (the servers to use; a fresh
database per run), ``STALL_COUNT`` (1000 notifications), ``STALL_SEND_RATE`` (50 per second),
``STALL_DRAIN`` (60 s at most for the first submits after the last send).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import time
import uuid
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc

from gateway.core.auth import ClientRole, hash_api_key, new_api_key
from gateway.core.clock import SystemClock
from gateway.core.config import Settings
from gateway.runtime.app import Backends, KaskadApp
from gateway.store.postgres import NotificationStore
from kaskad.v1 import common_pb2, notification_pb2, notification_pb2_grpc
from lab.simulator import run_simulator
from lab.simulator.settings import FaultSettings, SimulatorSettings

CHANNELS = (common_pb2.CHANNEL_VK, common_pb2.CHANNEL_VIBER, common_pb2.CHANNEL_SMS, common_pb2.CHANNEL_VOICE)
# First attempts whose submit has an answer (sent, refused or failed): the drain is over once
# every other provider's notification has one.
FIRST_ANSWERED = """
SELECT count(*) FROM kaskad_attempts
WHERE step_index = 0 AND try_number = 1 AND status <> 'submitting' AND provider <> $1
"""
FIRST_SUBMITS = """
SELECT a.provider, extract(epoch FROM a.submitted_at - n.created_at)::float8 AS seconds
FROM kaskad_notifications n JOIN kaskad_attempts a USING (notification_id)
WHERE a.step_index = 0 AND a.try_number = 1 AND a.submitted_at IS NOT NULL
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) > 1 else (values or [0.0])[0]


async def one_run(
    name: str, server_url: str, redis_url: str, faults: dict[str, object] | None
) -> dict[str, object]:
    count = int(os.environ.get("STALL_COUNT", "1000"))
    rate = float(os.environ.get("STALL_SEND_RATE", "50"))
    drain = float(os.environ.get("STALL_DRAIN", "60"))
    stalled = os.environ.get("STALL_PROVIDER", "vk")
    database = f"kaskad_stall_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(server_url)
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = with_database(server_url, database)
    http_port = free_port()
    simulator = await run_simulator(
        SimulatorSettings(seed=5, callback_base_url=f"http://127.0.0.1:{http_port}", faults=FaultSettings()),
        port=0,
    )
    settings = replace(
        Settings(),
        grpc_address="127.0.0.1:0",
        http_address=f"127.0.0.1:{http_port}",
        database_url=url,
        redis_url=redis_url,
        redis_key_prefix=f"kaskad-stall-{uuid.uuid4().hex[:8]}:",
        provider_base_url=simulator.base_url,
        max_backlog=0,
        allow_simulator_credentials=True,  # the simulator is the provider here
    )
    app = await KaskadApp.start(settings, backends=Backends(url, redis_url))
    try:
        if faults:
            simulator.state.update_faults(faults, stalled)
        key = new_api_key()
        await NotificationStore(app.pool).create_client(
            f"stall-{name}", hash_api_key(key), key[:10], SystemClock().now(), ClientRole.SERVICE
        )
        auth = [("authorization", f"Bearer {key}")]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            stub = notification_pb2_grpc.NotificationServiceStub(channel)
            started = time.monotonic()
            sends = []
            for i in range(count):
                # Paced, open loop: a slow answer does not slow the offered load.
                await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
                request = notification_pb2.SendNotificationRequest(
                    idempotency_key=f"{name}-{i}",
                    recipient=notification_pb2.Recipient(phone=f"+7916{i:07d}"),
                    text=f"Parcel {i} is out",
                    channels=[CHANNELS[i % len(CHANNELS)]],
                )
                sends.append(asyncio.ensure_future(stub.SendNotification(request, metadata=auth, timeout=30)))
            await asyncio.gather(*sends)
        give_up = time.monotonic() + drain
        others_expected = sum(1 for i in range(count) if i % len(CHANNELS) != 0)
        while time.monotonic() < give_up:
            if await app.pool.fetchval(FIRST_ANSWERED, stalled) >= others_expected:
                break
            await asyncio.sleep(0.5)
        rows = await app.pool.fetch(FIRST_SUBMITS)
    finally:
        await app.stop(grace=None)
        await simulator.close()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
    others = [r["seconds"] for r in rows if r["provider"] != stalled]
    mine = [r["seconds"] for r in rows if r["provider"] == stalled]
    return {
        "run": name,
        "others_first_submits": len(others),
        "others_p95_s": round(p95(others), 4),
        "others_p50_s": round(statistics.median(others), 4) if others else None,
        "stalled_provider_first_submits": len(mine),
        "stalled_provider_p95_s": round(p95(mine), 4) if mine else None,
    }


async def main() -> None:
    server_url = os.environ.get("KASKAD_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("KASKAD_REDIS_URL", "redis://127.0.0.1:6379/0")
    stall = {
        "timeout_rate": float(os.environ.get("STALL_RATE", "0.1")),
        "stall_s": float(os.environ.get("STALL_S", "12")),
    }
    fault_free = await one_run("fault-free", server_url, redis_url, None)
    print(json.dumps(fault_free))
    stalled = await one_run("stalled", server_url, redis_url, stall)
    print(json.dumps(stalled))
    ratio = float(stalled["others_p95_s"]) / max(float(fault_free["others_p95_s"]), 1e-9)  # type: ignore[arg-type]
    summary = {"fault_free": fault_free, "stalled": stalled, "others_p95_ratio": round(ratio, 2)}
    provider = os.environ.get("STALL_PROVIDER", "vk")
    print(
        f"other providers' p95 accept -> first submit: {fault_free['others_p95_s']} s fault-free, "
        f"{stalled['others_p95_s']} s with {provider} stalling; ratio {ratio:.2f}"
    )
    write(Path(os.environ.get("BENCH_RESULTS", Path(__file__).parent / "results")), summary)


def write(results: Path, summary: dict[str, object]) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "stall.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
