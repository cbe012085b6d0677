"""WorkSignal: one idle worker per signal of new work, none lost when nobody waits."""

from __future__ import annotations

import asyncio

from gateway.worker import WorkSignal


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
