"""No head-of-line blocking: a provider that holds its responses delays no submit to the other
providers, nor the next batch, and gets no more calls at once than its limit.

The real gateway with one worker (the default) runs its work loop against the simulator over
HTTP; VK holds every response (the call stays out until the client's read timeout).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import asyncpg

from kaskad.v1 import common_pb2
from tests.cascade_harness import StartCascade, phone_where
from tests.providers.provider_harness import SimulatorClient

_ATTEMPTS = (
    "SELECT provider, status, submitted_at FROM kaskad_attempts WHERE notification_id = $1::uuid"
    " ORDER BY step_index, try_number"
)
_SUBMIT = (
    "SELECT lease_owner, done_at, due_at > created_at AS later FROM kaskad_work_items"
    " WHERE notification_id = $1::uuid AND kind = 'submit'"
)


async def _until(check: object, what: str) -> None:
    """Poll ``check`` (an async callable) until it is true; bounded, it does not time anything."""
    for _ in range(1000):
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never: {what}")


async def test_a_stalled_provider_delays_no_submit_to_the_others_and_gets_at_most_its_limit(
    start_cascade: StartCascade, db: asyncpg.Connection
) -> None:
    cascade = await start_cascade(
        workers=1,
        rate_limits={"vk": {"concurrency": 1}},
        shutdown_grace=timedelta(0),  # the stalled call is cut short when the test ends
    )
    sim = SimulatorClient(cascade.sim_url)
    await sim.set_faults("vk", timeout_rate=1.0, stall_s=120)

    stalled = await cascade.send(phone_where(lambda p: p.on_vk), channels=[common_pb2.CHANNEL_VK])

    async def vk_call_out() -> bool:
        return (await sim.counters()).get("vk_stalled", 0) == 1

    await _until(vk_call_out, "the VK call is out")
    # A second VK send: over VK's limit of one call at a time, it is not called but handed back.
    waiting = await cascade.send(phone_where(lambda p: p.on_vk, skip=1), channels=[common_pb2.CHANNEL_VK])
    # The next sends, to the other providers, go out while VK's call is still out.
    others = [
        await cascade.send(phone_where(lambda p: p.sms_deliverable), channels=[common_pb2.CHANNEL_SMS]),
        await cascade.send(phone_where(lambda p: p.on_viber), channels=[common_pb2.CHANNEL_VIBER]),
    ]

    async def others_submitted() -> bool:
        rows = [await db.fetch(_ATTEMPTS, o.notification_id) for o in others]
        return all(r and r[0]["submitted_at"] is not None for r in rows)

    await _until(others_submitted, "the other providers' submits were recorded")
    # VK's call is still out: its submit item is held, its result not applied. (The simulator
    # accepted the message and may have reported it already; only the response is held.)
    stalled_submit = await db.fetchrow(_SUBMIT, stalled.notification_id)
    assert stalled_submit["lease_owner"] is not None and stalled_submit["done_at"] is None
    counters = await sim.counters()
    assert counters["vk_accepted"] == 1  # the second VK send was held back by the limit
    assert counters["sms_accepted"] == 1 and counters["viber_accepted"] == 1

    async def handed_back() -> bool:
        row = await db.fetchrow(_SUBMIT, waiting.notification_id)
        return row is not None and row["done_at"] is None and bool(row["later"])

    await _until(handed_back, "the submit over VK's limit was handed back, due later")
    [held_back] = await db.fetch(_ATTEMPTS, waiting.notification_id)
    assert held_back["status"] == "submitting" and held_back["submitted_at"] is None
