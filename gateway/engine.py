"""The cascade engine: runs ``router.cascade`` over durable work items.

Each work item becomes one cascade event; the engine locks the notification row, feeds
the event to the pure state machine, and executes its commands in the same transaction:
attempts to submit and timers become work items with a due time, observations update
reachability, and a final state closes every pending item. Provider HTTP calls happen
outside any transaction, under the work item's lease; the result is applied in a second
transaction that completes the item with its fencing token, so a worker whose lease
lapsed cannot apply a stale result (the takeover re-submits with the same dedupe key,
which the provider deduplicates).

Work item kinds: ``start`` (accepted), ``submit`` (call a provider), ``timer`` (a wait,
retry or deadline), ``event`` (a recorded delivery callback).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
from opentelemetry.trace import SpanKind

from gateway.clock import Clock
from gateway.errors import NotFound
from gateway.rate_limits import ProviderRateLimits
from gateway.reachability_store import ReachabilityStore
from gateway.store.cascade import AttemptRow, CascadeRecord, CascadeStore, dedupe_key
from gateway.store.work_queue import WorkItem, WorkKind, WorkQueue
from gateway.telemetry import Telemetry
from providers.base import OutboundMessage, ProviderAdapter, SubmitReceipt
from providers.errors import (
    CircuitOpen,
    DeadlineExceeded,
    OutcomeUnknown,
    ProviderError,
    Rejected,
    Transient,
    Unreachable,
)
from router.cascade import (
    AttemptStatus,
    CancelRequested,
    CascadeCommand,
    CascadeEvent,
    CascadeState,
    DeliveryReported,
    Finish,
    RecordObservation,
    RecordReachabilityFact,
    ScheduleTimer,
    Start,
    StepSubmitted,
    SubmitError,
    SubmitFailed,
    SubmitStep,
    TimerKind,
    handle,
)
from router.domain import NotificationId, NotificationState
from router.reachability import DeliveryOutcome

log = logging.getLogger(__name__)

EventMaker = Callable[[CascadeRecord, datetime], CascadeEvent | None]


class CascadeEngine:
    def __init__(
        self,
        pool: asyncpg.Pool,
        store: CascadeStore,
        queue: WorkQueue,
        reachability: ReachabilityStore,
        adapters: Mapping[str, ProviderAdapter],
        clock: Clock,
        telemetry: Telemetry,
        rate_limits: ProviderRateLimits,
        overdue_wait_grace: timedelta = timedelta(0),
    ) -> None:
        self._overdue_wait_grace = overdue_wait_grace
        self._telemetry = telemetry
        self._rate_limits = rate_limits
        self._pool = pool
        self._store = store
        self._queue = queue
        self._reachability = reachability
        self._adapters = adapters
        self._clock = clock

    async def process(self, item: WorkItem) -> None:
        """Run one claimed work item (the :class:`gateway.worker.WorkRunner` handler)."""
        match item.kind:
            case WorkKind.START:
                await self._apply(item, lambda record, now: Start(now))
            case WorkKind.TIMER:
                timer = _timer(item.payload)
                if self._defers(timer, item.payload):
                    await self._defer(item, timer)
                else:
                    await self._apply(item, lambda record, now: timer.fired(now))
            case WorkKind.EVENT:
                await self._apply_event(item)
            case WorkKind.SUBMIT:
                await self._submit(item)
            case _:
                log.error("unknown work item kind %r (item %s); closing it", item.kind, item.work_item_id)
                await self._apply(item, lambda record, now: None)

    def _defers(self, timer: ScheduleTimer, payload: Mapping[str, Any]) -> bool:
        """A report or read wait found long overdue means no gateway was listening (an
        outage) or the queue was behind; reports that came in or are being retried by the
        providers then have not been applied yet. Moving on now could send the message a
        second time on another channel, so such a wait gets ``overdue_wait_grace`` once more."""
        grace = self._overdue_wait_grace
        return (
            grace > timedelta(0)
            and timer.kind in (TimerKind.REPORT_WAIT, TimerKind.READ_WAIT)
            and not payload.get("deferred", False)
            and self._clock.now() - timer.due_at > grace
        )

    async def _defer(self, item: WorkItem, timer: ScheduleTimer) -> None:
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            record = await self._store.lock(conn, item.notification_id)
            await self._queue.complete(conn, item, now)
            if record is None or record.cascade.is_final:
                return
            payload = {**item.payload, "deferred": True}
            await self._queue.schedule(
                conn, item.notification_id, WorkKind.TIMER, now + self._overdue_wait_grace, now, payload
            )
        log.info(
            "notification %s: %s was overdue by %s; waiting %s more for reports",
            item.notification_id,
            timer.kind,
            now - timer.due_at,
            self._overdue_wait_grace,
        )

    async def cancel(self, notification_id: NotificationId) -> None:
        """Stop the pending steps of a notification (a final notification stays as it is)."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            record = await self._store.lock(conn, notification_id)
            if record is None:
                raise NotFound(f"notification {notification_id} not found")
            await self._transition(conn, record, CancelRequested(now), now)

    # -- the transaction around one event --------------------------------------------------

    async def _apply(self, item: WorkItem, make_event: EventMaker) -> None:
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            # Always the notification row first, then work items: one lock order, no deadlocks.
            record = await self._store.lock(conn, item.notification_id)
            await self._queue.complete(conn, item, now)
            if record is None:
                return
            event = make_event(record, now)
            if event is not None:
                await self._transition(conn, record, event, now)

    async def _transition(
        self, conn: asyncpg.Connection, record: CascadeRecord, event: CascadeEvent, now: datetime
    ) -> CascadeState:
        before = record.cascade
        transition = handle(before, event)
        for command in transition.commands:
            await self._execute(conn, record, command, now)
        await self._store.save(conn, record, before, transition.state, now)
        self._count_outcomes(before, transition.state)
        return transition.state

    def _count_outcomes(self, before: CascadeState, after: CascadeState) -> None:
        previous = {(a.step_index, a.number): a for a in before.attempts}
        for attempt in after.attempts:
            old = previous.get((attempt.step_index, attempt.number))
            concluded = attempt.outcome is not None or not attempt.status.in_flight
            was_concluded = old is not None and (old.outcome is not None or not old.status.in_flight)
            if concluded and (not was_concluded or (old is not None and old.outcome != attempt.outcome)):
                outcome = attempt.outcome.value if attempt.outcome is not None else attempt.status.value
                self._telemetry.attempt(attempt.channel.value, attempt.provider, outcome)
        if after.final_state is not None and before.final_state is None:
            reached = after.final_state in (NotificationState.DELIVERED, NotificationState.READ)
            self._telemetry.finished(
                after.final_state.value,
                len(after.attempts),
                (after.finished_at - after.plan.created_at) if reached and after.finished_at else None,
                read=after.final_state is NotificationState.READ,
            )

    async def _execute(
        self, conn: asyncpg.Connection, record: CascadeRecord, command: CascadeCommand, now: datetime
    ) -> None:
        match command:
            case SubmitStep():
                submit = {"step_index": command.step_index, "attempt": command.attempt}
                await self._queue.schedule(conn, record.notification_id, WorkKind.SUBMIT, now, now, submit)
            case ScheduleTimer():
                payload = {
                    "kind": command.kind.value,
                    "due_at": command.due_at.isoformat(),
                    "step_index": command.step_index,
                    "attempt": command.attempt,
                }
                await self._queue.schedule(
                    conn, record.notification_id, WorkKind.TIMER, command.due_at, now, payload
                )
            case RecordObservation():
                await self._reachability.observe(
                    conn,
                    record.phone,
                    command.channel,
                    command.outcome,
                    command.at,
                    command.latency,
                    after_timeout=command.after_timeout,
                )
            case RecordReachabilityFact():
                await self._reachability.observe(
                    conn,
                    record.phone,
                    command.channel,
                    DeliveryOutcome.UNREACHABLE,
                    command.at,
                    reason=command.reason,
                )
            case Finish():
                # Close every pending item of this notification: nothing more will be sent.
                await self._queue.close_pending(conn, record.notification_id, now)
                log.info(
                    "notification %s finished %s: %s", record.notification_id, command.state, command.reason
                )

    # -- delivery events --------------------------------------------------------------------

    async def _apply_event(self, item: WorkItem) -> None:
        with self._telemetry.span(
            "kaskad.delivery_report",
            await self._store.traceparent(item.notification_id),
            provider=str(item.payload.get("provider")),
            notification_id=str(item.notification_id),
        ) as span:
            kind = await self._apply_event_in_transaction(item)
            if kind is not None:
                span.set_attribute("kaskad.report", kind)

    async def _apply_event_in_transaction(self, item: WorkItem) -> str | None:
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            record = await self._store.lock(conn, item.notification_id)
            await self._queue.complete(conn, item, now)
            event = await self._store.event(conn, item.payload["provider"], item.payload["event_key"])
            if record is None or event is None or event.processed_at is not None or event.attempt_id is None:
                return None
            attempt = await self._store.attempt(conn, event.attempt_id)
            assert attempt is not None  # the foreign key guarantees it
            if attempt.provider_message_id is None:
                # The report found its attempt by the dedupe key before the submit result was
                # recorded (or the worker died in between): the report names the message.
                await self._store.record_submit(
                    conn, attempt, now, provider_message_id=event.provider_message_id
                )
            if event.billed_amount is not None or event.billed_units is not None:
                units = event.billed_units or 1
                await self._bill(conn, attempt, units, event.billed_amount, now, from_report=True)
            await self._store.mark_event_processed(conn, event, now)
            reported = DeliveryReported(
                attempt.step_index, attempt.try_number, DeliveryOutcome(event.kind), now
            )
            await self._transition(conn, record, reported, now)
            return event.kind

    async def _bill(
        self,
        conn: asyncpg.Connection,
        attempt: AttemptRow,
        units: int,
        reported: Decimal | None,
        now: datetime,
        *,
        from_report: bool,
    ) -> None:
        """Book what an attempt was billed: the provider's amount (from the submit receipt or a
        report) when it gave one, else the price book's, which is kept beside it either way.
        A report that comes after the attempt was booked (SMS, billed at submit) replaces the
        booked amount; a submit never replaces what a report already booked.

        ``from_report``: a delivery report billed it, and its word goes on the attempt row
        too (the submit path records its billing itself, never over a report's)."""
        book_price = self._adapters[attempt.provider].price_for(units).amount
        amount = book_price if reported is None else reported
        if from_report:
            await self._store.record_billing(conn, attempt.attempt_id, now, units, amount)
        if await self._store.book(conn, attempt.attempt_id, units, amount, book_price, now):
            self._telemetry.billed(attempt.channel.value, attempt.provider, amount)
        elif from_report and reported is not None:
            previous = await self._store.reprice(conn, attempt.attempt_id, units, amount)
            if previous is not None:
                self._telemetry.repriced(attempt.channel.value, attempt.provider, previous, amount)

    # -- provider submits -------------------------------------------------------------------

    async def _submit(self, item: WorkItem) -> None:
        step_index = int(item.payload["step_index"])
        number = int(item.payload["attempt"])
        record = await self._store.read(item.notification_id)
        planned = None if record is None else record.cascade.attempt(step_index, number)
        if record is None or planned is None or planned.status is not AttemptStatus.SUBMITTING:
            # Finished, cancelled or already applied by an earlier holder of this item.
            async with self._pool.acquire() as conn, conn.transaction():
                await self._queue.complete(conn, item, self._clock.now())
            return
        adapter = self._adapters[planned.provider]
        step = record.cascade.plan.steps[step_index]
        wait = await self._rate_limits.acquire(planned.provider, self._clock.now())
        if wait is not None:
            # Over the provider's per-second budget: run again in the next second.
            await self._queue.release(item, self._clock.now() + wait)
            return
        message = OutboundMessage(
            dedupe_key=dedupe_key(record.notification_id, step_index, number),
            phone=record.phone,
            text=record.bodies[step.channel],
            vk_user_id=int(record.vk_user_id) if record.vk_user_id else None,
            viber_user_id=record.viber_user_id,
            deadline=record.deadline,
        )
        receipt: SubmitReceipt | None = None
        failure: ProviderError | None = None
        started = time.perf_counter()
        with self._telemetry.span(
            "kaskad.provider_submit",
            record.traceparent,
            kind=SpanKind.CLIENT,
            provider=planned.provider,
            channel=step.channel.value,
            notification_id=str(record.notification_id),
            step=step_index + 1,
            attempt=number,
        ) as span:
            try:
                receipt = await adapter.submit(message)
            except ProviderError as exc:
                failure = exc
                span.set_attribute("kaskad.error", type(exc).__name__)
        self._telemetry.submitted(planned.provider, time.perf_counter() - started)
        now = self._clock.now()
        event: CascadeEvent
        if receipt is not None:
            event = StepSubmitted(step_index, number, now)
            await self._rate_limits.count_recipient(
                planned.provider, self._reachability.recipient_key(record.phone), now
            )
        else:
            assert failure is not None
            event = SubmitFailed(step_index, number, _classify(failure), now, str(failure))
            log.info("submit of %s step %d failed: %s", record.notification_id, step_index + 1, failure)
        async with self._pool.acquire() as conn, conn.transaction():
            locked = await self._store.lock(conn, item.notification_id)
            await self._queue.complete(conn, item, now)
            if locked is None:
                return
            row = await self._store.attempt_by_step(conn, item.notification_id, step_index, number)
            if row is not None and receipt is not None:
                billed_now = receipt.billed_now.amount
                await self._store.record_submit(
                    conn,
                    row,
                    now,
                    provider_message_id=receipt.provider_message_id,
                    billed_units=receipt.units if billed_now else None,
                    billed_amount=billed_now if billed_now else None,
                )
                if billed_now:
                    await self._bill(conn, row, receipt.units, billed_now, now, from_report=False)
            elif row is not None and failure is not None:
                await self._store.record_submit(conn, row, now, detail=str(failure))
            await self._transition(conn, locked, event, now)


def _classify(error: ProviderError) -> SubmitError:
    match error:
        case Unreachable():
            return SubmitError.UNREACHABLE
        case Rejected():
            return SubmitError.REJECTED
        case OutcomeUnknown():
            return SubmitError.OUTCOME_UNKNOWN
        case Transient() | CircuitOpen() | DeadlineExceeded():
            return SubmitError.TRANSIENT_EXHAUSTED
    # Any other adapter error means nothing was sent through this provider.
    return SubmitError.TRANSIENT_EXHAUSTED


def _timer(payload: Mapping[str, Any]) -> ScheduleTimer:
    return ScheduleTimer(
        kind=TimerKind(payload["kind"]),
        due_at=datetime.fromisoformat(payload["due_at"]),
        step_index=payload.get("step_index"),
        attempt=payload.get("attempt"),
    )
