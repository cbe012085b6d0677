"""The cascade end to end: gRPC in, provider simulator over real HTTP, callbacks back in.

Real PostgreSQL, Redis, gRPC and HTTP. Time is either the wall clock with fast simulated
providers (the person is reached in well under a second) or a ManualClock that the test
moves, so waits and fallbacks run without sleeping.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import aiohttp
from google.protobuf.duration_pb2 import Duration

from gateway.core.clock import ManualClock
from kaskad.v1 import common_pb2, notification_pb2
from lab.simulator.settings import (
    FaultSettings,
)
from providers.callback_auth import hmac_sha256_hex
from tests.cascade_harness import delivered_notifications, phone_where
from tests.providers.provider_harness import PROMPT_POPULATION


def _steps(notification: notification_pb2.Notification) -> list[str]:
    return [common_pb2.Channel.Name(s.channel) for s in notification.route.steps]


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
    # The simulated VK, like the real one, sends a report again unless it hears a plain "ok".
    stats = await cascade.sim("GET", "/_sim/stats")
    assert stats["counters"]["callbacks_sent"] >= 1  # type: ignore[index]
    assert "callbacks_unacknowledged" not in stats["counters"]  # type: ignore[operator]


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


# VK and Viber configured without their status lookups: a lost report is then resolved by the
# wait, the TTL and the overdue grace alone (what Kaskad does where a provider offers nothing).
NO_LOOKUPS = {"vk": {"status_query": False}, "viber": {"status_query": False}}


def _messenger_ttl(channel: int, wait: timedelta, margin: timedelta) -> timedelta:
    """The TTL a messenger step is sent with: its wait plus the margin, in the provider's bounds."""
    low = timedelta(minutes=1) if channel == common_pb2.CHANNEL_VK else timedelta(seconds=30)
    return max(wait + margin, low)


async def test_no_report_moves_on_after_the_step_wait_and_its_ttl(start_cascade) -> None:
    clock = ManualClock(datetime.now(UTC))
    margin = timedelta(seconds=5)
    # Every callback is lost, and VK and Viber are configured without their status lookups: only
    # the step waits (durable timer rows), the messengers' TTLs and the SMS aggregator's status
    # query move the cascade on.
    cascade = await start_cascade(
        clock=clock,
        faults=FaultSettings(drop_callback_rate=1.0),
        messenger_ttl_margin=margin,
        providers=NO_LOOKUPS,
    )
    phone = phone_where(lambda p: lambda ph: p.on_vk(ph) and p.on_viber(ph) and p.sms_deliverable(ph))
    sent = await cascade.send(phone)
    await cascade.settle()
    steps = (await cascade.get(sent.notification_id)).route.steps
    assert [s.channel for s in steps[:3]] == [
        common_pb2.CHANNEL_VK,
        common_pb2.CHANNEL_VIBER,
        common_pb2.CHANNEL_SMS,
    ]

    after_vk = await cascade.get(sent.notification_id)
    assert [a.outcome for a in after_vk.attempts] == [notification_pb2.ATTEMPT_OUTCOME_PENDING]

    vk_wait = steps[0].wait.ToTimedelta()
    clock.advance(vk_wait - timedelta(seconds=1))
    await cascade.settle()
    assert len((await cascade.get(sent.notification_id)).attempts) == 1  # not yet

    clock.advance(timedelta(seconds=1))
    await cascade.settle()
    # The wait ran out, but VK may still deliver until the TTL it was sent with has passed.
    assert len((await cascade.get(sent.notification_id)).attempts) == 1

    clock.advance(_messenger_ttl(steps[0].channel, vk_wait, margin) - vk_wait)
    await cascade.settle()
    after_wait = await cascade.get(sent.notification_id)
    assert [(a.channel, a.outcome) for a in after_wait.attempts] == [
        (common_pb2.CHANNEL_VK, notification_pb2.ATTEMPT_OUTCOME_TIMED_OUT),
        (common_pb2.CHANNEL_VIBER, notification_pb2.ATTEMPT_OUTCOME_PENDING),
    ]
    clock.advance(_messenger_ttl(steps[1].channel, steps[1].wait.ToTimedelta(), margin))
    await cascade.settle()
    assert len((await cascade.get(sent.notification_id)).attempts) == 3
    # SMS's report is lost too, but the aggregator answers a status query: delivered.
    clock.advance(steps[2].wait.ToTimedelta())
    final = await cascade.wait_final(sent.notification_id)
    assert final.state == notification_pb2.NOTIFICATION_STATE_DELIVERED
    assert [(a.channel, a.outcome) for a in final.attempts] == [
        (common_pb2.CHANNEL_VK, notification_pb2.ATTEMPT_OUTCOME_TIMED_OUT),
        (common_pb2.CHANNEL_VIBER, notification_pb2.ATTEMPT_OUTCOME_TIMED_OUT),
        (common_pb2.CHANNEL_SMS, notification_pb2.ATTEMPT_OUTCOME_DELIVERED),
    ]
    stats = await cascade.sim("GET", "/_sim/stats")
    assert stats["counters"]["sms_status_queries"] == 1  # type: ignore[index]


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
    first = await start_cascade(clock=clock, faults=faults, providers=NO_LOOKUPS)
    sent = await first.send(phone_where(lambda p: lambda ph: p.on_vk(ph) and p.on_viber(ph)))
    await first.settle()
    wait = (await first.get(sent.notification_id)).route.steps[0].wait.ToTimedelta()
    await first.app.stop()

    second = await start_cascade(clock=clock, faults=faults, providers=NO_LOOKUPS)
    second.auth = first.auth
    clock.advance(wait)
    await second.settle()
    after = await second.get(sent.notification_id)
    assert [a.channel for a in after.attempts] == [common_pb2.CHANNEL_VK, common_pb2.CHANNEL_VIBER]


