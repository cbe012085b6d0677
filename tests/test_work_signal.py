"""WorkSignal: one idle worker per signal of new work, none lost when nobody waits; the runner's
gather window; AcceptPressure."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

from gateway.cascade.worker import AcceptPressure, WorkRunner, WorkSignal
from gateway.core.clock import ManualClock
from gateway.store.work_queue import Lease


async def test_a_signal_wakes_one_waiting_worker_not_all() -> None:
    signal = WorkSignal()
    woken: list[int] = []

    async def worker(number: int) -> None:
        await signal.wait(at_most=60)
        woken.append(number)

    tasks = [asyncio.create_task(worker(n)) for n in range(3)]
    await asyncio.sleep(0)  # all three are waiting now
    signal.notify()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(woken) == 1
    signal.notify()
    signal.notify()
    await asyncio.gather(*tasks)
    assert sorted(woken) == [0, 1, 2]


async def test_a_signal_with_nobody_waiting_is_kept_for_the_next_wait() -> None:
    signal = WorkSignal()
    signal.notify()
    await asyncio.wait_for(signal.wait(at_most=60), 1)  # returns at once: the signal was kept


async def test_an_idle_wait_ends_after_its_poll_interval_and_leaves_no_waiter_behind() -> None:
    signal = WorkSignal()
    await signal.wait(at_most=0.01)
    signal.notify()  # nobody waits now: kept, not handed to the wait that timed out
    await asyncio.wait_for(signal.wait(at_most=60), 1)


# AcceptPressure: cascade workers in the process make way while accepts are slow.


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_accepts_are_strained_only_while_slow_on_average_and_recent() -> None:
    clock = FakeClock()
    pressure = AcceptPressure(target=0.015, clock=clock)
    assert not pressure.strained  # no accepts yet

    for _ in range(20):
        pressure.record(0.005)
    assert not pressure.strained
    for _ in range(20):
        pressure.record(0.100)
    assert pressure.strained
    clock.now += 1.5  # no accept for a while: nothing to make way for
    assert not pressure.strained
    pressure.record(0.100)
    assert pressure.strained
    for _ in range(20):
        pressure.record(0.002)
    assert not pressure.strained


def test_a_zero_target_never_strains() -> None:
    pressure = AcceptPressure(target=0.0)
    pressure.record(5.0)
    assert not pressure.strained


async def test_make_way_waits_until_accepts_recover_and_no_longer_than_its_bound() -> None:
    clock = FakeClock()  # frozen: only fast accepts can end the wait
    pressure = AcceptPressure(target=0.015, at_most=60.0, clock=clock)
    pressure.record(1.0)
    waiting = asyncio.create_task(pressure.make_way())
    await asyncio.sleep(0.05)
    assert not waiting.done()  # strained: the worker does not claim yet
    for _ in range(30):
        pressure.record(0.001)
    await asyncio.wait_for(waiting, 10)

    bounded = AcceptPressure(target=0.015, at_most=0.05, clock=clock)
    bounded.record(1.0)
    await asyncio.wait_for(bounded.make_way(), 10)  # gives up after its steps: the cascade moves
    assert bounded.strained


# WorkRunner.run_forever: a batch that was not full waits the gather window before the next claim.


class ScriptedQueue:
    """Answers claims with the given batch sizes in turn, then with nothing; counts claims."""

    def __init__(self, *sizes: int) -> None:
        self._sizes = list(sizes)
        self.claims = 0

    async def claim(self, now: object, batch_size: int, owner: str, duration: object) -> list[int]:
        self.claims += 1
        return list(range(self._sizes.pop(0))) if self._sizes else []


async def _claims_soon_after(queue: ScriptedQueue, gather: timedelta) -> int:
    async def handler(items: object) -> None:
        pass

    runner = WorkRunner(
        queue,  # type: ignore[arg-type]
        handler,
        ManualClock(datetime(2026, 11, 26, tzinfo=UTC)),
        batch_size=4,
        lease=Lease("test", timedelta(minutes=1)),
    )
    task = asyncio.create_task(runner.run_forever(timedelta(hours=1), WorkSignal(), gather=gather))
    for _ in range(20):
        await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return queue.claims


async def test_a_batch_that_was_not_full_waits_the_gather_window_before_the_next_claim() -> None:
    assert await _claims_soon_after(ScriptedQueue(2, 2), timedelta(hours=1)) == 1
    assert await _claims_soon_after(ScriptedQueue(2, 2), timedelta(0)) == 3  # at once: 2, 2, then none


async def test_a_full_batch_claims_again_at_once_whatever_the_gather_window() -> None:
    # Full batches mean a backlog: no waiting; the partial third one then waits the window.
    assert await _claims_soon_after(ScriptedQueue(4, 4, 1, 4), timedelta(hours=1)) == 3


async def test_run_until_idle_waits_for_background_work_and_claims_what_it_made_due() -> None:
    # The handler leaves its provider calls running; what they make due is claimed before idling.
    queue = ScriptedQueue(2)
    background: list[asyncio.Task[None]] = []

    async def handler(items: object) -> None:
        async def call() -> None:
            await asyncio.sleep(0)
            queue._sizes.append(1)  # the call's result made one more item due

        if not background:
            background.append(asyncio.create_task(call()))

    async def settle() -> bool:
        pending = [task for task in background if not task.done()]
        await asyncio.gather(*pending)
        return bool(pending)

    runner = WorkRunner(
        queue,  # type: ignore[arg-type]
        handler,
        ManualClock(datetime(2026, 11, 26, tzinfo=UTC)),
        batch_size=4,
        lease=Lease("test", timedelta(minutes=1)),
        settle=settle,
    )
    assert await runner.run_until_idle() == 3  # 2, then the 1 the first call made due
    assert all(task.done() for task in background)
