"""Cascade workers: claim due work items and hand them to the engine.

The poll interval is only how often an idle worker looks for due rows; every business
wait (a step's wait for a report, a retry of a call nobody answered) is a work item
with a due time in PostgreSQL, so a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta

from gateway.core.clock import Clock
from gateway.store.postgres import is_unavailable
from gateway.store.work_queue import Lease, WorkItem, WorkQueue

log = logging.getLogger(__name__)

_MAKE_WAY_STEP = 0.01  # seconds between looks at the accepts' pressure

Handler = Callable[[Sequence[WorkItem]], Awaitable[None]]
Settle = Callable[[], Awaitable[bool]]


def worker_identity() -> str:
    """Who holds a lease: host, process and a random part, for operators reading rows."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class WorkSignal:
    """Wakes one idle worker per signal of new work (an accept, a callback).

    Waking every idle worker for each accepted notification sends them all to claim the
    same single item; one is enough, and a worker whose claim came back full calls in
    another (:meth:`WorkRunner.run_forever`). A signal with no worker waiting is kept for
    the next one to wait.
    """

    def __init__(self) -> None:
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()
        self._kept = False

    def notify(self) -> None:
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._kept = True

    async def wait(self, at_most: float) -> None:
        """Until notified, or ``at_most`` seconds (the idle poll)."""
        if self._kept:
            self._kept = False
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter, at_most)
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)


class AcceptPressure:
    """How long accepts take lately, so that cascade workers in the same process make way.

    An accept and the cascade share this process's event loop. When the loop is saturated,
    accepts would queue behind the engine's callbacks and answer in hundreds of
    milliseconds; instead, while accepts take longer than ``target`` on average (an
    exponential moving mean over the last accepts, the latest second only), workers wait
    before claiming more (:meth:`make_way`), up to ``at_most`` per claim so the cascade
    still moves. The work waits durably in PostgreSQL meanwhile; ``target`` 0 turns it off.
    """

    def __init__(
        self,
        target: float,
        at_most: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        self._at_most = at_most
        self._clock = clock
        self._mean = 0.0
        self._last = float("-inf")

    def record(self, seconds: float) -> None:
        """One accept took ``seconds``, from the desk taking it to its commit."""
        self._mean += 0.2 * (seconds - self._mean)
        self._last = self._clock()

    @property
    def strained(self) -> bool:
        return bool(self._target) and self._mean > self._target and self._clock() - self._last < 1.0

    async def make_way(self) -> None:
        """Wait while accepts are strained, at most ``at_most`` seconds."""
        give_up = self._clock() + self._at_most
        for _ in range(math.ceil(self._at_most / _MAKE_WAY_STEP)):
            if not self.strained or self._clock() >= give_up:
                return
            # Yielding the loop to accepts, not a business timer: nothing due waits on it.
            await asyncio.sleep(_MAKE_WAY_STEP)


class WorkRunner:
    """Claims batches of due items and hands each batch to the engine, one lease per item."""

    def __init__(
        self,
        queue: WorkQueue,
        handler: Handler,
        clock: Clock,
        *,
        batch_size: int,
        lease: Lease,
        settle: Settle | None = None,
    ) -> None:
        """``lease``: this gateway's workers and how long a claim holds an item (the engine
        leases the submits it adds under the same). ``settle``: waits for the work the handler
        left running in the background (provider calls), True if there was any."""
        self._queue = queue
        self._settle = settle
        self._handler = handler
        self._clock = clock
        self._batch_size = batch_size
        self._lease = lease
        self._store_away = False  # claims failing because PostgreSQL is away: warned once

    async def run_once(self) -> int:
        """Claim and process one batch of due items; returns how many were claimed."""
        items = await self._queue.claim(
            self._clock.now(), self._batch_size, self._lease.owner, self._lease.duration
        )
        if items:
            try:
                await self._handler(items)
            except Exception:
                # Unapplied items stay leased; after their leases expire another claim retries them.
                log.exception("a batch of %d work items failed", len(items))
        return len(items)

    async def run_until_idle(self, max_rounds: int = 10_000) -> int:
        """Process until nothing is due at the clock's current time and nothing runs in the
        background (tests, ``simulate``)."""
        total = 0
        for _ in range(max_rounds):
            claimed = await self.run_once()
            if claimed == 0:
                if self._settle is not None and await self._settle():
                    continue  # what was under way may have made more work due
                return total
            total += claimed
        raise RuntimeError(f"work did not settle after {max_rounds} rounds")

    async def run_forever(
        self,
        poll_interval: timedelta,
        signal: WorkSignal,
        pressure: AcceptPressure | None = None,
        gather: timedelta = timedelta(0),
    ) -> None:
        """Loop until cancelled; ``signal`` cuts an idle wait short when new work arrives;
        ``pressure``: make way for this process's accepts before each claim; ``gather``: after
        a batch that was not full, wait this long before the next claim, so that work arriving
        in a trickle (reports, new sends) is applied in fewer, fuller transactions.

        Cancelling drains: a worker holding a batch finishes it first (its submits are out at
        the providers, and their results must be recorded), then stops without claiming more;
        a second cancel abandons the batch (its items stay leased until the lease runs out)."""
        while True:
            if pressure is not None:
                await pressure.make_way()
            batch = asyncio.ensure_future(self._run_round())
            try:
                claimed = await asyncio.shield(batch)
            except asyncio.CancelledError:
                await batch  # a second cancel lands here and cancels the batch too
                raise
            if claimed >= self._batch_size:
                signal.notify()  # more may be due: a full batch calls another idle worker in
            elif claimed and gather:
                # A batching window, not a business timer: what is due waits in PostgreSQL.
                await asyncio.sleep(gather.total_seconds())
            if claimed:
                continue
            await signal.wait(poll_interval.total_seconds())

    async def _run_round(self) -> int:
        try:
            claimed = await self.run_once()
        except Exception as exc:
            if not is_unavailable(exc):
                log.exception("claiming work failed; retrying")
            elif not self._store_away:
                # Once per outage: every poll fails alike until PostgreSQL is back.
                self._store_away = True
                log.warning("claiming work failed: PostgreSQL is unavailable (%s); retrying", exc)
            return 0
        if self._store_away:
            self._store_away = False
            log.info("claiming work again: PostgreSQL is back")
        return claimed