async def test_a_long_overdue_wait_gives_retried_reports_a_grace_before_moving_on(start_cascade) -> None:
    clock = ManualClock(datetime.now(UTC))
    grace = timedelta(seconds=60)
    cascade = await start_cascade(
        clock=clock,
        faults=FaultSettings(drop_callback_rate=1.0),
        overdue_wait_grace=grace,
        providers=NO_LOOKUPS,
    )
    sent = await cascade.send(phone_where(lambda p: lambda ph: p.on_vk(ph) and p.on_viber(ph)))
    await cascade.settle()
    wait = (await cascade.get(sent.notification_id)).route.steps[0].wait.ToTimedelta()

    # Nobody processed the timer for ten minutes after it was due (an outage): the reports
    # the provider is retrying get one more minute before the cascade moves on.
    clock.advance(wait + timedelta(minutes=10))
    await cascade.settle()
    held = await cascade.get(sent.notification_id)
    assert [a.outcome for a in held.attempts] == [notification_pb2.ATTEMPT_OUTCOME_PENDING]

    clock.advance(grace)
    await cascade.settle()
    moved = await cascade.get(sent.notification_id)
    assert [(a.channel, a.outcome) for a in moved.attempts] == [
        (common_pb2.CHANNEL_VK, notification_pb2.ATTEMPT_OUTCOME_TIMED_OUT),
        (common_pb2.CHANNEL_VIBER, notification_pb2.ATTEMPT_OUTCOME_PENDING),
    ]


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


async def test_vk_hears_ok_and_its_confirmation_request_the_configured_code(start_cascade, db) -> None:
    cascade = await start_cascade(providers={"vk": {"confirmation_code": "5e6f7a8b"}})
    url = f"http://127.0.0.1:{cascade.app.http_port}/callbacks/vk"
    secret = "sim-vk-callback-secret"
    confirmation = json.dumps({"type": "confirmation", "group_id": 1, "secret": secret}).encode()
    read = {"type": "message_read", "group_id": 1, "secret": secret, "event_id": "e-1"}
    read["object"] = {"message_id": 7, "date": 1_763_900_000}

    async with aiohttp.ClientSession() as http:
        async with http.post(url, data=confirmation) as response:
            assert (response.status, response.content_type, await response.read()) == (
                200,
                "text/plain",
                b"5e6f7a8b",
            )
        async with http.post(url, data=json.dumps(read).encode()) as response:
            assert (response.status, response.content_type, await response.read()) == (
                200,
                "text/plain",
                b"ok",
            )
        wrong = confirmation.replace(secret.encode(), b"guess")
        async with http.post(url, data=wrong) as response:
            assert response.status == 401 and b"5e6f7a8b" not in await response.read()
    assert await db.fetchval("SELECT count(*) FROM kaskad_delivery_events") == 1  # the read report only


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


