"""Cascade rows: the cascade state, attempts, and delivery events recorded exactly once.

The engine changes a notification's cascade only inside a transaction that locked the
notification row (:meth:`CascadeStore.lock`), so the work items of one notification (a
timer, a callback, a submit result) apply one at a time, on any number of workers.
``kaskad_attempts`` is a projection of the cascade state, kept for reports, billing and
for matching callbacks to attempts.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg

from gateway.core.model import AttemptRow
from gateway.store import json_codec
from gateway.store.group_commit import DeliveryEventBatcher, EventKey
from gateway.store.queries import Queries
from gateway.store.reachability import ReachabilityRow
from gateway.store.work_queue import Lease, WorkItem, WorkKind, WorkQueue, work_item_from_row
from providers.base import DeliveryEvent
from router.cascade import Attempt, CascadeState
from router.domain import AckPolicy, Channel, NotificationId, NotificationState
from router.planner import Plan


@dataclass(frozen=True, slots=True)
class CascadeRecord:
    """A notification as the engine needs it: who, what, and the cascade so far."""

    notification_id: NotificationId
    phone: str
    vk_user_id: str | None
    viber_user_id: str | None
    bodies: dict[Channel, str]
    ack_policy: AckPolicy
    deadline: datetime
    currency: str
    state: NotificationState
    cascade: CascadeState
    traceparent: str | None
    # The row version it was read at (xmin): when read without a lock (read_many), or as
    # this gateway saved it (the engine's records of cascades it has just moved on).
    version: int | None = None


@dataclass(frozen=True, slots=True)
class EventRow:
    provider: str
    event_key: str
    provider_message_id: str
    kind: str
    occurred_at: datetime
    billed_units: int | None
    billed_amount: Decimal | None
    detail: str | None
    attempt_id: uuid.UUID | None
    processed_at: datetime | None


@dataclass(frozen=True, slots=True)
class SubmitRecord:
    """What one provider submit returned, for :meth:`CascadeStore.record_submits`."""

    attempt: AttemptRow
    provider_message_id: str | None = None
    billed_units: int | None = None
    billed_amount: Decimal | None = None
    detail: str | None = None


# A work item to add: (notification, kind, due at, payload).
ScheduledWork = tuple[NotificationId, WorkKind, datetime, dict[str, Any]]


@dataclass(slots=True)
class CascadeWrites:
    """What one engine transaction writes, for :meth:`CascadeStore.write_batch`."""

    closed: Collection[NotificationId] = ()  # finished: their pending items close
    work: Sequence[ScheduledWork] = ()
    changes: Sequence[tuple[CascadeRecord, CascadeState, CascadeState]] = ()  # (record, before, after)
    learnt: Sequence[ReachabilityRow] = ()
    processed: Sequence[EventRow] = ()  # delivery events applied


@dataclass(slots=True)
class WrittenBatch:
    """What :meth:`CascadeStore.write_batch` returns: the submits it leased to the caller (due
    now) and the saved rows' new versions (see :attr:`CascadeRecord.version`)."""

    leased: list[WorkItem] = field(default_factory=list)
    versions: dict[NotificationId, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CompletedItems:
    """What completing a batch's items returned: the ids this worker still held, and for the
    held event items their delivery events and the attempts those were matched to."""

    held: set[int]
    events: dict[tuple[str, str], EventRow]
    attempts: dict[uuid.UUID, AttemptRow]


def _stored_state(cascade: CascadeState) -> NotificationState:
    """The notification's ``state`` column for a cascade state."""
    if cascade.final_state is not None:
        return cascade.final_state
    return NotificationState.IN_PROGRESS if cascade.started else NotificationState.ACCEPTED


def dedupe_key(notification_id: NotificationId, step_index: int, try_number: int) -> str:
    """The provider-side dedupe key of one attempt: the same on every retry, in every process."""
    return f"{notification_id}:{step_index}:{try_number}"


def _attempt(row: asyncpg.Record) -> AttemptRow:
    return _attempt_from(dict(row))


def _attempt_from(values: dict[str, Any]) -> AttemptRow:
    values["channel"] = Channel(values["channel"])
    values["notification_id"] = NotificationId(values["notification_id"])
    return AttemptRow(**values)


def _by_step(attempts: Iterable[AttemptRow]) -> dict[tuple[NotificationId, int, int], AttemptRow]:
    return {(a.notification_id, a.step_index, a.try_number): a for a in attempts}


_ATTEMPT_FIELDS = AttemptRow.__slots__
_EVENT_FIELDS = EventRow.__slots__


def _prefixed(row: asyncpg.Record, prefix: str, names: Sequence[str]) -> dict[str, Any]:
    return {name: row[prefix + name] for name in names}


class PlanCache:
    """Decoded plans of the notifications worked on last, at most ``size`` of them.

    A plan never changes once accepted (it is stored once, in ``route``), and a cascade's
    work items (start, submit, its result, reports, timers) come back to the same
    notification within seconds: decoding its plan every time was most of reading a row.
    """

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._plans: collections.OrderedDict[NotificationId, Plan] = collections.OrderedDict()

    def plan(self, notification_id: NotificationId, route: str) -> Plan:
        """The plan of this notification; ``route`` is its stored JSON, decoded on a miss."""
        plan = self._plans.get(notification_id)
        if plan is not None:
            self._plans.move_to_end(notification_id)
            return plan
        plan = Plan.from_dict(json_codec.loads(route))
        self._plans[notification_id] = plan
        if len(self._plans) > self._size:
            self._plans.popitem(last=False)
        return plan

    def __len__(self) -> int:
        return len(self._plans)


_NUL = "\x00"


def _pg_str(text: str) -> str:
    """``text`` with any NUL, which PostgreSQL text cannot hold, replaced by U+FFFD."""
    return text if _NUL not in text else text.replace(_NUL, "\ufffd")


def _pg_text(text: str | None) -> str | None:
    return None if text is None else _pg_str(text)


def _storable(event: DeliveryEvent) -> DeliveryEvent:
    """The event with any NUL replaced (see :func:`_pg_str`).

    What a provider reports is stored whatever it holds: refusing it would make the provider
    retry the same callback for ever, and the report would be lost all the same."""
    texts = (event.event_key, event.provider_message_id, event.dedupe_key, event.detail)
    if not any(text and _NUL in text for text in texts):
        return event
    return replace(
        event,
        event_key=_pg_str(event.event_key),
        provider_message_id=_pg_str(event.provider_message_id),
        dedupe_key=_pg_text(event.dedupe_key),
        detail=_pg_text(event.detail),
    )


def _record(row: asyncpg.Record, plans: PlanCache) -> CascadeRecord:
    notification_id = NotificationId(row["notification_id"])
    plan = plans.plan(notification_id, row["route"])
    # Rows written before the plan was stored apart carry it in the cascade too; it is the same.
    cascade = (
        CascadeState.from_progress(plan, row["cascade"])
        if row["cascade"] is not None
        else CascadeState.new(plan)
    )
    return CascadeRecord(
        notification_id=notification_id,
        phone=row["phone"],
        vk_user_id=row["vk_user_id"],
        viber_user_id=row["viber_user_id"],
        bodies={Channel(c): body for c, body in row["bodies"].items()},
        ack_policy=AckPolicy(row["ack_policy"]),
        deadline=row["deadline"],
        currency=row["currency"],
        state=NotificationState(row["state"]),
        cascade=cascade,
        traceparent=row["traceparent"],
        version=row.get("version"),
    )


@dataclass(frozen=True, slots=True)
class Bill:
    """What one attempt was billed: the amount booked and the price book's beside it."""

    attempt_id: uuid.UUID
    units: int
    amount: Decimal
    price_book_amount: Decimal


def _bill_columns(
    bills: Sequence[Bill],
) -> tuple[list[uuid.UUID], list[int], list[Decimal], list[Decimal]]:
    """The bills as statement arguments, one array per column, in attempt id order (the
    order every transaction takes the attempts' row locks in)."""
    ordered = sorted(bills, key=lambda b: b.attempt_id)
    return (
        [b.attempt_id for b in ordered],
        [b.units for b in ordered],
        [b.amount for b in ordered],
        [b.price_book_amount for b in ordered],
    )


class CascadeStore:
    def __init__(
        self,
        pool: asyncpg.Pool,
        queries: Queries,
        queue: WorkQueue,
        event_batch_size: int = 1,
        event_batch_delay: float = 0.0,
        event_batch_idle_delay: float = 0.0,
    ) -> None:
        """``event_batch_size`` > 1 turns on group commit of delivery callbacks."""
        self._pool = pool
        self._q = queries
        self._queue = queue
        self._plans = PlanCache()
        self._event_batcher = (
            DeliveryEventBatcher(
                self._insert_events, event_batch_size, event_batch_delay, event_batch_idle_delay
            )
            if event_batch_size > 1
            else None
        )

    async def lock_many(
        self, conn: asyncpg.Connection, notification_ids: Collection[NotificationId]
    ) -> dict[NotificationId, CascadeRecord]:
        """Lock these notifications' rows (in id order) for the caller's transaction."""
        rows = await conn.fetch(self._q.lock_notifications, sorted(set(notification_ids)))
        return {NotificationId(r["notification_id"]): _record(r, self._plans) for r in rows}

    async def lock_current(
        self, conn: asyncpg.Connection, read: Collection[CascadeRecord]
    ) -> dict[NotificationId, CascadeRecord]:
        """Lock the rows of records read earlier without a lock (:meth:`read_many`); a record
        whose row has not changed since is used as it is, the others are read again."""
        rows = await conn.fetch(self._q.lock_notification_versions, sorted({r.notification_id for r in read}))
        versions = {NotificationId(r["notification_id"]): r["version"] for r in rows}
        current = {r.notification_id: r for r in read if versions.get(r.notification_id) == r.version}
        changed = [n for n in versions if n not in current]
        if changed:
            current.update(await self.lock_many(conn, changed))
        return current

    async def read_many(
        self, notification_ids: Collection[NotificationId]
    ) -> dict[NotificationId, CascadeRecord]:
        """Without a lock: for the submit path, which must not hold a transaction over HTTP."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(self._q.read_notifications_for_submit, list(set(notification_ids)))
        return {NotificationId(r["notification_id"]): _record(r, self._plans) for r in rows}

    async def write_batch(
        self, conn: asyncpg.Connection, writes: CascadeWrites, now: datetime, lease: Lease | None
    ) -> WrittenBatch:
        """Write what one engine transaction decided in ONE statement (``write_cascade_batch``):
        close the finished cascades' pending items (not the items added here), add work items,
        store the cascade states and project their attempts onto their rows, write the people's
        reachability (after :meth:`gateway.store.reachability.ReachabilityStore.learn` locked
        them) and mark the applied delivery events processed.

        With ``lease``, the submits added due by ``now`` are inserted already leased to its
        owner (as if claimed: fencing token 1) and returned, for that worker to run as soon as
        the transaction commits; if it dies first, they run again when the lease expires."""
        work, changes = writes.work, writes.changes
        if not (writes.closed or work or changes or writes.learnt or writes.processed):
            return WrittenBatch()  # nothing to write: every item was fenced out or had no effect
        new: list[tuple[CascadeRecord, Attempt]] = []
        changed: list[tuple[NotificationId, Attempt]] = []
        for record, before, after in changes:
            previous = {(a.step_index, a.number): a for a in before.attempts}
            for attempt in after.attempts:
                old = previous.get((attempt.step_index, attempt.number))
                if old is None:
                    new.append((record, attempt))  # inserted as it is now
                elif old != attempt:
                    changed.append((record.notification_id, attempt))
        leased = [lease is not None and w[1] is WorkKind.SUBMIT and w[2] <= now for w in work]
        rows = await conn.fetch(
            self._q.write_cascade_batch,
            list(writes.closed),
            now,
            [w[0] for w in work],
            [w[1].value for w in work],
            [json_codec.dumps(w[3]) for w in work],
            [w[2] for w in work],
            leased,
            lease.owner if lease is not None else None,
            lease.duration if lease is not None else timedelta(0),
            [record.notification_id for record, _, _ in changes],
            [json_codec.dumps(after.progress_dict()) for _, _, after in changes],
            [_stored_state(after).value for _, _, after in changes],
            [uuid.uuid4() for _ in new],
            [r.notification_id for r, _ in new],
            [a.step_index for _, a in new],
            [a.number for _, a in new],
            [a.channel.value for _, a in new],
            [a.provider for _, a in new],
            [dedupe_key(r.notification_id, a.step_index, a.number) for r, a in new],
            [a.status.value for _, a in new],
            [None if a.outcome is None else a.outcome.value for _, a in new],
            [a.late for _, a in new],
            [a.submitted_at for _, a in new],
            [a.outcome_at for _, a in new],
            [r.currency for r, _ in new],
            [n for n, _ in changed],
            [a.step_index for _, a in changed],
            [a.number for _, a in changed],
            [a.status.value for _, a in changed],
            [None if a.outcome is None else a.outcome.value for _, a in changed],
            [a.late for _, a in changed],
            [a.submitted_at for _, a in changed],
            [a.outcome_at for _, a in changed],
            [r.recipient_key for r in writes.learnt],
            [r.channel for r in writes.learnt],
            [r.model for r in writes.learnt],
            [r.updated_at for r in writes.learnt],
            [e.provider for e in writes.processed],
            [e.event_key for e in writes.processed],
            [e.attempt_id for e in writes.processed],
        )
        written = WrittenBatch()
        for row in rows:
            if row["what"] == "work":
                written.leased.append(work_item_from_row(row))
            else:
                written.versions[NotificationId(row["notification_id"])] = row["version"]
        return written

    async def complete_reading_events(
        self, conn: asyncpg.Connection, items: Sequence[WorkItem], now: datetime
    ) -> CompletedItems:
        """Mark start, timer and event items done (as :meth:`WorkQueue.complete_many`) and read,
        in the same statement, the delivery events of the held event items and the attempts
        they were matched to."""
        if not items:
            return CompletedItems(set(), {}, {})
        rows = await conn.fetch(
            self._q.complete_works_reading_events,
            [i.work_item_id for i in items],
            [i.fencing_token for i in items],
            now,
        )
        held: set[int] = set()
        events: dict[tuple[str, str], EventRow] = {}
        attempts: dict[uuid.UUID, AttemptRow] = {}
        for row in rows:
            held.add(row["work_item_id"])
            if row["e_provider"] is not None:
                event = EventRow(**_prefixed(row, "e_", _EVENT_FIELDS))
                events[(event.provider, event.event_key)] = event
            if row["a_attempt_id"] is not None:
                attempt = _attempt_from(_prefixed(row, "a_", _ATTEMPT_FIELDS))
                attempts[attempt.attempt_id] = attempt
        return CompletedItems(held, events, attempts)

    async def complete_reading_attempts(
        self, conn: asyncpg.Connection, items: Sequence[WorkItem], now: datetime
    ) -> tuple[set[int], dict[tuple[NotificationId, int, int], AttemptRow]]:
        """Mark submit items done (as :meth:`WorkQueue.complete_many`) and read, in the same
        statement, the attempt rows the held ones name: (the ids still held, the attempt rows
        by ``(notification, step index, try number)``)."""
        if not items:
            return set(), {}
        rows = await conn.fetch(
            self._q.complete_submits_reading_attempts,
            [i.work_item_id for i in items],
            [i.fencing_token for i in items],
            now,
        )
        held = {r["work_item_id"] for r in rows}
        return held, _by_step(
            _attempt_from(_prefixed(r, "", _ATTEMPT_FIELDS)) for r in rows if r["attempt_id"]
        )

    async def attempts(self, notification_id: NotificationId) -> list[AttemptRow]:
        async with self._pool.acquire() as conn:
            return [_attempt(r) for r in await conn.fetch(self._q.list_attempts, notification_id)]

    async def attempts_by_steps(
        self, conn: asyncpg.Connection, steps: Collection[tuple[NotificationId, int, int]]
    ) -> dict[tuple[NotificationId, int, int], AttemptRow]:
        """Attempt rows by ``(notification, step index, try number)``."""
        if not steps:
            return {}
        rows = await conn.fetch(
            self._q.get_attempts_by_steps,
            [n for n, _, _ in steps],
            [s for _, s, _ in steps],
            [t for _, _, t in steps],
        )
        return _by_step(_attempt(r) for r in rows)

    async def record_submits(
        self, conn: asyncpg.Connection, submits: Sequence[SubmitRecord], now: datetime
    ) -> None:
        """Record what submits returned; queue callbacks that arrived before them."""
        if not submits:
            return
        # A provider's words are stored whatever they hold (a NUL fails the whole statement).
        submits = [
            replace(s, provider_message_id=_pg_text(s.provider_message_id), detail=_pg_text(s.detail))
            for s in submits
        ]
        waiting = await conn.fetch(
            self._q.record_submits,
            [s.attempt.attempt_id for s in submits],
            [s.provider_message_id for s in submits],
            [s.billed_units for s in submits],
            [s.billed_amount for s in submits],
            [s.detail for s in submits],
            now,
            [s.attempt.provider for s in submits],
        )
        if not waiting:
            return
        named = [s for s in submits if s.provider_message_id is not None]
        by_message = {(s.attempt.provider, s.provider_message_id): s.attempt for s in named}
        for row in waiting:
            attempt = by_message[(row["provider"], row["provider_message_id"])]
            await self._match(
                conn, attempt.notification_id, attempt.provider, row["event_key"], attempt.attempt_id, now
            )

    async def book_many(
        self, conn: asyncpg.Connection, bills: Sequence[Bill], now: datetime
    ) -> set[uuid.UUID]:
        """One ledger entry per billed attempt, in the caller's transaction (one attempt once
        per call); the attempts booked now (one booked already keeps its entry)."""
        booked, _ = await self._bill(conn, bills, (), (), now)
        return booked

    async def bill_from_reports(
        self, conn: asyncpg.Connection, bills: Sequence[Bill], reported: Sequence[Bill], now: datetime
    ) -> tuple[set[uuid.UUID], dict[uuid.UUID, Decimal]]:
        """Book what delivery reports billed (each attempt once per call), in one statement:
        the amounts go on the attempt rows, an attempt not booked yet gets its ledger entry,
        and ``reported`` (the bills whose report named an amount) replace an amount booked
        before. Returns the attempts booked now and the old amounts of those repriced."""
        return await self._bill(conn, bills, bills, reported, now)

    async def _bill(
        self,
        conn: asyncpg.Connection,
        book: Sequence[Bill],
        record: Sequence[Bill],
        reprice: Sequence[Bill],
        now: datetime,
    ) -> tuple[set[uuid.UUID], dict[uuid.UUID, Decimal]]:
        if not book:
            return set(), {}
        ids, units, amounts, book_amounts = _bill_columns(book)
        r_ids, r_units, r_amounts, _ = _bill_columns(record)
        p_ids, p_units, p_amounts, _ = _bill_columns(reprice)
        rows = await conn.fetch(
            self._q.bill_attempts,
            *(ids, units, amounts, book_amounts),
            *(r_ids, r_units, r_amounts),
            *(p_ids, p_amounts, p_units),
            now,
        )
        booked = {r["attempt_id"] for r in rows if r["old_amount"] is None}
        previous = {r["attempt_id"]: Decimal(r["old_amount"]) for r in rows if r["old_amount"] is not None}
        return booked, previous

    async def _match(
        self,
        conn: asyncpg.Connection,
        notification_id: NotificationId,
        provider: str,
        event_key: str,
        attempt_id: uuid.UUID,
        now: datetime,
    ) -> None:
        await conn.execute(self._q.match_event, provider, event_key, attempt_id)
        await self._queue.schedule(
            conn, notification_id, WorkKind.EVENT, now, now, {"provider": provider, "event_key": event_key}
        )

    async def record_events(self, events: Sequence[DeliveryEvent], now: datetime) -> int:
        """Store callback events exactly once and queue the new ones; returns how many were new.

        One statement (see ``record_delivery_events``), shared with the callbacks that arrive
        at the same time when group commit is on (:class:`DeliveryEventBatcher`); either way
        this returns after the commit. An event whose attempt is not known yet (the callback
        beat the submit response) waits unmatched; :meth:`record_submits` queues it once the
        message id is recorded.
        """
        if not events:  # a confirmation, an event not about delivery: no batch to wait for
            return 0
        events = [_storable(e) for e in events]
        if self._event_batcher is not None:
            return await self._event_batcher.record(events, now)
        return len(await self._insert_events(events, now))

    async def _insert_events(self, events: Sequence[DeliveryEvent], now: datetime) -> set[EventKey]:
        unique = list({(e.provider, e.event_key): e for e in events}.values())
        if not unique:
            return set()
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                self._q.record_delivery_events,
                [e.provider for e in unique],
                [e.event_key for e in unique],
                [e.provider_message_id for e in unique],
                [e.dedupe_key for e in unique],
                [e.kind.value for e in unique],
                [e.occurred_at for e in unique],
                [e.billed_units for e in unique],
                [e.billed_amount.amount if e.billed_amount else None for e in unique],
                [e.detail for e in unique],
                now,
            )
        return {(r["provider"], r["event_key"]) for r in rows}

    async def aclose(self) -> None:
        """Write the callbacks still waiting for their group commit (before the pool closes)."""
        if self._event_batcher is not None:
            await self._event_batcher.aclose()
