"""Shared by the end-to-end tests: Kaskad wired to the provider simulator over real HTTP.

``start_cascade`` starts the simulator (fast latencies, seeded population, optional
faults) and a Kaskad app pointed at it, with callbacks coming back to the app's HTTP port.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace

import aiohttp
import asyncpg
import grpc
import pytest
from opentelemetry.sdk.trace import SpanProcessor

from gateway.core.clock import Clock, SystemClock
from gateway.core.config import Settings
from gateway.runtime.app import Backends, KaskadApp
from kaskad.v1 import notification_pb2, notification_pb2_grpc
from lab.simulator import run_simulator
from lab.simulator.population import Population
from lab.simulator.settings import (
    FaultSettings,
    LatencyRange,
    PopulationSettings,
    ProviderLatencies,
    SimulatorSettings,
)
from tests.conftest import create_key
from tests.providers.provider_harness import PROMPT_POPULATION

SEED = 11
FAST = LatencyRange(0.005, 0.03)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def phone_where(predicate: Callable[[Population], Callable[[str], bool]], skip: int = 0) -> str:
    population = Population(SEED, SimulatorSettings().population)
    test = predicate(population)
    found = 0
    for i in range(100_000):
        phone = f"+7916{i:07d}"
        if test(phone):
            if found == skip:
                return phone
            found += 1
    raise AssertionError("no such phone in the simulated population")


@dataclass
class Cascade:
    app: KaskadApp
    simulator: object
    sim_url: str
    stub: notification_pb2_grpc.NotificationServiceStub
    auth: list[tuple[str, str]]

    async def send(self, phone: str, **fields: object) -> notification_pb2.SendNotificationResponse:
        values: dict[str, object] = {
            "idempotency_key": str(uuid.uuid4()),
            "recipient": notification_pb2.Recipient(phone=phone),
            "text": "Your parcel 1234 is on its way",
        }
        values.update(fields)
        request = notification_pb2.SendNotificationRequest(**values)  # type: ignore[arg-type]
        return await self.stub.SendNotification(request, metadata=self.auth)

    async def get(
        self, notification_id: str, auth: list[tuple[str, str]] | None = None
    ) -> notification_pb2.Notification:
        response = await self.stub.GetNotification(
            notification_pb2.GetNotificationRequest(notification_id=notification_id),
            metadata=auth or self.auth,
        )
        return response.notification

    async def sim(self, method: str, path: str) -> dict[str, object]:
        async with aiohttp.ClientSession() as http, http.request(method, self.sim_url + path) as response:
            assert response.status == 200
            return dict(await response.json())

    async def settle(self) -> None:
        """Run due work, let the simulator post every callback that caused, run the work they queued."""
        await self.app.runner.run_until_idle()
        await self.sim("POST", "/_sim/settle")
        await self.app.runner.run_until_idle()

    async def wait_final(
        self, notification_id: str, rounds: int = 400, auth: list[tuple[str, str]] | None = None
    ) -> notification_pb2.Notification:
        """Poll until the notification is final (bounded; a hang fails the test, it does not time it).
        ``auth``: the calling client's metadata, when another client sent it."""
        for _ in range(rounds):
            await self.settle()
            notification = await self.get(notification_id, auth)
            if notification.state not in (
                notification_pb2.NOTIFICATION_STATE_ACCEPTED,
                notification_pb2.NOTIFICATION_STATE_IN_PROGRESS,
            ):
                return notification
            await asyncio.sleep(0.02)
        raise AssertionError(f"notification {notification_id} never finished: {notification}")


StartCascade = Callable[..., Awaitable[Cascade]]


@pytest.fixture
async def start_cascade(settings: Settings, database_url: str) -> AsyncIterator[StartCascade]:
    started: list[tuple[KaskadApp, object, grpc.aio.Channel]] = []

    async def start(
        clock: Clock | None = None,
        faults: FaultSettings | None = None,
        workers: int = 0,
        population: PopulationSettings | None = None,
        span_processors: Sequence[SpanProcessor] = (),
        latencies: ProviderLatencies | None = None,
        **overrides: object,
    ) -> Cascade:
        assert settings.database_url and settings.redis_url
        for tries_left in range(4, -1, -1):
            # The simulator must know the callback port before the gateway binds it; another
            # process may take that free port in between, so a taken port is tried again.
            http_port = free_port()
            simulator = await run_simulator(
                SimulatorSettings(
                    seed=SEED,
                    callback_base_url=f"http://127.0.0.1:{http_port}",
                    faults=faults or FaultSettings(),
                    population=population or PROMPT_POPULATION,
                    latencies=latencies
                    or ProviderLatencies(vk=FAST, viber=FAST, sms=FAST, voice=FAST, read=FAST, slow=FAST),
                ),
                port=0,
            )
            try:
                app = await KaskadApp.start(
                    replace(
                        settings,
                        http_address=f"127.0.0.1:{http_port}",
                        provider_base_url=simulator.base_url,
                        workers=workers,
                        **overrides,  # type: ignore[arg-type]
                    ),
                    clock=clock or SystemClock(),
                    backends=Backends(settings.database_url, settings.redis_url),
                    span_processors=span_processors,
                )
                break
            except OSError as exc:
                await simulator.close()
                if exc.errno != errno.EADDRINUSE or not tries_left:
                    raise
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
        started.append((app, simulator, channel))
        key = await create_key(database_url, f"courier-{uuid.uuid4().hex[:6]}")
        return Cascade(
            app,
            simulator,
            simulator.base_url,
            notification_pb2_grpc.NotificationServiceStub(channel),
            [("authorization", f"Bearer {key}")],
        )

    yield start
    for app, simulator, channel in reversed(started):
        await channel.close()
        await app.stop()
        await simulator.close()  # type: ignore[attr-defined]


async def delivered_notifications(cascade: Cascade, db: asyncpg.Connection) -> Counter[str]:
    """How many times the simulator delivered each notification to a person."""
    deliveries = (await cascade.sim("GET", "/_sim/deliveries"))["deliveries"]
    rows = await db.fetch("SELECT provider, provider_message_id, notification_id FROM kaskad_attempts")
    owner = {(r["provider"], r["provider_message_id"]): str(r["notification_id"]) for r in rows}
    return Counter(owner[(d["provider"], str(d["message_id"]))] for d in deliveries)  # type: ignore[union-attr]


async def run_batch_to_the_end(cascade: Cascade, db: asyncpg.Connection, count: int, key_prefix: str) -> None:
    """Send ``count`` notifications in one batch (every third long and Cyrillic: several SMS
    segments) and wait until every one is final and its late reports are in."""
    requests = [
        notification_pb2.SendNotificationRequest(
            idempotency_key=f"{key_prefix}-{i}",
            recipient=notification_pb2.Recipient(phone=f"+7916{i:07d}"),
            text=(
                "Заказ {0} передан курьеру, ожидайте доставку сегодня. " * 2
                if i % 3 == 0
                else "Parcel {0} is out"
            ).format(i),
        )
        for i in range(count)
    ]
    await cascade.stub.SendNotificationBatch(
        notification_pb2.SendNotificationBatchRequest(requests=requests), metadata=cascade.auth, timeout=60
    )
    for _ in range(600):
        await cascade.sim("POST", "/_sim/settle")
        if not await db.fetchval(
            "SELECT count(*) FROM kaskad_notifications WHERE state IN ('accepted', 'in_progress')"
        ):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the batch never finished")
    await cascade.sim("POST", "/_sim/settle")  # late reports (reads, billing) after the final state
    await cascade.app.runner.run_until_idle()
