"""Provider rate limits, shared through Redis: per second, and per person per day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gateway.core.clock import ManualClock
from kaskad.v1 import common_pb2
from lab.simulator.settings import FaultSettings
from tests.cascade_harness import phone_where


async def test_daily_limit_per_person_moves_the_plan_to_the_next_channel(start_cascade) -> None:
    cascade = await start_cascade(rate_limits={"vk": {"per_recipient_per_day": 2}})
    phone = phone_where(lambda p: lambda ph: p.on_vk(ph) and p.on_viber(ph))
    for _ in range(2):
        sent = await cascade.send(phone)
        assert sent.route.steps[0].channel == common_pb2.CHANNEL_VK
        await cascade.wait_final(sent.notification_id)

    third = await cascade.send(phone)
    assert third.route.steps[0].channel == common_pb2.CHANNEL_VIBER
    [vk] = [s for s in third.route.skipped if s.channel == common_pb2.CHANNEL_VK]
    assert "2 messages per person per day" in vk.reason
    # Another person is not affected.
    other = await cascade.send(phone_where(lambda p: p.on_vk, skip=5))
    assert other.route.steps[0].channel == common_pb2.CHANNEL_VK


async def test_per_second_limit_defers_submits_to_the_next_second(start_cascade, db) -> None:
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    cascade = await start_cascade(
        clock=clock,
        faults=FaultSettings(drop_callback_rate=1.0),
        rate_limits={"vk": {"per_second": 2, "per_recipient_per_day": 0}},
    )
    for skip in range(5):
        await cascade.send(phone_where(lambda p: p.on_vk, skip=skip))

    async def submitted() -> int:
        return int(
            await db.fetchval(
                "SELECT count(*) FROM kaskad_attempts "
                "WHERE provider = 'vk' AND provider_message_id IS NOT NULL"
            )
        )

    await cascade.settle()
    assert await submitted() == 2
    clock.advance(timedelta(seconds=1))
    await cascade.settle()
    assert await submitted() == 4
    clock.advance(timedelta(seconds=1))
    await cascade.settle()
    assert await submitted() == 5