async def test_sms_only_person_gets_sms(start_cascade) -> None:
    cascade = await start_cascade()
    phone = phone_where(lambda p: lambda ph: not p.on_vk(ph) and not p.on_viber(ph) and p.sms_deliverable(ph))
    done = await cascade.wait_final((await cascade.send(phone)).notification_id)
    assert done.state == notification_pb2.NOTIFICATION_STATE_DELIVERED
    assert [(a.channel, a.outcome) for a in done.attempts] == [
        (common_pb2.CHANNEL_VK, notification_pb2.ATTEMPT_OUTCOME_UNREACHABLE),
        (common_pb2.CHANNEL_VIBER, notification_pb2.ATTEMPT_OUTCOME_UNREACHABLE),
        (common_pb2.CHANNEL_SMS, notification_pb2.ATTEMPT_OUTCOME_DELIVERED),
    ]


async def test_read_policy_without_a_read_calls_the_robot_once(start_cascade) -> None:
    clock = ManualClock(datetime.now(UTC))
    # Nobody reads messenger messages in this population; everybody who is called answers.
    cascade = await start_cascade(
        clock=clock, population=replace(PROMPT_POPULATION, read_rate=0.0, voice_answer_rate=1.0)
    )
    phone = phone_where(lambda p: p.on_vk)
    ack_timeout = timedelta(minutes=30)
    sent = await cascade.send(
        phone,
        channels=[common_pb2.CHANNEL_VK, common_pb2.CHANNEL_VOICE],
        ack_policy=notification_pb2.ACK_POLICY_READ,
        ack_timeout=Duration(seconds=int(ack_timeout.total_seconds())),
    )
    assert [s.channel for s in sent.route.steps] == [common_pb2.CHANNEL_VK, common_pb2.CHANNEL_VOICE]
    await cascade.settle()
    delivered = await cascade.get(sent.notification_id)
    assert delivered.state == notification_pb2.NOTIFICATION_STATE_IN_PROGRESS
    assert [a.outcome for a in delivered.attempts] == [notification_pb2.ATTEMPT_OUTCOME_DELIVERED]

    clock.advance(ack_timeout)  # unread for the whole ack timeout: the robot calls
    await cascade.settle()
    done = await cascade.get(sent.notification_id)
    assert done.state == notification_pb2.NOTIFICATION_STATE_READ
    assert [(a.channel, a.outcome) for a in done.attempts] == [
        (common_pb2.CHANNEL_VK, notification_pb2.ATTEMPT_OUTCOME_DELIVERED),  # delivered, never read
        (common_pb2.CHANNEL_VOICE, notification_pb2.ATTEMPT_OUTCOME_READ),
    ]
    assert done.attempts[1].billed_cost.units >= 2  # answered: billed per started minute


async def test_a_lost_sms_report_is_resolved_by_a_status_query_and_billed_once(start_cascade, db) -> None:
    clock = ManualClock(datetime.now(UTC))
    cascade = await start_cascade(clock=clock, faults=FaultSettings(drop_callback_rate=1.0))
    phone = phone_where(lambda p: lambda ph: not p.on_vk(ph) and not p.on_viber(ph) and p.sms_deliverable(ph))
    sent = await cascade.send(phone)
    await cascade.settle()
    pending = await cascade.get(sent.notification_id)
    assert [a.channel for a in pending.attempts][-1] == common_pb2.CHANNEL_SMS
    sms_step = next(s for s in pending.route.steps if s.channel == common_pb2.CHANNEL_SMS)

    clock.advance(sms_step.wait.ToTimedelta())
    final = await cascade.wait_final(sent.notification_id)
    assert final.state == notification_pb2.NOTIFICATION_STATE_DELIVERED
    assert final.attempts[-1].channel == common_pb2.CHANNEL_SMS
    assert final.attempts[-1].outcome == notification_pb2.ATTEMPT_OUTCOME_DELIVERED
    # Nothing was sent after SMS, and SMS was billed once, by Kaskad and by the aggregator.
    clock.advance(timedelta(hours=1))
    await cascade.settle()
    assert len((await cascade.get(sent.notification_id)).attempts) == len(final.attempts)
    ledger = await db.fetch(
        "SELECT * FROM kaskad_ledger WHERE notification_id = $1",
        uuid.UUID(sent.notification_id),
    )
    assert len(ledger) == 1
    billing = await cascade.sim("GET", "/_sim/billing")
    assert [e["provider"] for e in billing["entries"]] == ["sms"]  # type: ignore[index]
    assert await delivered_notifications(cascade, db) == Counter({sent.notification_id: 1})
    stats = await cascade.sim("GET", "/_sim/stats")
    assert stats["counters"]["sms_status_queries"] == 1  # type: ignore[index]


