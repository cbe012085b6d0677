"""kill -9 of the gateway during sends and callbacks, with callbacks retried for only about a second.

The gateway (``kaskad serve``) and the provider simulator (``python -m providers.simulator``)
run as separate processes; :func:`run_kill_test` sends notifications in batches, kills the
gateway with SIGKILL several times (during the sends, then while reports come in), restarts
it at once each time, lets everything finish, and counts from the database and the
simulator's ``/_sim/deliveries`` and ``/_sim/billing``. Used by ``tests/test_crash.py`` (small)
and ``perf/kill_test.py`` (bigger).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kaskad.v1 import notification_pb2, notification_pb2_grpc
from tests.cascade_harness import free_port


@dataclass(frozen=True, slots=True)
class KillFigures:
    accepted: int
    kills: int
    open_left: int  # accepted but not final at the end: lost
    duplicates: int  # notifications that reached the person more than once
    false_failed: int  # FAILED or EXPIRED although the simulator delivered
    billed_twice: int  # provider messages billed more than once
    delivered_twice_by_one_provider: int
    states: dict[str, int]
    seconds: float
    duplicate_routes: dict[str, int]  # the providers that reached one person twice, "vk+viber"


async def _gateway(env: dict[str, str], grpc_port: int, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway.cli",
            "serve",
            env=env,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
        )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        await asyncio.wait_for(channel.channel_ready(), timeout=60)
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    return process


async def _simulator(port: int, callback_port: int, log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "providers.simulator", "--port", str(port),
            "--callback-url", f"http://127.0.0.1:{callback_port}", "--fast",
            "--callback-retry-for", "1.0", "--callback-retry-every", "0.2",
            stdout=out, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    for _ in range(200):
        try:
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/_sim/stats") as r:
                if r.status == 200:
                    return process
        except aiohttp.ClientError:
            await asyncio.sleep(0.05)
    raise AssertionError("the simulator did not start")


async def _open(db: asyncpg.Connection) -> int:
    query = "SELECT count(*) FROM kaskad_notifications WHERE state IN ('accepted', 'in_progress')"
    return int(await db.fetchval(query))


async def _send_batch(grpc_port: int, auth: list[tuple[str, str]], start: int, size: int) -> int:
    """Send one batch, again on UNAVAILABLE (the same idempotency keys); returns how many got OK."""
    batch = notification_pb2.SendNotificationBatchRequest(
        requests=[
            notification_pb2.SendNotificationRequest(
                idempotency_key=f"kill-{i}",
                recipient=notification_pb2.Recipient(phone=f"+7916{i:07d}"),
                text=f"Parcel {i} is on its way",
            )
            for i in range(start, start + size)
        ]
    )
    for _ in range(100):
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
                stub = notification_pb2_grpc.NotificationServiceStub(channel)
                response = await stub.SendNotificationBatch(batch, metadata=auth, timeout=60)
            return sum(r.WhichOneof("result") == "response" for r in response.results)
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            await asyncio.sleep(0.2)
    raise AssertionError("the gateway never came back")


async def run_kill_test(
    database_url: str,
    redis_url: str,
    db: asyncpg.Connection,
    api_key: str,
    work_dir: Path,
    *,
    total: int,
    batch: int,
    kills: int,
    finish_within_s: float,
) -> KillFigures:
    started = time.monotonic()
    grpc_port, http_port, sim_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    simulator = await _simulator(sim_port, http_port, work_dir / "simulator.log")
    env = {
        **os.environ,
        "KASKAD_DATABASE_URL": database_url,
        "KASKAD_REDIS_URL": redis_url,
        "KASKAD_REDIS_KEY_PREFIX": f"kill-{grpc_port}:",
        "KASKAD_GRPC_ADDRESS": f"127.0.0.1:{grpc_port}",
        "KASKAD_HTTP_ADDRESS": f"127.0.0.1:{http_port}",
        "KASKAD_DATA_DIR": str(work_dir),
        "KASKAD_PROVIDER_BASE_URL": sim_url,
        "KASKAD_WORKERS": "2",
        "KASKAD_ALLOW_SIMULATOR_CREDENTIALS": "true",
        "KASKAD_WORK_LEASE": "2",
        # Short waits, so cascades that lost a report move on within the run.
        "KASKAD_STEP_WAIT_MIN": "3",
        "KASKAD_STEP_WAIT_DEFAULT": "3",
        "KASKAD_OVERDUE_WAIT_GRACE": "2",
        "KASKAD_STATUS_RECHECK_AFTER": "2",
    }
    log = work_dir / "gateway.log"
    auth = [("authorization", f"Bearer {api_key}")]
    gateway = await _gateway(env, grpc_port, log)
    accepted = 0
    killed = 0
    # Kill points: spread over the sends, the rest while reports come in after them.
    batches = max(1, total // batch)
    kill_after = {round((k + 1) * batches / (kills + 1)) for k in range(kills)}
    try:
        for index in range(batches):
            accepted += await _send_batch(grpc_port, auth, index * batch, batch)
            if index + 1 in kill_after and killed < kills:
                await asyncio.sleep(0.3)  # submits and callbacks in flight
                gateway.send_signal(signal.SIGKILL)
                await gateway.wait()
                killed += 1
                gateway = await _gateway(env, grpc_port, log)
        while killed < kills:  # the rest during the reports
            await asyncio.sleep(0.5)
            gateway.send_signal(signal.SIGKILL)
            await gateway.wait()
            killed += 1
            gateway = await _gateway(env, grpc_port, log)
        deadline = time.monotonic() + finish_within_s
        while time.monotonic() < deadline and await _open(db) > 0:  # noqa: ASYNC110 - polls PostgreSQL
            await asyncio.sleep(0.25)
        open_left = await _open(db)
        async with aiohttp.ClientSession() as http:
            await (await http.post(sim_url + "/_sim/settle")).read()
            deliveries = (await (await http.get(sim_url + "/_sim/deliveries")).json())["deliveries"]
            billing = (await (await http.get(sim_url + "/_sim/billing")).json())["entries"]
    finally:
        for process in (gateway, simulator):
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(process.wait(), timeout=30)
                except TimeoutError:
                    process.kill()
                    await process.wait()

    rows = await db.fetch(
        "SELECT a.provider, a.provider_message_id, a.dedupe_key, a.notification_id, n.state "
        "FROM kaskad_attempts a JOIN kaskad_notifications n USING (notification_id)"
    )
    by_message = {(r["provider"], r["provider_message_id"]): r for r in rows}
    by_dedupe = {(r["provider"], r["dedupe_key"]): r for r in rows}
    owners = []
    for d in deliveries:
        row = by_message.get((d["provider"], str(d["message_id"]))) or by_dedupe.get(
            (d["provider"], d["dedupe_key"])
        )
        owners.append(row)
    per_notification = Counter(r["notification_id"] for r in owners if r is not None)
    per_attempt = Counter((d["provider"], d["dedupe_key"]) for d in deliveries)
    reached = {r["notification_id"]: r["state"] for r in owners if r is not None}
    providers_of: dict[object, list[str]] = {}
    for r in owners:
        if r is not None:
            providers_of.setdefault(r["notification_id"], []).append(r["provider"])
    routes = Counter("+".join(p) for p in providers_of.values() if len(p) > 1)
    states = Counter(r["state"] for r in await db.fetch("SELECT state FROM kaskad_notifications"))
    return KillFigures(
        accepted=accepted,
        kills=killed,
        open_left=open_left,
        duplicates=sum(1 for n in per_notification.values() if n > 1),
        false_failed=sum(1 for state in reached.values() if state in ("failed", "expired")),
        billed_twice=sum(
            1 for n in Counter((b["provider"], b["message_id"]) for b in billing).values() if n > 1
        ),
        delivered_twice_by_one_provider=sum(1 for n in per_attempt.values() if n > 1),
        states=dict(states),
        seconds=round(time.monotonic() - started, 1),
        duplicate_routes=dict(routes),
    )
