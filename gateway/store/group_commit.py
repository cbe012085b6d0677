"""Group commit: concurrent accepts (and delivery callbacks) share one statement and one commit.

An accepted notification is committed before its caller hears back, and every commit
waits for PostgreSQL to flush its write-ahead log. One insert per call pays that wait
once per call; :class:`AcceptBatcher` collects the inserts of calls that arrive together
(up to ``max_size`` rows, or for at most ``max_delay`` after the first one while another
batch is being written; with none under way, only the calls of the same moment) and
writes them, each with its first work item, in one statement (``unnest`` of one array
per column), so one commit answers them all. Every caller still hears back only after
its own row is committed.

Idempotency is the single-row statement's: rows whose (client, key) exists already are
skipped (``ON CONFLICT DO NOTHING``) and read back in one query. Two rows with the same
(client, key) in one batch are settled before the database sees them: the first goes to
the database, the others resolve against whatever holds the key afterwards, as a
concurrent duplicate does (its id with ``duplicate``, or a conflict when the content
differs). A statement fails as a whole, so when one row fails it (a constraint), the
batch is written again row by row and only that row's caller gets the error.

Delivery callbacks are committed before the provider hears back, for the same reason, and
are batched the same way (:class:`DeliveryEventBatcher`); :class:`GroupCommit` is the
machinery both share.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Generic, TypeVar

import asyncpg

from gateway.core.errors import StoreUnavailable
from gateway.core.model import NewNotification
from gateway.store import json_codec
from gateway.store.queries import Queries
from providers.base import DeliveryEvent
from router.domain import ClientId, NotificationId

log = logging.getLogger(__name__)

Key = tuple[ClientId, str]
In = TypeVar("In")
Out = TypeVar("Out")
Connect = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


@dataclass(frozen=True, slots=True)
class AcceptRow:
    """One notification to insert (with its first work item), as the caller built it."""

    notification_id: uuid.UUID
    new: NewNotification
    route: dict[str, Any]  # the plan, Plan.to_dict()
    sms_baseline: Decimal
    now: datetime
    traceparent: str | None

    @property
    def key(self) -> Key:
        return (self.new.client_id, self.new.idempotency_key)


@dataclass(frozen=True, slots=True)
class Stored:
    """The row that holds a (client, key): this call's own (``inserted``) or one that was there first."""

    notification_id: NotificationId
    inserted: bool
    request_hash: bytes
    route: dict[str, Any]


def _conflict_lost() -> StoreUnavailable:  # pragma: no cover - the conflicting row cannot vanish
    return StoreUnavailable("idempotency conflict could not be resolved; retry")


async def insert_one(conn: asyncpg.Connection, queries: Queries, row: AcceptRow) -> Stored:
    """The single-row path: one statement, and on a conflict one read of the existing row."""
    new = row.new
    notification_id = await conn.fetchval(
        queries.insert_notification,
        row.notification_id,
        new.client_id,
        new.idempotency_key,
        new.request_hash,
        new.phone,
        new.vk_user_id,
        new.viber_user_id,
        new.template_id,
        new.template_params,
        {c.value: body for c, body in new.bodies.items()},
        [c.value for c in new.channels],
        new.ack_policy.value,
        new.ack_timeout,
        new.deadline,
        new.max_cost,
        new.currency,
        new.metadata,
        row.route,
        row.now,
        row.sms_baseline,
        row.traceparent,
    )
    if notification_id is not None:
        return Stored(NotificationId(notification_id), True, new.request_hash, row.route)
    existing = await conn.fetchrow(queries.get_notification_by_key, new.client_id, new.idempotency_key)
    if existing is None:  # pragma: no cover - the conflicting row cannot vanish
        raise _conflict_lost()
    return Stored(
        NotificationId(existing["notification_id"]), False, bytes(existing["request_hash"]), existing["route"]
    )


def _json(value: object) -> str | None:
    return None if value is None else json_codec.dumps(value)


def _columns(rows: Sequence[AcceptRow]) -> list[list[Any]]:
    """The arguments of ``insert_notifications``: one array per column, in the query's order."""
    return [
        [r.notification_id for r in rows],
        [r.new.client_id for r in rows],
        [r.new.idempotency_key for r in rows],
        [r.new.request_hash for r in rows],
        [r.new.phone for r in rows],
        [r.new.vk_user_id for r in rows],
        [r.new.viber_user_id for r in rows],
        [r.new.template_id for r in rows],
        [_json(r.new.template_params) for r in rows],
        [json_codec.dumps({c.value: body for c, body in r.new.bodies.items()}) for r in rows],
        # unnest cannot carry an array per row; channel names hold no comma.
        [",".join(c.value for c in r.new.channels) for r in rows],
        [r.new.ack_policy.value for r in rows],
        [r.new.ack_timeout for r in rows],
        [r.new.deadline for r in rows],
        [r.new.max_cost for r in rows],
        [r.new.currency for r in rows],
        [json_codec.dumps(r.new.metadata) for r in rows],
        [json_codec.dumps(r.route) for r in rows],
        [r.now for r in rows],
        [r.sms_baseline for r in rows],
        [r.traceparent for r in rows],
    ]


