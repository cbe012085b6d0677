"""The cascade engine: runs ``router.cascade`` over durable work items, many per transaction.

A worker claims a batch of due items and hands it to :meth:`CascadeEngine.process`:

- Every item but a submit (``start``, ``timer``, ``event``) is applied in ONE transaction:
  it locks the batch's notification rows (in id order: one lock order, no deadlocks),
  completes the items with their fencing tokens (reading the reports of event items in
  the same statement), feeds each item's event to the pure state machine in memory (items
  of one notification in due order), and writes what the transitions commanded at the
  end in ONE statement (closed notifications, work items to add, cascade states, attempt
  rows, reachability, reports applied; ``CascadeStore.write_batch``), after locking and
  reading the people it learnt about. Round trips to PostgreSQL, not SQL work, are what a
  cascade costs (each statement is a socket write and a wake-up of a server process), so
  a batch costs about as much as one item did, and a transaction is a handful of
  statements whatever it holds.
- ``submit`` items call their providers concurrently, outside any transaction, under the
  items' leases, in the background: the worker goes on claiming while calls are out. Each
  provider has a limit of calls in flight per process; a submit beyond it is handed back,
  due a moment later, so a stalled provider holds only its own work. Results are applied
  as they come in, the calls finishing about together in one transaction (the healthy
  case: the whole batch), so a slow provider's stragglers never hold the others' results.
  An item whose lease lapsed is fenced out of that transaction (its fencing token no longer
  matches) and its result is dropped: the worker that took it over re-submits with the
  same dedupe key, which the provider deduplicates.
- A transaction that moves cascades to a submit due now inserts those submit items already
  leased to this worker and returns them with the records as saved; the worker calls the
  providers as soon as it commits, without a claim or a read (a start's first submit, a
  fallback's next step). If the worker dies in between, the lease runs out and any worker
  claims them, as any leased item.

A batch that fails as a whole is retried item by item, so one bad item cannot hold the
others back; an item that fails alone stays leased and is retried when its lease expires.

Work item kinds: ``start`` (accepted), ``submit`` (call a provider), ``timer`` (a wait,
retry or deadline), ``event`` (a recorded delivery callback).

Unknown outcomes (a report wait that ran out, on time or found overdue after an outage) are
resolved before the cascade moves on (``router.cascade``): a ``status_query`` timer is, like a
submit, run outside any transaction: the engine asks the provider (``StatusQuery``), records a
final status as the delivery event it stands for (same event key as the callback, so it is
applied and billed once), and feeds the answer to the cascade in the timer's transaction.
Messenger steps are sent with a TTL of their wait plus ``messenger_ttl_margin``, and the
cascade is told when that TTL runs out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

import asyncpg
from opentelemetry.trace import SpanKind

from gateway.core.clock import Clock
from gateway.core.errors import NotFound
from gateway.core.model import AttemptRow
from gateway.core.telemetry import Telemetry
from gateway.store.cascade import (
    Bill,
    CascadeRecord,
    CascadeStore,
    CascadeWrites,
    EventRow,
    ScheduledWork,
    SubmitRecord,
    dedupe_key,
)
from gateway.store.rate_limits import ProviderRateLimits
from gateway.store.reachability import Observation, ReachabilityStore
from gateway.store.work_queue import Lease, WorkItem, WorkKind, WorkQueue
from providers.base import (
    DeliveryEvent,
    MessageTtl,
    OutboundMessage,
    ProviderAdapter,
    SubmitReceipt,
    status_query_of,
)
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
    Attempt,
    AttemptStatus,
    CancelRequested,
    CascadeEvent,
    CascadeState,
    DeliveryReported,
    Finish,
    RecordObservation,
    RecordReachabilityFact,
    ScheduleTimer,
    Start,
    StatusAnswered,
    StepSubmitted,
    SubmitError,
    SubmitFailed,
    SubmitStep,
    TimerKind,
    WaitExpired,
    handle,
)
from router.domain import DeliveryOutcome, NotificationId, NotificationState

log = logging.getLogger(__name__)

_T = TypeVar("_T")

# Submit items this worker holds already (inserted leased), with their records as saved.
_Leased = list[tuple[WorkItem, CascadeRecord]]

# After the first results of a round are in, the rest are waited for at least this long (and
# as long as the first took), so calls finishing about together share a transaction.
_RESULTS_GATHER_S = 0.02
# A submit over its provider's limit of calls in flight is due again this much later (more
# for a long queue of them: a limit's worth per such wait).
_SATURATED_RETRY = timedelta(seconds=1)


@dataclass
class CascadeBatch:
    """What one engine transaction changes: transitions run in memory against the locked
    records, and their writes wait here to be sent in one statement at the end."""

    records: dict[NotificationId, CascadeRecord]
    before: dict[NotificationId, CascadeState] = field(default_factory=dict)
    work: list[ScheduledWork] = field(default_factory=list)
    closed: set[NotificationId] = field(default_factory=set)
    observations: list[Observation] = field(default_factory=list)
    processed: list[EventRow] = field(default_factory=list)  # delivery events applied
    transitions: list[tuple[CascadeState, CascadeState]] = field(default_factory=list)
    finished: list[tuple[NotificationId, NotificationState, str]] = field(default_factory=list)

    def transition(self, notification_id: NotificationId, event: CascadeEvent, now: datetime) -> None:
        record = self.records[notification_id]
        transition = handle(record.cascade, event)
        self.before.setdefault(notification_id, record.cascade)
        for command in transition.commands:
            match command:
                case SubmitStep():
                    submit = {"step_index": command.step_index, "attempt": command.attempt}
                    self.schedule(notification_id, WorkKind.SUBMIT, now, submit)
                case ScheduleTimer():
                    payload = {
                        "kind": command.kind.value,
                        "due_at": command.due_at.isoformat(),
                        "step_index": command.step_index,
                        "attempt": command.attempt,
                    }
                    self.schedule(notification_id, WorkKind.TIMER, command.due_at, payload)
                case RecordObservation():
                    self.observations.append(
                        Observation(
                            record.phone,
                            command.channel,
                            command.outcome,
                            command.at,
                            command.latency,
                            after_timeout=command.after_timeout,
                        )
                    )
                case RecordReachabilityFact():
                    self.observations.append(
                        Observation(
                            record.phone,
                            command.channel,
                            DeliveryOutcome.UNREACHABLE,
                            command.at,
                            reason=command.reason,
                        )
                    )
                case Finish():
                    # Nothing more will be sent: pending items close, including the ones this
                    # batch was about to add (items added after this point stay, as they would
                    # one transaction at a time).
                    self.work = [w for w in self.work if w[0] != notification_id]
                    self.closed.add(notification_id)
                    self.finished.append((notification_id, command.state, command.reason))
        self.records[notification_id] = replace(record, cascade=transition.state)
        self.transitions.append((record.cascade, transition.state))

    def schedule(
        self, notification_id: NotificationId, kind: WorkKind, due_at: datetime, payload: dict[str, Any]
    ) -> None:
        self.work.append((notification_id, kind, due_at, payload))

    def changes(self) -> list[tuple[CascadeRecord, CascadeState, CascadeState]]:
        return [(self.records[n], before, self.records[n].cascade) for n, before in self.before.items()]


@dataclass(frozen=True, slots=True)
class _Call:
    """A submit item whose provider is to be called."""

    item: WorkItem
    record: CascadeRecord
    attempt: Attempt


@dataclass(frozen=True, slots=True)
class _Result:
    call: _Call
    receipt: SubmitReceipt | None
    failure: ProviderError | None
    at: datetime
    expires_at: datetime | None = None  # when the TTL it was sent with runs out


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
        lease: Lease | None = None,
        provider_concurrency: Mapping[str, int] | None = None,
        messenger_ttl_margin: timedelta = timedelta(0),
        status_recheck_after: timedelta = timedelta(seconds=30),
    ) -> None:
        """``lease``: who this engine's workers are; with it, submits that a transaction makes
        due at once are run by the same worker right after the commit (see the module doc).
        ``provider_concurrency``: calls in flight per provider at most (a provider not named,
        or 0: no limit)."""
        self._overdue_wait_grace = overdue_wait_grace
        self._concurrency = dict(provider_concurrency or {})
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._rounds: set[asyncio.Task[None]] = set()
        self._messenger_ttl_margin = messenger_ttl_margin
        self._status_recheck_after = status_recheck_after
        self._lease = lease
        self._telemetry = telemetry
        self._rate_limits = rate_limits
        self._pool = pool
        self._store = store
        self._queue = queue
        self._reachability = reachability
        self._adapters = adapters
        self._clock = clock

    async def hand_off(self, items: Sequence[WorkItem]) -> None:
        """Run a claimed batch of work items (the :class:`gateway.cascade.worker.WorkRunner` handler):
        start, timer and event items are applied before this returns; submits and status queries
        (provider calls), and the submits that applying them leads to, go on in the background
        (:meth:`settle` waits for them)."""
        submits = [item for item in items if item.kind == WorkKind.SUBMIT]
        queries = [item for item in items if _is_status_query(item)]
        others = [item for item in items if item.kind != WorkKind.SUBMIT and not _is_status_query(item)]
        self._dispatch(submits, None)
        if queries:
            self._in_background(self._query_round(queries), "kaskad-status-queries")
        leased = await self._in_batches(
            others, self._apply, lambda i: f"work item {i.work_item_id} ({i.kind})"
        )
        self._dispatch(*_unzip(leased))

    async def process(self, items: Sequence[WorkItem]) -> None:
        """Run a claimed batch of work items to the end, its submits and what they lead to
        included (and any other submits under way)."""
        await self.hand_off(items)
        await self.settle()

    async def settle(self) -> bool:
        """Wait until no submit is under way; whether any was (tests, ``simulate``, stopping)."""
        waited = False
        while self._rounds:
            waited = True
            await asyncio.gather(*list(self._rounds), return_exceptions=True)
        return waited

    async def aclose(self, grace: timedelta) -> None:
        """Let the submits under way be recorded for up to ``grace``, then cancel the rest (their
        items stay leased and run again once the lease lapses, with the same dedupe keys)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settle(), grace.total_seconds())
        for task in list(self._rounds):
            task.cancel()
        await asyncio.gather(*list(self._rounds), return_exceptions=True)

    async def cancel(self, notification_id: NotificationId) -> None:
        """Stop the pending steps of a notification (a final notification stays as it is)."""
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            batch = CascadeBatch(await self._store.lock_many(conn, [notification_id]))
            if notification_id not in batch.records:
                raise NotFound(f"notification {notification_id} not found")
            batch.transition(notification_id, CancelRequested(now), now)
            await self._write(conn, batch, now, None)
        await self._after_commit(batch)

    @staticmethod
    async def _in_batches(
        items: Sequence[_T],
        apply: Callable[[Sequence[_T]], Awaitable[_Leased]],
        describe: Callable[[_T], str],
    ) -> _Leased:
        """Apply items in one transaction; if that fails, one transaction per item, so that
        one bad item holds back only itself (it stays leased and runs again later). Returns
        the submits the committed transactions leased to this worker."""
        if not items:
            return []
        try:
            return await apply(items)
        except Exception:
            if len(items) == 1:
                log.exception("%s failed", describe(items[0]))
                return []
            log.warning("a batch of %d failed; applying them one by one", len(items), exc_info=True)
        leased: _Leased = []
        for item in items:
            try:
                leased += await apply([item])
            except Exception:
                log.exception("%s failed", describe(item))
        return leased

    # -- start, timer and event items ----------------------------------------------------

    async def _apply(
        self, items: Sequence[WorkItem], answers: Mapping[int, StatusAnswered] | None = None
    ) -> _Leased:
        """``answers``: the providers' answers to the status queries among ``items``, by item id."""
        now = self._clock.now()
        started_ns = time.time_ns()
        reports: list[tuple[CascadeRecord, str, str]] = []
        deferred: list[tuple[NotificationId, ScheduleTimer]] = []
        async with self._pool.acquire() as conn, conn.transaction():
            # Always the notification rows first, then work items: one lock order, no deadlocks.
            batch = CascadeBatch(await self._store.lock_many(conn, {i.notification_id for i in items}))
            completed = await self._store.complete_reading_events(conn, items, now)
            held, events, attempts = completed.held, completed.events, completed.attempts
            billed: list[tuple[AttemptRow, int, Decimal | None]] = []
            for item in sorted(items, key=lambda i: (i.due_at, i.work_item_id)):
                if item.work_item_id not in held:
                    log.warning(
                        "work item %s was taken over by another worker; left to it", item.work_item_id
                    )
                    continue
                record = batch.records.get(item.notification_id)
                if record is None:
                    continue
                match item.kind:
                    case WorkKind.START:
                        batch.transition(record.notification_id, Start(now), now)
                    case WorkKind.TIMER:
                        timer = _timer(item.payload)
                        fired = timer.fired(now)
                        queryable = False
                        if isinstance(fired, WaitExpired) and fired.kind is TimerKind.REPORT_WAIT:
                            queryable = self._can_query(record, fired.step_index)
                            fired = replace(fired, can_query=queryable)
                        elif answers is not None and item.work_item_id in answers:
                            fired = answers[item.work_item_id]
                        if not self._defers(timer, item.payload, now, queryable):
                            batch.transition(record.notification_id, fired, now)
                        elif not record.cascade.is_final:
                            payload = {**item.payload, "deferred": True}
                            batch.schedule(
                                record.notification_id,
                                WorkKind.TIMER,
                                now + self._overdue_wait_grace,
                                payload,
                            )
                            deferred.append((record.notification_id, timer))
                    case WorkKind.EVENT:
                        event = events.pop((item.payload["provider"], item.payload["event_key"]), None)
                        if event is None or event.processed_at is not None or event.attempt_id is None:
                            continue
                        attempt = attempts[event.attempt_id]
                        if attempt.provider_message_id is None:
                            # The report found its attempt by the dedupe key before the submit
                            # result was recorded (or the worker died in between): the report
                            # names the message.
                            named = SubmitRecord(attempt, provider_message_id=event.provider_message_id)
                            await self._store.record_submits(conn, [named], now)
                        if event.billed_amount is not None or event.billed_units is not None:
                            billed.append((attempt, event.billed_units or 1, event.billed_amount))
                        batch.processed.append(event)
                        reported = DeliveryReported(
                            attempt.step_index, attempt.try_number, DeliveryOutcome(event.kind), now
                        )
                        batch.transition(record.notification_id, reported, now)
                        reports.append((record, event.provider, event.kind))
                    case _:
                        log.error(
                            "unknown work item kind %r (item %s); closed it", item.kind, item.work_item_id
                        )
            await self._bill(conn, billed, now, from_report=True)
            leased = await self._write(conn, batch, now, self._lease)
        await self._after_commit(batch)
        ended_ns = time.time_ns()
        for record, provider, kind in reports:
            self._telemetry.record_span(
                "kaskad.delivery_report",
                record.traceparent,
                started_ns,
                ended_ns,
                provider=provider,
                notification_id=str(record.notification_id),
                **{"kaskad.report": kind, "kaskad.batch_size": len(items)},
            )
        for notification_id, timer in deferred:
            log.info(
                "notification %s: %s was overdue by %s; waiting %s more for reports",
                notification_id,
                timer.kind,
                now - timer.due_at,
                self._overdue_wait_grace,
            )
        return leased

    def _defers(
        self, timer: ScheduleTimer, payload: Mapping[str, Any], now: datetime, queryable: bool = False
    ) -> bool:
        """A report or read wait found long overdue means no gateway was listening (an
        outage) or the queue was behind; reports that came in or are being retried by the
        providers then have not been applied yet. Moving on now could send the message a
        second time on another channel, so such a wait gets ``overdue_wait_grace`` once more.
        A provider that answers status queries is asked instead (``queryable``)."""
        grace = self._overdue_wait_grace
        return (
            grace > timedelta(0)
            and not queryable
            and timer.kind in (TimerKind.REPORT_WAIT, TimerKind.READ_WAIT)
            and not payload.get("deferred", False)
            and now - timer.due_at > grace
        )

    def _can_query(self, record: CascadeRecord, step_index: int) -> bool:
        steps = record.cascade.plan.steps
        if not 0 <= step_index < len(steps):
            return False
        return status_query_of(self._adapters.get(steps[step_index].provider)) is not None

    # -- status queries ---------------------------------------------------------------------

    async def _query_round(self, items: Sequence[WorkItem]) -> None:
        """Ask the providers about these ``status_query`` items, apply the answers, and run the
        submits they lead to; in the background, like a round of submits."""
        try:
            answers = await self._ask_statuses(items)
            leased = await self._in_batches(
                items,
                lambda batch: self._apply(batch, answers),
                lambda i: f"status query {i.work_item_id}",
            )
            self._dispatch(*_unzip(leased))
        except Exception:
            # Unapplied items stay leased; after their leases expire another claim retries them.
            log.exception("a round of %d status queries failed", len(items))

    async def _ask_statuses(self, items: Sequence[WorkItem]) -> dict[int, StatusAnswered]:
        """Ask the providers about the attempts of these ``status_query`` items, outside any
        transaction. A final status is recorded as the delivery event it stands for (the
        callback's event key: a callback that comes too is the same event), so it is applied
        and billed like a report; the answers go to the items' transaction."""
        records = await self._store.read_many({i.notification_id for i in items})
        steps = {(i.notification_id, int(i.payload["step_index"]), int(i.payload["attempt"])) for i in items}
        async with self._pool.acquire() as conn:
            rows = await self._store.attempts_by_steps(conn, steps)

        async def ask(item: WorkItem) -> tuple[int, StatusAnswered] | None:
            step_index, number = int(item.payload["step_index"]), int(item.payload["attempt"])
            record = records.get(item.notification_id)
            attempt = None if record is None else record.cascade.attempt(step_index, number)
            if attempt is None or not attempt.querying:
                return None  # stale: the item's transaction closes it
            adapter = status_query_of(self._adapters.get(attempt.provider))
            events: list[DeliveryEvent] | None = None
            if adapter is not None:
                row = rows.get((item.notification_id, step_index, number))
                try:
                    events = await adapter.query_status(
                        None if row is None else row.provider_message_id,
                        dedupe_key(item.notification_id, step_index, number),
                    )
                except ProviderError as exc:
                    log.info(
                        "status query for %s step %d failed: %s", item.notification_id, step_index + 1, exc
                    )
            now = self._clock.now()
            outcome = None
            if events:
                await self._store.record_events(events, now)
                reached = [e for e in events if e.kind.reached_person]
                outcome = DeliveryOutcome((reached or events)[0].kind.value)
                log.info(
                    "notification %s step %d: the provider's status says %s",
                    item.notification_id,
                    step_index + 1,
                    outcome,
                )
            answer = StatusAnswered(step_index, number, outcome, now, now + self._status_recheck_after)
            return item.work_item_id, answer

        answered = await asyncio.gather(*(ask(item) for item in items))
        return dict(a for a in answered if a is not None)

    # -- the writes of one transaction ----------------------------------------------------

    async def _write(
        self, conn: asyncpg.Connection, batch: CascadeBatch, now: datetime, lease: Lease | None
    ) -> _Leased:
        """Send a batch's writes: the people it observed are locked and read, then everything
        is written in one statement. Returns the submits leased to this worker (``lease``) with
        their records as saved."""
        learnt = await self._reachability.learn(conn, batch.observations)
        writes = CascadeWrites(batch.closed, batch.work, batch.changes(), learnt, batch.processed)
        written = await self._store.write_batch(conn, writes, now, lease)
        return [
            (
                item,
                replace(
                    batch.records[item.notification_id], version=written.versions.get(item.notification_id)
                ),
            )
            for item in written.leased
        ]

    async def _after_commit(self, batch: CascadeBatch) -> None:
        await self._reachability.committed(batch.observations)
        for before, after in batch.transitions:
            self._count_outcomes(before, after)
        for notification_id, state, reason in batch.finished:
            log.info("notification %s finished %s: %s", notification_id, state, reason)

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

    async def _bill(
        self,
        conn: asyncpg.Connection,
        billed: Sequence[tuple[AttemptRow, int, Decimal | None]],
        now: datetime,
        *,
        from_report: bool,
    ) -> None:
        """Book what attempts were billed (attempt, units, the provider's amount if it gave one):
        the provider's amount when there is one, else the price book's, which is kept beside
        it either way. A report that comes after the attempt was booked (SMS, billed at
        submit) replaces the booked amount; a submit never replaces what a report already
        booked.

        ``from_report``: delivery reports billed them, and their word goes on the attempt rows
        too (the submit path records its billing itself, never over a report's). Each write
        is one statement for all attempts; an attempt billed twice in one batch (two reports)
        is applied in a second round, in order, as if alone."""
        entries_in_order = []
        for attempt, units, reported in billed:
            book_price = self._adapters[attempt.provider].price_for(units).amount
            bill = Bill(attempt.attempt_id, units, book_price if reported is None else reported, book_price)
            entries_in_order.append((attempt, bill, reported))
        for entries in in_rounds(entries_in_order, key=lambda entry: entry[1].attempt_id):
            bills = [bill for _, bill, _ in entries]
            if from_report:
                reported_bills = [bill for _, bill, reported in entries if reported is not None]
                booked, previous = await self._store.bill_from_reports(conn, bills, reported_bills, now)
            else:
                booked, previous = await self._store.book_many(conn, bills, now), {}
            for attempt, bill, _ in entries:
                if attempt.attempt_id in booked:
                    self._telemetry.billed(attempt.channel.value, attempt.provider, bill.amount)
                elif attempt.attempt_id in previous:
                    self._telemetry.repriced(
                        attempt.channel.value, attempt.provider, previous[attempt.attempt_id], bill.amount
                    )

    # -- provider submits -------------------------------------------------------------------

    def _dispatch(
        self, items: Sequence[WorkItem], known: Mapping[NotificationId, CascadeRecord] | None
    ) -> None:
        """Call the providers of these submit items and apply the results, in the background;
        ``known``: their records as this worker saved them (leased submits), else they are read."""
        if items:
            self._in_background(self._submit_round(items, known), "kaskad-submit-round")

    def _in_background(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run provider calls and what follows them as a task :meth:`settle` waits for."""
        task = asyncio.create_task(work, name=name)
        self._rounds.add(task)
        task.add_done_callback(self._rounds.discard)

    async def _submit_round(
        self, items: Sequence[WorkItem], known: Mapping[NotificationId, CascadeRecord] | None
    ) -> None:
        try:
            await self._submit_and_apply(items, known)
        except Exception:
            # Unapplied items stay leased; after their leases expire another claim retries them.
            log.exception("a round of %d submits failed", len(items))

    async def _submit_and_apply(
        self, items: Sequence[WorkItem], known: Mapping[NotificationId, CascadeRecord] | None
    ) -> None:
        records = (
            known if known is not None else await self._store.read_many({i.notification_id for i in items})
        )
        calls: list[_Call] = []
        stale: list[WorkItem] = []
        later: list[tuple[WorkItem, timedelta]] = []  # handed back, due again after this long
        over: collections.Counter[str] = collections.Counter()
        for item in items:
            record = records.get(item.notification_id)
            step_index, number = int(item.payload["step_index"]), int(item.payload["attempt"])
            planned = None if record is None else record.cascade.attempt(step_index, number)
            if record is None or planned is None or planned.status is not AttemptStatus.SUBMITTING:
                stale.append(item)  # finished, cancelled or already applied by an earlier holder
            elif (wait := self._take_slot(planned.provider, over)) is not None:
                later.append((item, wait))  # the provider has as many calls out as it may
            else:
                calls.append(_Call(item, record, planned))
        # The providers' per-second budgets and, after the calls, the people's daily counts:
        # one Redis round trip each for the whole round.
        try:
            waits = await self._rate_limits.acquire_many(
                [c.attempt.provider for c in calls], self._clock.now()
            )
        except BaseException:
            for call in calls:
                self._in_flight[call.attempt.provider] -= 1
            raise
        for call, wait in zip(calls, waits, strict=True):
            if wait is not None:  # over the provider's per-second budget: run again in the next second
                self._in_flight[call.attempt.provider] -= 1
                later.append((call.item, wait))
        calls = [c for c, wait in zip(calls, waits, strict=True) if wait is None]
        pending = {asyncio.create_task(self._call_in_slot(c)) for c in calls}
        try:
            try:
                await self._hand_back(later, stale)
            except Exception:
                log.exception(
                    "handing back %d submit items failed; they run when their leases lapse", len(later)
                )
            await self._apply_as_completed(pending)
        finally:
            for task in pending:  # only when cancelled or failed: no call is left running unowned
                task.cancel()

    async def _hand_back(
        self, later: Sequence[tuple[WorkItem, timedelta]], stale: Sequence[WorkItem]
    ) -> None:
        now = self._clock.now()
        for item, wait in later:
            await self._queue.release(item, now + wait)
        if stale:
            async with self._pool.acquire() as conn, conn.transaction():
                await self._queue.complete_many(conn, stale, self._clock.now())

    def _take_slot(self, provider: str, over: collections.Counter[str]) -> timedelta | None:
        """Count one more call out to ``provider``; over its limit none is counted, and the wait
        before the submit is due again is returned (``over``: this round's such submits)."""
        limit = self._concurrency.get(provider, 0)
        if limit and self._in_flight[provider] >= limit:
            # A long queue is spread over time: about a limit's worth comes back per period.
            waiting = over[provider]
            over[provider] += 1
            return _SATURATED_RETRY * (1 + waiting // limit)
        self._in_flight[provider] += 1
        return None

    async def _call_in_slot(self, call: _Call) -> _Result:
        try:
            return await self._call(call)
        finally:
            self._in_flight[call.attempt.provider] -= 1

    async def _apply_as_completed(self, pending: set[asyncio.Task[_Result]]) -> None:
        """Apply results as the calls finish: the first ones together with the calls that finish
        within as long again (a healthy round: all of them), then each later group; the next
        steps that applying leases go on as rounds of their own."""
        started = asyncio.get_running_loop().time()
        first = True
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if pending:
                # A batching window, not a business timer: the results are in memory meanwhile.
                window = _RESULTS_GATHER_S
                if first:
                    window = max(window, asyncio.get_running_loop().time() - started)
                more, pending = await asyncio.wait(pending, timeout=window)
                done |= more
            first = False
            results = [task.result() for task in done]
            await self._rate_limits.count_recipients(
                [
                    (r.call.attempt.provider, self._reachability.recipient_key(r.call.record.phone))
                    for r in results
                    if r.receipt is not None
                ],
                self._clock.now(),
            )
            leased = await self._in_batches(
                results,
                self._apply_submits,
                lambda r: f"submit result of work item {r.call.item.work_item_id}",
            )
            self._dispatch(*_unzip(leased))

    async def _call(self, call: _Call) -> _Result:
        record, planned = call.record, call.attempt
        step_index, number = planned.step_index, planned.number
        step = record.cascade.plan.steps[step_index]
        adapter = self._adapters[planned.provider]
        # A messenger leg lives about as long as its wait: abandoned for the next step, it
        # expires at the provider (unbilled) instead of arriving after the fallback.
        ttl = step.wait + self._messenger_ttl_margin if isinstance(adapter, MessageTtl) else None
        message = OutboundMessage(
            dedupe_key=dedupe_key(record.notification_id, step_index, number),
            phone=record.phone,
            text=record.bodies[step.channel],
            vk_user_id=int(record.vk_user_id) if record.vk_user_id else None,
            viber_user_id=record.viber_user_id,
            deadline=record.deadline,
            ttl=ttl,
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
        if failure is not None:
            log.info("submit of %s step %d failed: %s", record.notification_id, step_index + 1, failure)
        at = self._clock.now()
        # The provider counts the TTL from its acceptance, which is before ``at``.
        expires_at = at + adapter.ttl_for(message) if isinstance(adapter, MessageTtl) else None
        return _Result(call, receipt, failure, at, expires_at)

    async def _apply_submits(self, results: Sequence[_Result]) -> _Leased:
        now = self._clock.now()
        async with self._pool.acquire() as conn, conn.transaction():
            # The records were read before the provider calls; most rows have not changed since.
            batch = CascadeBatch(await self._store.lock_current(conn, [r.call.record for r in results]))
            calls = [r.call.item for r in results]
            held, rows = await self._store.complete_reading_attempts(conn, calls, now)
            submits: list[SubmitRecord] = []
            bills: list[tuple[AttemptRow, int, Decimal]] = []
            for result in results:
                planned, notification_id = result.call.attempt, result.call.record.notification_id
                if result.call.item.work_item_id not in held:
                    log.warning(
                        "work item %s was taken over by another worker; its result is left to it",
                        result.call.item.work_item_id,
                    )
                    continue
                if notification_id not in batch.records:
                    continue
                row = rows.get((notification_id, planned.step_index, planned.number))
                event: CascadeEvent
                if result.receipt is not None:
                    event = StepSubmitted(planned.step_index, planned.number, result.at, result.expires_at)
                    billed_now = result.receipt.billed_now.amount
                    if row is not None:
                        submits.append(
                            SubmitRecord(
                                row,
                                provider_message_id=result.receipt.provider_message_id,
                                billed_units=result.receipt.units if billed_now else None,
                                billed_amount=billed_now if billed_now else None,
                            )
                        )
                        if billed_now:
                            bills.append((row, result.receipt.units, billed_now))
                else:
                    assert result.failure is not None
                    failure = result.failure
                    event = SubmitFailed(
                        planned.step_index,
                        planned.number,
                        _classify(failure),
                        result.at,
                        str(failure),
                        # A provider-wide fault is retried from a timer: the provider's hint, and
                        # a random spread so that many retries do not come back in one wave.
                        retry_after=_retry_after(failure),
                        jitter=random.random(),
                        expires_at=result.expires_at,
                    )
                    if row is not None:
                        submits.append(SubmitRecord(row, detail=str(failure)))
                batch.transition(notification_id, event, now)
            await self._store.record_submits(conn, submits, now)
            await self._bill(conn, bills, now, from_report=False)
            leased = await self._write(conn, batch, now, self._lease)
        await self._after_commit(batch)
        return leased


def _unzip(leased: _Leased) -> tuple[list[WorkItem], dict[NotificationId, CascadeRecord]]:
    return [item for item, _ in leased], {record.notification_id: record for _, record in leased}


def in_rounds(items: Sequence[_T], key: Callable[[_T], Hashable]) -> list[list[_T]]:
    """``items`` in rounds where each key appears at most once, each key's items in order.

    Writing a round as one statement per kind is then the same as writing its items one
    by one: items of different keys do not touch each other's rows."""
    rounds: list[list[_T]] = []
    seen: dict[Hashable, int] = {}
    for item in items:
        k = key(item)
        number = seen[k] = seen.get(k, -1) + 1
        if number == len(rounds):
            rounds.append([])
        rounds[number].append(item)
    return rounds


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


def _retry_after(error: ProviderError) -> timedelta | None:
    """How long the provider (Retry-After) or its open breaker asked to wait, if it did."""
    if isinstance(error, Transient) and error.retry_after is not None:
        return timedelta(seconds=error.retry_after)
    if isinstance(error, CircuitOpen):
        return timedelta(seconds=error.retry_in)
    return None


def _is_status_query(item: WorkItem) -> bool:
    return item.kind == WorkKind.TIMER and item.payload.get("kind") == TimerKind.STATUS_QUERY.value


def _timer(payload: Mapping[str, Any]) -> ScheduleTimer:
    return ScheduleTimer(
        kind=TimerKind(payload["kind"]),
        due_at=datetime.fromisoformat(payload["due_at"]),
        step_index=payload.get("step_index"),
        attempt=payload.get("attempt"),
    )
