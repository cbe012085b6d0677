"""The cascade end to end: gRPC in, provider simulator over real HTTP, callbacks back in.

Real PostgreSQL, Redis, gRPC and HTTP. Time is either the wall clock with fast simulated
providers (the person is reached in well under a second) or a ManualClock that the test
moves, so waits and fallbacks run without sleeping.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import grpc
import pytest

from gateway.app import Backends, KaskadApp
from gateway.clock import Clock, ManualClock, SystemClock
from gateway.config import Settings
from kaskad.v1 import common_pb2, notification_pb2, notification_pb2_grpc
from providers.callback_auth import hmac_sha256_hex
from providers.simulator import run_simulator
from providers.simulator.population import Population
from providers.simulator.settings import (
    FaultSettings,
    LatencyRange,
    ProviderLatencies,
    SimulatorSettings,
)
from tests.conftest import create_key

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
        request = notification_pb2.SendNotificationRequest(
            idempotency_key=str(uuid.uuid4()),
            recipient=notification_pb2.Recipient(phone=phone),
            text="Your parcel 1234 is on its way",
            **fields,  # type: ignore[arg-type]
        )
        return await self.stub.SendNotification(request, metadata=self.auth)

    async def get(self, notification_id: str) -> notification_pb2.Notification:
        response = await self.stub.GetNotification(
            notification_pb2.GetNotificationRequest(notification_id=notification_id), metadata=self.auth
        )
        return response.notification

    async def sim(self, method: str, path: str) -> dict[str, object]:
        async with aiohttp.ClientSession() as http, http.request(method, self.sim_url + path) as response:
            assert response.status == 200
            return dict(await response.json())

    async def settle(self) -> None:
        """Let the simulator post every callback it has scheduled, then run due work."""
        await self.sim("POST", "/_sim/settle")
        await self.app.runner.run_until_idle()

    async def wait_final(self, notification_id: str, rounds: int = 400) -> notification_pb2.Notification:
        """Poll until the notification is final (bounded; a hang fails the test, it does not time it)."""
        for _ in range(rounds):
            await self.settle()
            notification = await self.get(notification_id)
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
        clock: Clock | None = None, faults: FaultSettings | None = None, workers: int = 0
    ) -> Cascade:
        http_port = free_port()
        simulator = await run_simulator(
            SimulatorSettings(
                seed=SEED,
                callback_base_url=f"http://127.0.0.1:{http_port}",
                faults=faults or FaultSettings(),
                latencies=ProviderLatencies(vk=FAST, viber=FAST, sms=FAST, voice=FAST, read=FAST),
            ),
            port=0,
        )
        assert settings.database_url and settings.redis_url
        app = await KaskadApp.start(
            replace(
                settings,
                http_address=f"127.0.0.1:{http_port}",
                provider_base_url=simulator.base_url,
                workers=workers,
            ),
            clock=clock or SystemClock(),
            backends=Backends(settings.database_url, settings.redis_url),
        )
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


def _steps(notification: notification_pb2.Notification) -> list[str]:
    return [common_pb2.Channel.Name(s.channel) for s in notification.route.steps]


async def delivered_notifications(cascade: Cascade, db: asyncpg.Connection) -> Counter[str]:
    """How many times the simulator delivered each notification to a person."""
    deliveries = (await cascade.sim("GET", "/_sim/deliveries"))["deliveries"]
    rows = await db.fetch("SELECT provider, provider_message_id, notification_id FROM kaskad_attempts")
    owner = {(r["provider"], r["provider_message_id"]): str(r["notification_id"]) for r in rows}
    return Counter(owner[(d["provider"], str(d["message_id"]))] for d in deliveries)  # type: ignore[union-attr]


async def test_reachable_on_vk_is_delivered_by_vk_once(start_cascade, db) -> None:
    cascade = await start_cascade()
    phone = phone_where(lambda p: p.on_vk)
    sent = await cascade.send(phone)
    await cascade.wait_final(sent.notification_id)
    await cascade.settle()  # the read report may follow the delivery report
    done = await cascade.get(sent.notification_id)

    # The simulated person may also read it at once; either report ends the cascade.
    assert done.state in (
        notification_pb2.NOTIFICATION_STATE_DELIVERED,
        notification_pb2.NOTIFICATION_STATE_READ,
    )
    assert _steps(done)[:3] == ["CHANNEL_VK", "CHANNEL_VIBER", "CHANNEL_SMS"]
    assert [a.channel for a in done.attempts] == [common_pb2.CHANNEL_VK]
    assert done.attempts[0].outcome in (
        notification_pb2.ATTEMPT_OUTCOME_DELIVERED,
        notification_pb2.ATTEMPT_OUTCOME_READ,
    )
    assert done.attempts[0].billed_cost.units == 0 and done.attempts[0].billed_cost.nanos == 350_000_000
    assert await delivered_notifications(cascade, db) == Counter({sent.notification_id: 1})


async def test_unreachable_on_vk_falls_back_and_is_remembered(start_cascade, db) -> None:
    cascade = await start_cascade()
    phone = phone_where(lambda p: lambda ph: not p.on_vk(ph) and p.on_viber(ph))
    first = await cascade.wait_final((await cascade.send(phone)).notification_id)

    assert first.state in (
        notification_pb2.NOTIFICATION_STATE_DELIVERED,
        notification_pb2.NOTIFICATION_STATE_READ,
    )
    assert [a.channel for a in first.attempts] == [common_pb2.CHANNEL_VK, common_pb2.CHANNEL_VIBER]
    assert first.attempts[0].outcome == notification_pb2.ATTEMPT_OUTCOME_UNREACHABLE
    # The fact is in PostgreSQL under a keyed hash, never the phone.
    rows = await db.fetch("SELECT recipient_key, channel, model FROM kaskad_reachability")
    assert {r["channel"] for r in rows} == {"vk", "viber"}
    assert all(phone not in r["recipient_key"] for r in rows)
    assert phone not in json.dumps([json.loads(r["model"]) for r in rows])

    # The next notification to the same person starts at Viber and says why VK was skipped.
    second = await cascade.send(phone)
    assert second.route.steps[0].channel == common_pb2.CHANNEL_VIBER
    assert any(
        s.channel == common_pb2.CHANNEL_VK and "known_unreachable" in s.reason for s in second.route.skipped
    )


async def test_no_report_moves_on_after_the_step_wait(start_cascade) -> None:
    clock = ManualClock(datetime.now(UTC))
    # Every callback is lost: only the step waits (durable timer rows) move the cascade on.
    cascade = await start_cascade(clock=clock, faults=FaultSettings(drop_callback_rate=1.0))
    phone = phone_where(lambda p: lambda ph: p.on_vk(ph) and p.on_viber(ph) and p.sms_deliverable(ph))
    sent = await cascade.send(phone)
    await cascade.settle()
    steps = (await cascade.get(sent.notification_id)).route.steps

    after_vk = await cascade.get(sent.notification_id)
    assert [a.outcome for a in after_vk.attempts] == [notification_pb2.ATTEMPT_OUTCOME_PENDING]

    clock.advance(steps[0].wait.ToTimedelta() - timedelta(seconds=1))
    await cascade.settle()
    assert len((await cascade.get(sent.notification_id)).attempts) == 1  # not yet

    clock.advance(timedelta(seconds=1))
    await cascade.settle()
    after_wait = await cascade.get(sent.notification_id)
    assert [(a.channel, a.outcome) for a in after_wait.attempts] == [
        (common_pb2.CHANNEL_VK, notification_pb2.ATTEMPT_OUTCOME_TIMED_OUT),
        (common_pb2.CHANNEL_VIBER, notification_pb2.ATTEMPT_OUTCOME_PENDING),
    ]
    for step in steps[1:]:
        clock.advance(step.wait.ToTimedelta())
        await cascade.settle()
    final = await cascade.get(sent.notification_id)
    assert final.state == notification_pb2.NOTIFICATION_STATE_FAILED
    assert [a.channel for a in final.attempts] == [s.channel for s in steps]


async def test_cancel_stops_pending_steps(start_cascade, db) -> None:
    clock = ManualClock(datetime.now(UTC))
    cascade = await start_cascade(clock=clock, faults=FaultSettings(drop_callback_rate=1.0))
    sent = await cascade.send(phone_where(lambda p: p.on_vk))
    await cascade.settle()
    response = await cascade.stub.CancelNotification(
        notification_pb2.CancelNotificationRequest(notification_id=sent.notification_id),
        metadata=cascade.auth,
    )
    assert response.notification.state == notification_pb2.NOTIFICATION_STATE_CANCELLED
    assert [a.outcome for a in response.notification.attempts] == [notification_pb2.ATTEMPT_OUTCOME_CANCELLED]
    assert await db.fetchval("SELECT count(*) FROM kaskad_work_items WHERE done_at IS NULL") == 0
    clock.advance(timedelta(days=2))
    await cascade.settle()
    assert len((await cascade.get(sent.notification_id)).attempts) == 1


async def test_pending_wait_survives_a_restart(start_cascade) -> None:
    clock = ManualClock(datetime.now(UTC))
    faults = FaultSettings(drop_callback_rate=1.0)
    first = await start_cascade(clock=clock, faults=faults)
    sent = await first.send(phone_where(lambda p: lambda ph: p.on_vk(ph) and p.on_viber(ph)))
    await first.settle()
    wait = (await first.get(sent.notification_id)).route.steps[0].wait.ToTimedelta()
    await first.app.stop()

    second = await start_cascade(clock=clock, faults=faults)
    second.auth = first.auth
    clock.advance(wait)
    await second.settle()
    after = await second.get(sent.notification_id)
    assert [a.channel for a in after.attempts] == [common_pb2.CHANNEL_VK, common_pb2.CHANNEL_VIBER]


async def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as response:
        return response.status


async def test_forged_and_unsigned_callbacks_are_refused_and_leave_no_trace(start_cascade, db) -> None:
    cascade = await start_cascade()
    url = f"http://127.0.0.1:{cascade.app.http_port}/callbacks/viber"
    body = json.dumps({"event": "delivered", "timestamp": 1, "message_token": 42}).encode()
    assert await _post(url, body, {"Content-Type": "application/json"}) == 401
    forged = {"X-Viber-Content-Signature": hmac_sha256_hex("not-the-token", body)}
    assert await _post(url, body, forged) == 401
    assert await db.fetchval("SELECT count(*) FROM kaskad_delivery_events") == 0
    assert await db.fetchval("SELECT count(*) FROM kaskad_work_items") == 0


async def test_a_callback_sent_three_times_is_recorded_once(start_cascade, db) -> None:
    cascade = await start_cascade()
    url = f"http://127.0.0.1:{cascade.app.http_port}/callbacks/viber"
    body = json.dumps(
        {"event": "delivered", "timestamp": 1_763_900_000_000, "message_token": 4242, "user_id": "u1"}
    ).encode()
    signed = {"X-Viber-Content-Signature": hmac_sha256_hex("sim-viber-auth-token", body)}
    assert [await _post(url, body, signed) for _ in range(3)] == [200, 200, 200]
    assert await db.fetchval("SELECT count(*) FROM kaskad_delivery_events") == 1


async def test_thousand_notifications_with_faults_reach_nobody_twice(start_cascade, db) -> None:
    faults = FaultSettings(server_error_rate=0.05, duplicate_callback_rate=0.05)
    cascade = await start_cascade(faults=faults, workers=2)
    phones = [f"+7916{i:07d}" for i in range(1000)]
    batch = notification_pb2.SendNotificationBatchRequest(
        requests=[
            notification_pb2.SendNotificationRequest(
                idempotency_key=f"load-{i}",
                recipient=notification_pb2.Recipient(phone=phone),
                text=f"Parcel {i} is on its way",
            )
            for i, phone in enumerate(phones)
        ]
    )
    response = await cascade.stub.SendNotificationBatch(batch, metadata=cascade.auth, timeout=120)
    assert all(r.WhichOneof("result") == "response" for r in response.results)

    for _ in range(600):
        await cascade.sim("POST", "/_sim/settle")
        open_count = await db.fetchval(
            "SELECT count(*) FROM kaskad_notifications WHERE state IN ('accepted', 'in_progress')"
        )
        if open_count == 0:
            break
        await asyncio.sleep(0.1)
    assert open_count == 0

    deliveries = (await cascade.sim("GET", "/_sim/deliveries"))["deliveries"]
    per_attempt = Counter((d["provider"], d["dedupe_key"]) for d in deliveries)  # type: ignore[union-attr]
    assert max(per_attempt.values()) == 1, "a provider delivered one attempt twice"
    per_notification = await delivered_notifications(cascade, db)
    assert max(per_notification.values()) == 1, "a person got the same notification twice"
    delivered = await db.fetchval(
        "SELECT count(*) FROM kaskad_notifications WHERE state IN ('delivered', 'read')"
    )
    assert delivered == len(per_notification)
