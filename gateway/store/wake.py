"""Waking the workers of other gateway processes: PostgreSQL ``LISTEN`` / ``NOTIFY``.

A gateway that runs no workers (``KASKAD_WORKERS=0``: an accept-only front) commits work
items that other gateways' workers run. After its commits it sends ``NOTIFY kaskad_work``
(:class:`WakeNotifier`); every gateway with workers listens on a connection of its own
(:class:`WakeListener`) and wakes an idle worker at once, instead of at its next poll.

It is a hint and nothing more: workers still poll every ``KASKAD_WORKER_POLL_INTERVAL``,
so a notification lost while a listener reconnects delays work, it never loses any. A
gateway with workers wakes its own workers in process and sends nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from gateway.store.queries import Queries

log = logging.getLogger(__name__)

WAKE_CHANNEL = "kaskad_work"


class WakeNotifier:
    """Sends ``NOTIFY kaskad_work`` after commits that added work, coalesced.

    At most one notification is in flight, and the next goes at least ``min_interval``
    seconds after it, for every commit in between: a front gateway committing a batch of
    accepts every few milliseconds costs the database a few dozen notifications a second,
    not one per commit, and a woken worker claims everything that came meanwhile. Each
    notification goes after the commits that asked for it, so a woken worker finds their
    items.
    """

    def __init__(self, pool: asyncpg.Pool, queries: Queries, min_interval: float = 0.02) -> None:
        self._pool = pool
        self._q = queries
        self._min_interval = min_interval
        self._sending: asyncio.Task[None] | None = None
        self._owed = False

    def notify(self) -> None:
        """Called after a commit that added due work; returns at once."""
        if self._sending is not None:
            self._owed = True
            return
        self._sending = asyncio.create_task(self._send(), name="kaskad-wake-notify")

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._owed = False
                sent_at = loop.time()
                try:
                    async with self._pool.acquire() as conn:
                        await conn.execute(self._q.notify_work, WAKE_CHANNEL)
                except Exception as exc:  # a hint: the workers' poll picks the work up anyway
                    log.warning("could not wake other gateways' workers (%s)", type(exc).__name__)
                # Spacing the hints out, not a business timer: the work is already committed.
                await asyncio.sleep(max(0.0, sent_at + self._min_interval - loop.time()))
                if not self._owed:
                    return
        finally:
            self._sending = None

    async def aclose(self) -> None:
        """Let the notification in flight go out (before the pool closes)."""
        if self._sending is not None:
            with contextlib.suppress(Exception):
                await self._sending


class WakeListener:
    """Listens for ``kaskad_work`` on a connection of its own and calls ``on_wake``.

    :meth:`start` connects (failing like the pool would when PostgreSQL is away) and keeps
    a task that reconnects when the connection is lost, every ``retry_interval`` seconds;
    ``on_wake`` is also called after each reconnect, for work committed in between.
    """

    def __init__(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        on_wake: Callable[[], None],
        retry_interval: float = 1.0,
    ) -> None:
        self._connect = connect
        self._on_wake = on_wake
        self._retry_interval = retry_interval
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        first = await self._listen()
        self._task = asyncio.create_task(self._run(first), name="kaskad-wake-listener")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _heard(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._on_wake()

    async def _listen(self) -> tuple[asyncpg.Connection, asyncio.Event]:
        conn = await self._connect()
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _: lost.set())
        try:
            await conn.add_listener(WAKE_CHANNEL, self._heard)
        except BaseException:
            await conn.close()
            raise
        return conn, lost

    async def _run(self, first: tuple[asyncpg.Connection, asyncio.Event]) -> None:
        listening: tuple[asyncpg.Connection, asyncio.Event] | None = first
        try:
            while True:
                if listening is None:
                    try:
                        listening = await self._listen()
                    except Exception as exc:
                        log.warning("cannot listen for new work (%s); workers poll meanwhile", exc)
                        # A reconnect backoff, not a business timer: polling carries the work.
                        await asyncio.sleep(self._retry_interval)
                        continue
                    log.info("listening for new work again")
                    self._on_wake()
                conn, lost = listening
                await lost.wait()
                log.warning("lost the connection that listens for new work; reconnecting")
                listening = None
                with contextlib.suppress(Exception):
                    await conn.close()
        finally:
            if listening is not None:
                with contextlib.suppress(Exception):
                    await listening[0].close()