async def insert_many(
    conn: asyncpg.Connection, queries: Queries, rows: Sequence[AcceptRow]
) -> dict[Key, Stored]:
    """Rows with distinct keys in one statement (one commit); what holds each key afterwards."""
    # One order of keys for every batch, so two batches waiting on each other's keys
    # (another gateway, a retry in the next batch) cannot deadlock.
    rows = sorted(rows, key=lambda r: (r.new.client_id.bytes, r.new.idempotency_key))
    inserted = {r["notification_id"] for r in await conn.fetch(queries.insert_notifications, *_columns(rows))}
    skipped = [r for r in rows if r.notification_id not in inserted]
    existing: dict[Key, Stored] = {}
    if skipped:
        # A separate statement: it must see rows that other transactions committed while
        # the insert waited for them.
        found = await conn.fetch(
            queries.get_notifications_by_keys,
            [r.new.client_id for r in skipped],
            [r.new.idempotency_key for r in skipped],
        )
        for f in found:
            existing[(ClientId(f["client_id"]), f["idempotency_key"])] = Stored(
                NotificationId(f["notification_id"]), False, bytes(f["request_hash"]), f["route"]
            )
    stored: dict[Key, Stored] = {}
    for r in rows:
        if r.notification_id in inserted:
            stored[r.key] = Stored(NotificationId(r.notification_id), True, r.new.request_hash, r.route)
        elif r.key in existing:
            stored[r.key] = existing[r.key]
    return stored


@dataclass(slots=True)
class _Waiting(Generic[In, Out]):
    row: In
    future: asyncio.Future[Out]

    def settle(self, outcome: Out | BaseException) -> None:
        if self.future.done():  # the caller went away (cancelled); its row was written anyway
            return
        if isinstance(outcome, asyncio.CancelledError):
            self.future.cancel()
        elif isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)


class GroupCommit(Generic[In, Out]):
    """Collects the rows of concurrent calls and writes them in shared statements.

    A call waits until its row is committed. A batch is written when it has ``max_size``
    rows or ``max_delay`` seconds after its first row arrived, whichever comes first;
    batches are written concurrently, each on its own pooled connection. When no batch is
    being written, the first row waits only ``idle_delay`` (0: for the calls woken in the
    same turn of the event loop), so a quiet gateway adds no delay, and a busy one, whose
    writes overlap, gathers bigger batches. Subclasses write a batch (:meth:`_write`) and
    settle every waiting call with its own outcome.
    """

    def __init__(self, max_size: int, max_delay: float, idle_delay: float = 0.0) -> None:
        if max_size < 2:
            raise ValueError("group commit needs max_size >= 2; write single rows directly")
        self._max_size = max_size
        self._max_delay = max_delay
        self._pending: list[_Waiting[In, Out]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Task[None]] = set()
        self._idle_delay = idle_delay

    async def _submit(self, row: In) -> Out:
        loop = asyncio.get_running_loop()
        waiting: _Waiting[In, Out] = _Waiting(row, loop.create_future())
        self._pending.append(waiting)
        if len(self._pending) >= self._max_size:
            self._flush()
        elif self._timer is None:
            # As PostgreSQL's commit_delay with commit_siblings: waiting for company pays
            # only while other batches are being written; an idle gateway writes at once.
            delay = self._max_delay if self._writes else self._idle_delay
            self._timer = loop.call_later(delay, self._flush)
        return await waiting.future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            task = asyncio.create_task(self._write_settled(batch), name=f"kaskad-{type(self).__name__}")
            self._writes.add(task)
            task.add_done_callback(self._writes.discard)

    async def aclose(self) -> None:
        """Write what is pending and wait for every batch under way."""
        self._flush()
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)

    async def _write_settled(self, batch: list[_Waiting[In, Out]]) -> None:
        live = [w for w in batch if not w.future.done()]  # a cancelled caller's row is not written
        if not live:
            return
        try:
            await self._write(live)
        finally:
            for w in live:
                w.settle(StoreUnavailable("the batch was interrupted; retry"))

    async def _write(self, live: list[_Waiting[In, Out]]) -> None:
        """Write the rows of the callers still waiting (never none) and settle each."""
        raise NotImplementedError


