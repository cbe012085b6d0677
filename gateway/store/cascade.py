"""Cascade rows: the cascade state, attempts, and delivery events recorded exactly once.

The engine changes a notification's cascade only inside a transaction that locked the
notification row (:meth:`CascadeStore.lock`), so the work items of one notification (a
timer, a callback, a submit result) apply one at a time, on any number of workers.
``kaskad_attempts`` is a projection of the cascade state, kept for reports, billing and
for matching callbacks to attempts.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import asyncpg

from gateway.store.queries import Queries
from gateway.store.work_queue import WorkKind, WorkQueue
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


@dataclass(frozen=True, slots=True)
class AttemptRow:
    attempt_id: uuid.UUID
    notification_id: NotificationId
    step_index: int
    try_number: int
    channel: Channel
    provider: str
    dedupe_key: str
    provider_message_id: str | None
    status: str
    outcome: str | None
    billed_units: int | None
    billed_amount: Decimal | None
    currency: str
    late: bool
    created_at: datetime
    submitted_at: datetime | None
    outcome_at: datetime | None
    detail: str | None


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


def dedupe_key(notification_id: NotificationId, step_index: int, try_number: int) -> str:
    """The provider-side dedupe key of one attempt: the same on every retry, in every process."""
    return f"{notification_id}:{step_index}:{try_number}"


def _attempt(row: asyncpg.Record) -> AttemptRow:
    values = dict(row)
    values["channel"] = Channel(values["channel"])
    values["notification_id"] = NotificationId(values["notification_id"])
    return AttemptRow(**values)


def _record(row: asyncpg.Record) -> CascadeRecord:
    cascade = (
        CascadeState.from_dict(row["cascade"])
        if row["cascade"] is not None
        else CascadeState.new(Plan.from_dict(row["route"]))
    )
    return CascadeRecord(
        notification_id=NotificationId(row["notification_id"]),
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
    )


class CascadeStore:
    def __init__(self, pool: asyncpg.Pool, queries: Queries, queue: WorkQueue) -> None:
        self._pool = pool
        self._q = queries
        self._queue = queue

    async def lock(self, conn: asyncpg.Connection, notification_id: NotificationId) -> CascadeRecord | None:
        row = await conn.fetchrow(self._q.lock_notification, notification_id)
        return None if row is None else _record(row)

    async def read(self, notification_id: NotificationId) -> CascadeRecord | None:
        """Without a lock: for the submit path, which must not hold a transaction over HTTP."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(self._q.read_notification_for_submit, notification_id)
        return None if row is None else _record(row)

    async def save(
        self,
        conn: asyncpg.Connection,
        record: CascadeRecord,
        before: CascadeState,
        after: CascadeState,
        now: datetime,
    ) -> None:
        """Store the new cascade state and project its attempts onto their rows."""
        if after.final_state is not None:
            state = after.final_state
        elif after.started:
            state = NotificationState.IN_PROGRESS
        else:
            state = NotificationState.ACCEPTED
        await conn.execute(self._q.save_cascade, record.notification_id, after.to_dict(), state.value, now)
        previous = {(a.step_index, a.number): a for a in before.attempts}
        for attempt in after.attempts:
            old = previous.get((attempt.step_index, attempt.number))
            if old == attempt:
                continue
            if old is None:
                await self._insert_attempt(conn, record, attempt, now)
            await conn.execute(
                self._q.sync_attempt,
                record.notification_id,
                attempt.step_index,
                attempt.number,
                attempt.status.value,
                None if attempt.outcome is None else attempt.outcome.value,
                attempt.late,
                attempt.submitted_at,
                attempt.outcome_at,
                now,
            )

    async def _insert_attempt(
        self, conn: asyncpg.Connection, record: CascadeRecord, attempt: Attempt, now: datetime
    ) -> None:
        await conn.execute(
            self._q.insert_attempt,
            uuid.uuid4(),
            record.notification_id,
            attempt.step_index,
            attempt.number,
            attempt.channel.value,
            attempt.provider,
            dedupe_key(record.notification_id, attempt.step_index, attempt.number),
            attempt.status.value,
            record.currency,
            now,
        )

    async def traceparent(self, notification_id: NotificationId) -> str | None:
        async with self._pool.acquire() as conn:
            value = await conn.fetchval(self._q.get_traceparent, notification_id)
        return value if isinstance(value, str) else None

    async def attempts(self, notification_id: NotificationId) -> list[AttemptRow]:
        async with self._pool.acquire() as conn:
            return [_attempt(r) for r in await conn.fetch(self._q.list_attempts, notification_id)]

    async def attempt_by_step(
        self, conn: asyncpg.Connection, notification_id: NotificationId, step_index: int, try_number: int
    ) -> AttemptRow | None:
        row = await conn.fetchrow(self._q.get_attempt_by_step, notification_id, step_index, try_number)
        return None if row is None else _attempt(row)

    async def attempt(self, conn: asyncpg.Connection, attempt_id: uuid.UUID) -> AttemptRow | None:
        row = await conn.fetchrow(self._q.get_attempt, attempt_id)
        return None if row is None else _attempt(row)

    async def record_submit(
        self,
        conn: asyncpg.Connection,
        attempt: AttemptRow,
        now: datetime,
        *,
        provider_message_id: str | None = None,
        billed_units: int | None = None,
        billed_amount: Decimal | None = None,
        detail: str | None = None,
    ) -> None:
        """Record what the submit returned; queue callbacks that arrived before it."""
        await conn.execute(
            self._q.record_submit,
            attempt.attempt_id,
            provider_message_id,
            billed_units,
            billed_amount,
            detail,
            now,
        )
        if provider_message_id is None:
            return
        for row in await conn.fetch(
            self._q.unmatched_events_for_message, attempt.provider, provider_message_id
        ):
            await self._match(
                conn, attempt.notification_id, attempt.provider, row["event_key"], attempt.attempt_id, now
            )

    async def book(
        self,
        conn: asyncpg.Connection,
        attempt_id: uuid.UUID,
        units: int,
        amount: Decimal,
        price_book_amount: Decimal,
        now: datetime,
    ) -> bool:
        """One ledger entry for a billed attempt, in the caller's transaction; False if booked already."""
        entry = await conn.fetchval(self._q.book_ledger, attempt_id, units, amount, price_book_amount, now)
        return entry is not None

    async def reprice(
        self, conn: asyncpg.Connection, attempt_id: uuid.UUID, units: int, amount: Decimal
    ) -> Decimal | None:
        """Book the provider's reported amount over the price book's; the old amount, if it changed."""
        old = await conn.fetchval(self._q.reprice_ledger, attempt_id, amount, units)
        return None if old is None else Decimal(old)

    async def record_billing(
        self,
        conn: asyncpg.Connection,
        attempt_id: uuid.UUID,
        now: datetime,
        billed_units: int | None,
        billed_amount: Decimal | None,
        detail: str | None = None,
    ) -> None:
        await conn.execute(self._q.record_billing, attempt_id, billed_units, billed_amount, detail, now)

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

        An event whose attempt is not known yet (the callback beat the submit response)
        waits unmatched; :meth:`record_submit` queues it once the message id is recorded.
        """
        new = 0
        async with self._pool.acquire() as conn, conn.transaction():
            for event in events:
                inserted = await conn.fetchval(
                    self._q.insert_delivery_event,
                    event.provider,
                    event.event_key,
                    event.provider_message_id,
                    event.dedupe_key,
                    event.kind.value,
                    event.occurred_at,
                    now,
                    event.billed_units,
                    event.billed_amount.amount if event.billed_amount else None,
                    event.detail,
                )
                if inserted is None:
                    continue  # a repeated callback: recorded already
                new += 1
                match = await conn.fetchrow(
                    self._q.find_attempt_for_event,
                    event.provider,
                    event.dedupe_key,
                    event.provider_message_id,
                )
                if match is not None:
                    await self._match(
                        conn,
                        NotificationId(match["notification_id"]),
                        event.provider,
                        event.event_key,
                        match["attempt_id"],
                        now,
                    )
        return new

    async def event(self, conn: asyncpg.Connection, provider: str, event_key: str) -> EventRow | None:
        row = await conn.fetchrow(self._q.get_delivery_event, provider, event_key)
        if row is None:
            return None
        values = dict(row)
        del values["dedupe_key"], values["received_at"]
        return EventRow(**values)

    async def mark_event_processed(self, conn: asyncpg.Connection, event: EventRow, now: datetime) -> None:
        await conn.execute(
            self._q.mark_event_processed, event.provider, event.event_key, now, event.attempt_id
        )
