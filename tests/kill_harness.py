"""Faults during sends and callbacks, with callbacks retried for only about a second.

The gateway (``kaskad serve``) and the provider simulator (``python -m lab.simulator``)
run as separate processes; :func:`run_kill_test` sends notifications in batches and, while a
batch is in flight, strikes one of three faults several times: kill -9 of the gateway and an
immediate restart (``"kill"``), a SIGTERM, its exit and a restart (``"sigterm"``, a deploy), or
a PostgreSQL outage with the gateway left running (``"db_outage"``: its connections go through
a :class:`~tests.tcp_proxy.TcpProxy` that is cut, then restored). The client retries
``UNAVAILABLE`` with the same idempotency keys, as the README tells callers to. Then it lets
everything finish and counts from the database and the simulator's ``/_sim/deliveries``,
``/_sim/billing`` and ``/_sim/stats``. Used by ``tests/test_crash.py`` (small) and
``perf/kill_test.py`` (bigger).
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
from typing import Literal

import aiohttp
import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kaskad.v1 import notification_pb2, notification_pb2_grpc
from tests.cascade_harness import free_port
from tests.tcp_proxy import TcpProxy

Fault = Literal["kill", "sigterm", "db_outage"]


@dataclass(frozen=True, slots=True)
class KillFigures:
    accepted: int
    kills: int  # faults struck: kills, SIGTERMs or outages
    served_across: int  # calls in flight when a fault struck and answered OK by that gateway
    open_left: int  # accepted but not final at the end: lost
    duplicates: int  # notifications that reached the person more than once
    false_failed: int  # FAILED or EXPIRED although the simulator delivered
    billed_twice: int  # provider messages billed more than once
    delivered_twice_by_one_provider: int
    states: dict[str, int]
    seconds: float
    duplicate_routes: dict[str, int]  # the providers that reached one person twice, "vk+viber"
    refusals: dict[str, int]  # status codes the client got and retried (or not), by name
    exit_codes: list[int]  # of the gateways stopped by SIGTERM
    health_during_outage: dict[str, int]  # gRPC health answers while PostgreSQL was cut
    callback_answers: dict[str, int]  # the simulator's callback_answered_* counters


class GatewayProcess:
    """The ``kaskad serve`` process, restarted after each fault."""

    def __init__(self, env: dict[str, str], grpc_port: int, log: Path) -> None:
        self._env, self._grpc_port, self._log = env, grpc_port, log
        self.process: asyncio.subprocess.Process | None = None
        self.exit_codes: list[int] = []

    async def start(self) -> None:
        with self._log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gateway.runtime.cli", "serve",
                env=self._env, stdout=out, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        # Up once health answers; a connection dropped while the process starts is asked again.
        give_up_at = time.monotonic() + 60
        while True:
            assert self.process.returncode is None, "the gateway exited while starting"
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{self._grpc_port}") as channel:
                    await asyncio.wait_for(channel.channel_ready(), timeout=60)
                    health = health_pb2_grpc.HealthStub(channel)
                    await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                return
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > give_up_at:
                    raise
                await asyncio.sleep(0.1)

    async def restart(self, how: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(how)
        code = await self.process.wait()
        if how == signal.SIGTERM:
            self.exit_codes.append(code)
        await self.start()

    async def stop(self) -> None:
        await _stop(self.process)


async def _stop(process: asyncio.subprocess.Process | None) -> None:
    if process is None or process.returncode is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout=30)
    except TimeoutError:
        process.kill()
        await process.wait()


async def _simulator(port: int, callback_port: int, log: Path, *extra: str) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lab.simulator", "--port", str(port),
            "--callback-url", f"http://127.0.0.1:{callback_port}", "--fast",
            "--callback-retry-for", "1.0", "--callback-retry-every", "0.2", *extra,
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


async def open_notifications(db: asyncpg.Connection) -> int:
    query = "SELECT count(*) FROM kaskad_notifications WHERE state IN ('accepted', 'in_progress')"
    return int(await db.fetchval(query))


class _Client:
    """Sends batches as a caller would: again on UNAVAILABLE or CANCELLED (the whole call or any
    item, with the same idempotency keys) for up to two minutes. Counts what it was refused, and
    which calls were in flight when a fault struck and still got their answer from that gateway."""

    def __init__(self, grpc_port: int, auth: list[tuple[str, str]]) -> None:
        self._grpc_port, self._auth = grpc_port, auth
        self.refusals: Counter[str] = Counter()
        self._tries = 0
        self._open: set[int] = set()  # tries under way
        self._struck: set[int] = set()  # tries under way when a fault struck
        self.served_across = 0  # of those, answered OK by the gateway struck

    def strike(self) -> None:
        self._struck |= self._open

    async def send(self, start: int, size: int, calls: int = 1) -> int:
        """Send notifications ``start`` … ``start + size - 1`` in ``calls`` concurrent calls;
        returns how many got OK."""
        step = -(-size // calls)
        parts = [self._send(i, min(step, start + size - i)) for i in range(start, start + size, step)]
        return sum(await asyncio.gather(*parts))

    async def _send(self, start: int, size: int) -> int:
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
        retried = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
        give_up_at = time.monotonic() + 120
        while time.monotonic() < give_up_at:
            self._tries += 1
            this = self._tries
            self._open.add(this)
            try:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{self._grpc_port}") as channel:
                    stub = notification_pb2_grpc.NotificationServiceStub(channel)
                    response = await stub.SendNotificationBatch(batch, metadata=self._auth, timeout=60)
            except grpc.aio.AioRpcError as exc:
                self.refusals[exc.code().name] += 1
                if exc.code() not in retried:
                    raise
                await asyncio.sleep(0.2)
                continue
            finally:
                self._open.discard(this)
            errors = [r.error for r in response.results if r.WhichOneof("result") == "error"]
            for error in errors:
                name = next((c.name for c in grpc.StatusCode if c.value[0] == error.code), error.code)
                self.refusals[f"item {name}: {error.message[:80]}"] += 1
            if not any(error.code == 14 for error in errors):
                self.served_across += this in self._struck
                return sum(r.WhichOneof("result") == "response" for r in response.results)
            await asyncio.sleep(0.2)
        raise AssertionError("the gateway never came back")


async def _health_while(grpc_port: int, seconds: float) -> Counter[str]:
    """Ask gRPC health every 0.2 s for ``seconds``; how often each answer came."""
    answers: Counter[str] = Counter()
    until = time.monotonic() + seconds
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < until:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                answers[health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)] += 1
            except grpc.aio.AioRpcError as exc:
                answers[exc.code().name] += 1
            await asyncio.sleep(0.2)
    return answers


async def _until_submitted(sim_url: str) -> None:
    """Until the simulator has accepted a submit (at most a minute)."""
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            async with http.get(sim_url + "/_sim/stats") as response:
                counters = (await response.json())["counters"]
            if any(name.endswith("_accepted") and count for name, count in counters.items()):
                return
            await asyncio.sleep(0.1)
    raise AssertionError("no provider took a submit before the outage")


async def _outage(proxy: TcpProxy, grpc_port: int, seconds: float) -> Counter[str]:
    """PostgreSQL gone for ``seconds`` (live connections dropped, new ones refused), then back."""
    await proxy.cut()
    try:
        return await _health_while(grpc_port, seconds)
    finally:
        await proxy.restore()


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
    fault: Fault = "kill",
    outage_s: float = 20.0,
) -> KillFigures:
    started = time.monotonic()
    grpc_port, http_port, sim_port = free_port(), free_port(), free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    # Read reports that come seconds after their delivery are still on their way when the
    # database is cut, however slowly a busy machine sent the notifications before it: the
    # callbacks during the outage the test looks at.
    slow_reads = ("--read-latency", "1", "15") if fault == "db_outage" else ()
    simulator = await _simulator(sim_port, http_port, work_dir / "simulator.log", *slow_reads)
    proxy = await TcpProxy.for_url(database_url) if fault == "db_outage" else None
    env = {
        **os.environ,
        "KASKAD_DATABASE_URL": proxy.url_for(database_url) if proxy else database_url,
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
    auth = [("authorization", f"Bearer {api_key}")]
    gateway = GatewayProcess(env, grpc_port, work_dir / "gateway.log")
    accepted = 0
    struck = 0
    client = _Client(grpc_port, auth)
    health: Counter[str] = Counter()
    outages: list[asyncio.Task[Counter[str]]] = []

    async def strike() -> None:
        nonlocal struck
        struck += 1
        client.strike()
        if fault == "db_outage":
            assert proxy is not None
            # Cut only once providers have taken submits: their reports (reads come seconds
            # after delivery) are then on their way during the outage, however slow the
            # machine was to send what came before.
            await _until_submitted(sim_url)
            outages.append(asyncio.create_task(_outage(proxy, grpc_port, outage_s)))
        else:
            await gateway.restart(signal.SIGKILL if fault == "kill" else signal.SIGTERM)

    # Fault points: spread over the sends, the rest while reports come in after them.
    batches = max(1, total // batch)
    strike_after = {round((k + 1) * batches / (kills + 1)) for k in range(kills)}
    try:
        await gateway.start()
        for index in range(batches):
            if index not in strike_after or struck >= kills:
                accepted += await client.send(index * batch, batch)
                continue
            # Many small calls at once, so some are in flight when the fault strikes.
            sending = asyncio.create_task(client.send(index * batch, batch, calls=batch))
            await asyncio.sleep(0.05)  # earlier submits and callbacks in flight too
            await strike()
            accepted += await sending
        while struck < kills:  # the rest during the reports
            await asyncio.sleep(0.5)
            await strike()
        for outage in outages:
            health.update(await outage)
        deadline = time.monotonic() + finish_within_s
        while time.monotonic() < deadline and await open_notifications(db) > 0:  # noqa: ASYNC110 - polls PostgreSQL
            await asyncio.sleep(0.25)
        open_left = await open_notifications(db)
        async with aiohttp.ClientSession() as http:
            await (await http.post(sim_url + "/_sim/settle")).read()
            deliveries = (await (await http.get(sim_url + "/_sim/deliveries")).json())["deliveries"]
            billing = (await (await http.get(sim_url + "/_sim/billing")).json())["entries"]
            counters = (await (await http.get(sim_url + "/_sim/stats")).json())["counters"]
    finally:
        await gateway.stop()
        await _stop(simulator)
        if proxy is not None:
            await proxy.close()

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
        kills=struck,
        served_across=client.served_across,
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
        refusals=dict(client.refusals),
        exit_codes=gateway.exit_codes,
        health_during_outage=dict(health),
        callback_answers={k: v for k, v in counters.items() if k.startswith("callback_answered_")},
    )
