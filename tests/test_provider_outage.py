"""Provider outages end to end: nothing is refused, nothing fails, everything is delivered after.

Real PostgreSQL, Redis, gRPC and HTTP, the provider simulator as the providers. Time is a
ManualClock that the test moves, so the durable retry timers fire without waiting; only the
breakers' short cool-down runs on the wall clock.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from gateway.core.clock import ManualClock
from kaskad.v1 import common_pb2, notification_pb2
from lab.simulator import run_simulator
from lab.simulator.population import Population
from lab.simulator.settings import FaultSettings
from providers.breaker import BreakerState
from router.cascade import RETRY_BACKOFF_MAX
from tests.cascade_harness import Cascade, delivered_notifications, phone_where

# In-process retries kept tiny, and breakers that open at once and probe again soon (on the
# wall clock), so the test spends its time in the durable retries it is about.
QUICK_TRANSPORT = {
    "max_attempts": 2,
    "backoff_initial_s": 0.01,
    "backoff_max_s": 0.02,
    "retry_budget_s": 0.05,
    "breaker_failure_threshold": 2,
    "breaker_cool_down_s": 1.0,
}


def _providers(**transport: object) -> dict[str, object]:
    return {name: {"transport": {**QUICK_TRANSPORT, **transport}} for name in ("vk", "viber", "sms", "voice")}


IN_PROGRESS = (notification_pb2.NOTIFICATION_STATE_ACCEPTED, notification_pb2.NOTIFICATION_STATE_IN_PROGRESS)
REACHED = (notification_pb2.NOTIFICATION_STATE_DELIVERED, notification_pb2.NOTIFICATION_STATE_READ)


def _people() -> list[str]:
    """People the simulator can reach: on VK, on Viber only, by SMS only (two of each)."""
    kinds: list[Callable[[Population], Callable[[str], bool]]] = [
        lambda p: lambda ph: p.on_vk(ph) and p.sms_deliverable(ph),
        lambda p: lambda ph: not p.on_vk(ph) and p.on_viber(ph) and p.sms_deliverable(ph),
        lambda p: lambda ph: not p.on_vk(ph) and not p.on_viber(ph) and p.sms_deliverable(ph),
    ]
    return [phone_where(kind, skip) for kind in kinds for skip in range(2)]


async def _run_until_final(cascade: Cascade, clock: ManualClock, ids: list[str], step: timedelta) -> None:
    """Move time on and run due work until every notification is final (bounded rounds)."""
    for _ in range(200):
        await cascade.settle()
        states = [(await cascade.get(i)).state for i in ids]
        if all(s not in IN_PROGRESS for s in states):
            await cascade.settle()  # late reports (reads, billing)
            return
        clock.advance(step)
        await asyncio.sleep(0.05)  # the breakers' cool-down is wall-clock time
    raise AssertionError(f"never finished: {states}")


async def test_all_providers_down_then_back_nothing_refused_or_failed_all_delivered_once(
    start_cascade, db: asyncpg.Connection
) -> None:
    clock = ManualClock(datetime.now(UTC))
    cascade = await start_cascade(clock=clock, providers=_providers())
    phones = _people()
    simulator = cascade.simulator
    port = simulator.port  # type: ignore[attr-defined]
    sim_settings = simulator.state.settings  # type: ignore[attr-defined]
    await simulator.close()  # type: ignore[attr-defined]

    # Every provider refuses connections. Sends before any submit failed, and sends while the
    # breakers are open, are all accepted with the plan a healthy day would give.
    sent = [await cascade.send(phone) for phone in phones[:3]]
    await cascade.app.runner.run_until_idle()
    open_at_send = 0
    for phone in phones[3:]:
        open_at_send += any(a.breaker_state is BreakerState.OPEN for a in cascade.app.adapters.values())
        sent.append(await cascade.send(phone))
    assert open_at_send >= 1, "the breakers never opened: the outage was not seen"
    for response in sent:
        assert [s.channel for s in response.route.steps][:3] == [
            common_pb2.CHANNEL_VK,
            common_pb2.CHANNEL_VIBER,
            common_pb2.CHANNEL_SMS,
        ]
    ids = [r.notification_id for r in sent]

    # Three minutes of outage: retries from timer rows, no notification ends, nothing learnt.
    outage_started = clock.now()
    while clock.now() - outage_started < timedelta(minutes=3):
        await cascade.app.runner.run_until_idle()
        clock.advance(timedelta(seconds=20))
        await asyncio.sleep(0.05)
    assert [(await cascade.get(i)).state for i in ids] == [
        notification_pb2.NOTIFICATION_STATE_IN_PROGRESS
    ] * len(ids)
    retries = await db.fetch(
        "SELECT notification_id, due_at, created_at, done_at FROM kaskad_work_items "
        "WHERE kind = 'timer' AND payload->>'kind' = 'submit_retry'"
    )
    assert {str(r["notification_id"]) for r in retries} == set(ids)
    assert all(r["due_at"] > r["created_at"] for r in retries)
    pending = [r for r in retries if r["done_at"] is None]
    assert {str(r["notification_id"]) for r in pending} == set(ids)  # each waits on a durable row
    assert await db.fetchval("SELECT count(*) FROM kaskad_reachability") == 0
    assert await cascade.app.reachability.flush(clock.now()) == 0  # no channel-wide outcome either
    assert await db.fetchval("SELECT count(*) FROM kaskad_channel_stats") == 0

    # The providers come back on the same address.
    back = await run_simulator(sim_settings, port=port)
    try:
        await _run_until_final(cascade, clock, ids, RETRY_BACKOFF_MAX / 4)
        finals = [await cascade.get(i) for i in ids]
        assert [f.state for f in finals if f.state not in REACHED] == []
        # Each person got the notification exactly once.
        assert await delivered_notifications(cascade, db) == Counter(dict.fromkeys(ids, 1))
    finally:
        await back.close()


async def test_a_429_burst_with_retry_after_on_every_provider_fails_nobody_reachable(
    start_cascade, db: asyncpg.Connection
) -> None:
    clock = ManualClock(datetime.now(UTC))
    phones = _people()
    retry_after = timedelta(seconds=30)
    # Each provider answers its next submits 429, more than there are people.
    burst = FaultSettings(rate_limit_burst=2 * len(phones), retry_after_s=int(retry_after.total_seconds()))
    # Breakers that do not open: every retry here follows a 429 and its Retry-After (the
    # breakers' own wait is the other test's business).
    cascade = await start_cascade(
        clock=clock, faults=burst, providers=_providers(breaker_failure_threshold=10_000)
    )

    ids = [(await cascade.send(phone)).notification_id for phone in phones]
    await _run_until_final(cascade, clock, ids, retry_after / 2)

    finals = [await cascade.get(i) for i in ids]
    assert [f.state for f in finals if f.state not in REACHED] == []
    assert await delivered_notifications(cascade, db) == Counter(dict.fromkeys(ids, 1))
    stats = await cascade.sim("GET", "/_sim/stats")
    assert stats["counters"]["vk_429"] == 2 * len(phones)  # type: ignore[index]
    # The retries honoured Retry-After: each timer row is due at least that long after it was
    # written, and one notification's retries are that far apart.
    rows = await db.fetch(
        "SELECT notification_id, due_at, created_at FROM kaskad_work_items "
        "WHERE kind = 'timer' AND payload->>'kind' = 'submit_retry' ORDER BY notification_id, due_at"
    )
    assert rows
    assert all(r["due_at"] - r["created_at"] >= retry_after for r in rows)
    by_notification: dict[str, list[datetime]] = {}
    for r in rows:
        by_notification.setdefault(str(r["notification_id"]), []).append(r["due_at"])
    for dues in by_notification.values():
        assert all(b - a >= retry_after for a, b in itertools.pairwise(dues))


async def test_a_notification_no_allowed_channel_can_ever_carry_is_still_refused(start_cascade) -> None:
    cascade = await start_cascade()
    phone = phone_where(lambda p: lambda ph: not p.on_vk(ph))
    first = await cascade.send(phone, channels=[common_pb2.CHANNEL_VK])
    done = await cascade.wait_final(first.notification_id)
    assert done.state == notification_pb2.NOTIFICATION_STATE_FAILED  # VK said: not a user

    # Now Kaskad knows: VK alone can never carry a notification to this person.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cascade.send(phone, channels=[common_pb2.CHANNEL_VK])
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no channel can carry this notification (vk: " in str(refused.value.details())
