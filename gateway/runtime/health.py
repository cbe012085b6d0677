"""gRPC health that tells the truth: Kaskad serves only while PostgreSQL, its truth, can.

:class:`HealthMonitor` asks a probe every ``interval`` and publishes SERVING or NOT_SERVING
when the answer changes; the log gets one warning when PostgreSQL is lost and one line when
it is back, not one per probe. :class:`PostgresProbe` asks on a connection of its own, so a
busy pool never reads as an outage.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from gateway.core.errors import StoreUnavailable

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[None]]
"""Returns when the dependency can serve; raises :class:`StoreUnavailable` saying why not."""
Publish = Callable[[bool], Awaitable[None]]


class PostgresProbe:
    """Asks PostgreSQL whether it takes writes, within ``timeout`` seconds, connecting as needed."""

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]], timeout: float) -> None:
        self._connect = connect
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None

    async def __call__(self) -> None:
        try:
            async with asyncio.timeout(self._timeout):
                if self._conn is None or self._conn.is_closed():
                    self._conn = await self._connect()
                read_only = await self._conn.fetchval("SELECT pg_is_in_recovery()")
        except TimeoutError:
            self._drop()
            raise StoreUnavailable(f"PostgreSQL did not answer within {self._timeout:g} s") from None
        except StoreUnavailable:
            self._drop()
            raise
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            self._drop()
            # The class names the condition; the server's text is not needed to act on it.
            raise StoreUnavailable(f"PostgreSQL is unavailable ({type(exc).__name__})") from exc
        if read_only:
            raise StoreUnavailable("PostgreSQL is a read-only standby (in recovery)")

    def _drop(self) -> None:
        """Forget the connection without a round trip: the server may be gone."""
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    async def aclose(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                await asyncio.wait_for(conn.close(), self._timeout)
            except (TimeoutError, asyncpg.InterfaceError, OSError):
                conn.terminate()


class HealthMonitor:
    """Keeps a health status in step with a probe: NOT_SERVING on a failed probe, SERVING on a
    passed one, published only when it changes."""

    def __init__(self, probe: Probe, publish: Publish, interval: float, what: str = "PostgreSQL") -> None:
        self._probe = probe
        self._publish = publish
        self._interval = interval
        self._what = what
        self.serving: bool | None = None  # unknown until the first probe

    async def check(self) -> bool:
        """Probe once and publish the status if it changed; returns whether it serves."""
        try:
            await self._probe()
        except StoreUnavailable as exc:
            if self.serving is not False:
                log.warning("%s cannot serve, health is NOT_SERVING until it can: %s", self._what, exc)
                self.serving = False
                await self._publish(False)
            return False
        if self.serving is not True:
            if self.serving is False:
                log.info("%s can serve again, health is SERVING", self._what)
            self.serving = True
            await self._publish(True)
        return True

    async def run(self) -> None:
        """Probe every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self._interval)  # a health poll, not a business timer
            await self.check()