async def test_a_lost_vk_report_is_resolved_by_its_status_lookup_and_nothing_else_is_sent(
    start_cascade, db
) -> None:
    clock = ManualClock(datetime.now(UTC))
    cascade = await start_cascade(clock=clock, faults=FaultSettings(drop_callback_rate=1.0))
    phone = phone_where(lambda p: lambda ph: p.on_vk(ph) and p.on_viber(ph) and p.sms_deliverable(ph))
    sent = await cascade.send(phone)
    await cascade.settle()
    await cascade.sim("POST", "/_sim/settle")  # VK delivered; its report was dropped
    pending = await cascade.get(sent.notification_id)
    assert [a.channel for a in pending.attempts] == [common_pb2.CHANNEL_VK]

    clock.advance(pending.route.steps[0].wait.ToTimedelta())
    final = await cascade.wait_final(sent.notification_id)
    # Delivered, or read too when the person read it before the lookup (the answer carries both).
    reached = (notification_pb2.ATTEMPT_OUTCOME_DELIVERED, notification_pb2.ATTEMPT_OUTCOME_READ)
    assert final.state in (
        notification_pb2.NOTIFICATION_STATE_DELIVERED,
        notification_pb2.NOTIFICATION_STATE_READ,
    )
    assert final.attempts[0].channel == common_pb2.CHANNEL_VK and final.attempts[0].outcome in reached
    clock.advance(timedelta(hours=1))
    await cascade.settle()
    assert len((await cascade.get(sent.notification_id)).attempts) == 1  # Viber never sent
    assert await delivered_notifications(cascade, db) == Counter({sent.notification_id: 1})
    ledger = await db.fetch(
        "SELECT provider FROM kaskad_ledger WHERE notification_id = $1", uuid.UUID(sent.notification_id)
    )
    assert [r["provider"] for r in ledger] == ["vk"]  # billed once, by Kaskad and by VK
    billing = await cascade.sim("GET", "/_sim/billing")
    assert [e["provider"] for e in billing["entries"]] == ["vk"]  # type: ignore[index]
    stats = await cascade.sim("GET", "/_sim/stats")
    assert stats["counters"]["vk_status_queries"] == 1  # type: ignore[index]


async def test_a_messenger_step_is_sent_with_a_ttl_of_its_wait(start_cascade) -> None:
    clock = ManualClock(datetime.now(UTC))
    cascade = await start_cascade(clock=clock, faults=FaultSettings(drop_callback_rate=1.0))
    sent = await cascade.send(phone_where(lambda p: p.on_vk))
    await cascade.settle()
    notification = await cascade.get(sent.notification_id)
    assert notification.attempts[0].channel == common_pb2.CHANNEL_VK
    wait = notification.route.steps[0].wait.ToTimedelta()
    statuses = cascade.simulator.state.statuses  # type: ignore[attr-defined]
    [vk] = [v for (provider, key), v in statuses.items() if provider == "vk" and key.isdigit()]
    # The step's wait, within VK's bounds (1 minute to 24 hours).
    assert vk["ttl"] == _messenger_ttl(common_pb2.CHANNEL_VK, wait, timedelta(0)).total_seconds()