class AcceptBatcher(GroupCommit[AcceptRow, Stored]):
    """Writes the notifications of concurrent accepts in shared statements (group commit).

    :meth:`insert` returns once the row is committed, with what holds its (client, key).
    """

    def __init__(
        self, connect: Connect, queries: Queries, max_size: int, max_delay: float, idle_delay: float = 0.0
    ) -> None:
        super().__init__(max_size, max_delay, idle_delay)
        self._connect = connect
        self._q = queries

    async def insert(self, row: AcceptRow) -> Stored:
        return await self._submit(row)

    async def _one(self, row: AcceptRow) -> Stored:
        async with self._connect() as conn:
            return await insert_one(conn, self._q, row)

    async def _each(self, rows: Sequence[AcceptRow]) -> list[Stored | BaseException]:
        return await asyncio.gather(*(self._one(r) for r in rows), return_exceptions=True)

    async def _write(self, live: list[_Waiting[AcceptRow, Stored]]) -> None:
        leaders: dict[Key, _Waiting[AcceptRow, Stored]] = {}
        for w in live:
            leaders.setdefault(w.row.key, w)
        outcomes: dict[Key, Stored | BaseException]
        try:
            async with self._connect() as conn:
                stored = await insert_many(conn, self._q, [w.row for w in leaders.values()])
            outcomes = {key: stored.get(key) or _conflict_lost() for key in leaders}
        except Exception as exc:
            log.warning(
                "a batch of %d accepts failed as a whole (%s); writing its rows one by one",
                len(leaders),
                type(exc).__name__,
            )
            results = await self._each([w.row for w in leaders.values()])
            outcomes = dict(zip(leaders, results, strict=True))
        again: list[_Waiting[AcceptRow, Stored]] = []
        for w in live:
            outcome = outcomes[w.row.key]
            if w is leaders[w.row.key]:
                w.settle(outcome)
            elif isinstance(outcome, Stored):
                # The same key twice in one batch: resolved against the first, like a
                # concurrent duplicate (the caller compares the request hashes).
                w.settle(replace(outcome, inserted=False))
            else:
                again.append(w)  # the first failed: this one tries on its own, as it would alone
        if again:
            for w, result in zip(again, await self._each([w.row for w in again]), strict=True):
                w.settle(result)


EventKey = tuple[str, str]  # (provider, event_key)
# PostgreSQL out of reach (no connection, or one lost mid-statement), not a bad row.
_DATABASE_AWAY = (
    StoreUnavailable,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
)
InsertEvents = Callable[[Sequence[DeliveryEvent], datetime], Awaitable[set[EventKey]]]


class DeliveryEventBatcher(GroupCommit[tuple[Sequence[DeliveryEvent], datetime], int]):
    """Delivery callbacks that arrive together share one statement and one commit.

    :meth:`record` returns once the callback's events are committed, with how many of them
    were new. An event in two callbacks of one batch (a provider retrying) is new for the
    first only, as it would be one callback after the other. When the shared statement
    fails, each callback is written on its own, so only a bad one gets the error (and its
    provider retries it).
    """

    def __init__(
        self, insert: InsertEvents, max_size: int, max_delay: float, idle_delay: float = 0.0
    ) -> None:
        super().__init__(max_size, max_delay, idle_delay)
        self._insert = insert

    async def record(self, events: Sequence[DeliveryEvent], now: datetime) -> int:
        return await self._submit((events, now))

    async def _write(self, live: list[_Waiting[tuple[Sequence[DeliveryEvent], datetime], int]]) -> None:
        try:
            # Received when the last of them was: no event is recorded as received early.
            new = await self._insert([e for w in live for e in w.row[0]], max(w.row[1] for w in live))
        except _DATABASE_AWAY as exc:
            # One by one would fail the same way; each caller hears it (callbacks: 503, retried).
            for w in live:
                w.settle(exc)
            return
        except Exception as exc:
            log.warning(
                "a batch of %d callbacks failed as a whole (%s); writing them one by one",
                len(live),
                type(exc).__name__,
            )
            alone = await asyncio.gather(*(self._insert(*w.row) for w in live), return_exceptions=True)
            for w, outcome in zip(live, alone, strict=True):
                w.settle(outcome if isinstance(outcome, BaseException) else len(outcome))
            return
        for w in live:
            mine = {(e.provider, e.event_key) for e in w.row[0]} & new
            new -= mine
            w.settle(len(mine))
