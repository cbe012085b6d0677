"""The cascade as a pure state machine: ``handle(state, event) -> Transition(state, commands)``.

The gateway owns every side effect. It stores :class:`CascadeState` (``to_dict``), feeds
each thing that happens as an event, and executes the returned commands:

- :class:`SubmitStep`: submit step N, attempt K (dedupe key derived from the notification
  id, step and attempt, so a retried submit is the same message to the provider);
- :class:`ScheduleTimer`: a durable timer row; when it fires, feed ``command.fired(at)``;
- :class:`RecordObservation` / :class:`RecordReachabilityFact`: update the recipient's
  reachability and the channel-wide stats (``command.apply(...)`` does it purely);
- :class:`Finish`: the notification's final state. Close every pending work item and
  timer of the notification; nothing else will be submitted.

Rules:

- Under ``AckPolicy.DELIVERED`` a delivered/read/answered report ends the cascade; under
  ``READ`` only read/answered do, and "delivered" starts the step's read wait.
- A report from an *earlier* step that arrives after the next step started still ends
  the cascade, flagged ``late`` (the report page counts how often waits were too short).
- A submit whose outcome is unknown (timeout after sending) is not a failure: wait for
  the report up to the step's wait, then resolve it as below.
- A report wait that runs out (on time, or found overdue after an outage) leaves the
  outcome unknown; it is resolved before moving on: where the provider answers a status
  query (``WaitExpired.can_query``), a ``STATUS_QUERY`` timer asks it (up to
  ``MAX_STATUS_QUERIES`` times, ``StatusAnswered.recheck_at`` apart; a final status is
  applied like a report); a step sent with a TTL (``expires_at``) is waited on until the
  TTL has passed, after which the provider will not deliver it, and a queryable one is
  asked once more then (its answer is final); then the cascade moves on.
- "Unreachable" moves on at once and records a reachability fact.
- A provider-wide fault (open breaker, 429/5xx after the short in-process retries, refused
  connection, "try later") says nothing about the person: the same submit (same attempt,
  same dedupe key) is retried from a ``SUBMIT_RETRY`` timer, backing off exponentially with
  jitter and never sooner than the provider's ``Retry-After``. The cascade moves on to the
  next step without learning anything about the person only when the retry would come after
  the step's ``patience`` (the planner's judgement of what waiting is worth) or too late for
  the later steps; a step left that way may be tried again when the others said their word.
- No answer / busy from the voice robot schedules another call, up to the planned count,
  while the deadline allows.
- FAILED means every step said something final about the person; while a step is only
  provider-faulted it is retried until the deadline, which gives EXPIRED. Cancel gives CANCELLED.
- Final states absorb every event; a late report is still recorded as data.
- Stale and repeated events (a timer for a step already left, a duplicate callback) are
  ignored, so the gateway may deliver events at least once.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, assert_never

from router.domain import AckPolicy, Channel, DeliveryOutcome, NotificationState
from router.planner import Plan
from router.reachability import ReachabilitySettings, RecipientReachability, TrafficStats

# -- vocabulary ------------------------------------------------------------------------------


class SubmitError(enum.StrEnum):
    """How a submit failed, as the provider adapter classified it."""

    UNREACHABLE = "unreachable"
    """The person cannot be reached on this channel (not a user, privacy, blocked)."""
    REJECTED = "rejected"
    """This message can never go through this provider (too long, bad content)."""
    TRANSIENT_EXHAUSTED = "transient_exhausted"
    """A provider-wide fault (retries ran out, the breaker is open); nothing was sent, and it
    says nothing about the person: retried later from a ``SUBMIT_RETRY`` timer."""
    OUTCOME_UNKNOWN = "outcome_unknown"
    """The request may have been sent (timeout after sending); resolve from the report."""


class TimerKind(enum.StrEnum):
    REPORT_WAIT = "report_wait"
    """The step's wait for a delivery report."""
    READ_WAIT = "read_wait"
    """Under READ: the wait for a read after the delivery report."""
    VOICE_RETRY = "voice_retry"
    """When to call again after no answer or busy."""
    DEADLINE = "deadline"
    SUBMIT_RETRY = "submit_retry"
    """When to submit again (same attempt, same dedupe key) after a provider-wide fault."""

    STATUS_QUERY = "status_query"
    """Ask the provider for the status of a message whose wait ran out (the gateway does
    the I/O and feeds the answer as :class:`StatusAnswered`)."""


RETRY_BACKOFF_INITIAL = timedelta(seconds=5)
"""The wait before the first retry of a provider-faulted submit; it doubles with each retry."""
RETRY_BACKOFF_MAX = timedelta(minutes=2)
"""The longest backoff between retries (a provider's ``Retry-After`` may ask for more)."""


def retry_delay(retries: int, jitter: float, retry_after: timedelta | None = None) -> timedelta:
    """The wait before retry number ``retries`` (from 1) of a provider-faulted submit.

    Exponential backoff from :data:`RETRY_BACKOFF_INITIAL`, capped at :data:`RETRY_BACKOFF_MAX`,
    its upper half spread by ``jitter`` (a fraction in [0, 1] the gateway draws, so retries of
    many notifications do not come in waves), never sooner than ``retry_after``.
    """
    base = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_INITIAL * (1 << min(max(retries, 1) - 1, 20)))
    delay = base / 2 + base / 2 * min(max(jitter, 0.0), 1.0)
    return delay if retry_after is None else max(delay, retry_after)


MAX_STATUS_QUERIES = 2
"""Status queries per attempt: at the end of its wait, and once more after a pending answer."""


class AttemptStatus(enum.StrEnum):
    SUBMITTING = "submitting"
    AWAITING_REPORT = "awaiting_report"
    OUTCOME_UNKNOWN = "outcome_unknown"
    AWAITING_READ = "awaiting_read"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    NOT_SENT = "not_sent"
    """A provider-wide fault kept it from being sent and the cascade moved on; the step may be
    tried again with a new attempt. Nothing was learned about the person."""
    RETRY_WAIT = "retry_wait"
    """A provider-wide fault: the same submit is retried when its ``SUBMIT_RETRY`` timer fires."""
    TIMED_OUT = "timed_out"
    """Its wait ran out and the cascade moved on; a report may still come (late)."""
    ABANDONED = "abandoned"
    """The cascade finished (deadline, cancel) while it was in flight."""

    @property
    def in_flight(self) -> bool:
        return self in (
            AttemptStatus.SUBMITTING,
            AttemptStatus.AWAITING_REPORT,
            AttemptStatus.OUTCOME_UNKNOWN,
            AttemptStatus.AWAITING_READ,
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One submit of one step (the voice robot may have several per step)."""

    step_index: int
    number: int
    channel: Channel
    provider: str
    status: AttemptStatus
    requested_at: datetime
    submitted_at: datetime | None = None
    outcome: DeliveryOutcome | None = None
    outcome_at: datetime | None = None
    observed: bool = False
    """Whether its one reachability observation was emitted."""
    late: bool = False
    """Its report came after the cascade had moved past it."""
    timed_out: bool = False
    """Its wait ran out before any report (observed as ``timed_out``); a delivery reported
    after that is observed once more, as a late delivery."""
    retries: int = 0
    """How many times a provider-wide fault made this submit wait for a retry."""
    fault_since: datetime | None = None
    """Its first provider-wide fault: the step's patience is counted from here."""
    expires_at: datetime | None = None
    """When the provider gives up on it (it was sent with a TTL); not delivered by then, never."""
    queries: int = 0
    """Status queries asked about it."""
    querying: bool = False
    """A status query is out; its answer decides what comes next."""

    def to_dict(self) -> dict[str, Any]:
        # The resolution fields only when set: most attempts never need them.
        extra: dict[str, Any] = {}
        if self.expires_at is not None:
            extra["expires_at"] = self.expires_at.isoformat()
        if self.queries:
            extra["queries"] = self.queries
        if self.querying:
            extra["querying"] = True
        return {
            "step_index": self.step_index,
            "number": self.number,
            "channel": self.channel.value,
            "provider": self.provider,
            "status": self.status.value,
            "requested_at": self.requested_at.isoformat(),
            "submitted_at": _iso(self.submitted_at),
            "outcome": None if self.outcome is None else self.outcome.value,
            "outcome_at": _iso(self.outcome_at),
            "observed": self.observed,
            "late": self.late,
            "timed_out": self.timed_out,
            "retries": self.retries,
            "fault_since": _iso(self.fault_since),
            **extra,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Attempt:
        outcome = data.get("outcome")
        return cls(
            step_index=int(data["step_index"]),
            number=int(data["number"]),
            channel=Channel(data["channel"]),
            provider=str(data["provider"]),
            status=AttemptStatus(data["status"]),
            requested_at=datetime.fromisoformat(data["requested_at"]),
            submitted_at=_time(data.get("submitted_at")),
            outcome=None if outcome is None else DeliveryOutcome(outcome),
            outcome_at=_time(data.get("outcome_at")),
            observed=bool(data.get("observed", False)),
            late=bool(data.get("late", False)),
            timed_out=bool(data.get("timed_out", False)),
            retries=int(data.get("retries", 0)),
            fault_since=_time(data.get("fault_since")),
            expires_at=_time(data.get("expires_at")),
            queries=int(data.get("queries", 0)),
            querying=bool(data.get("querying", False)),
        )


@dataclass(frozen=True, slots=True)
class CascadeState:
    """Where one notification's cascade is. Create with :meth:`new`, advance with :func:`handle`."""

    plan: Plan
    started: bool = False
    current_step: int | None = None
    attempts: tuple[Attempt, ...] = ()
    final_state: NotificationState | None = None
    finished_at: datetime | None = None
    finish_reason: str | None = None
    reached_by_step: int | None = None
    ended_by_late_report: bool = False

    @classmethod
    def new(cls, plan: Plan) -> CascadeState:
        return cls(plan=plan)

    @property
    def is_final(self) -> bool:
        return self.final_state is not None

    def attempt(self, step_index: int, number: int) -> Attempt | None:
        for attempt in self.attempts:
            if attempt.step_index == step_index and attempt.number == number:
                return attempt
        return None

    def latest_attempt(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None

    def to_dict(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), **self.progress_dict()}

    def progress_dict(self) -> dict[str, Any]:
        """Everything but the plan, which never changes and is stored once, apart."""
        return {
            "started": self.started,
            "current_step": self.current_step,
            "attempts": [a.to_dict() for a in self.attempts],
            "final_state": None if self.final_state is None else self.final_state.value,
            "finished_at": _iso(self.finished_at),
            "finish_reason": self.finish_reason,
            "reached_by_step": self.reached_by_step,
            "ended_by_late_report": self.ended_by_late_report,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CascadeState:
        return cls.from_progress(Plan.from_dict(data["plan"]), data)

    @classmethod
    def from_progress(cls, plan: Plan, data: Mapping[str, Any]) -> CascadeState:
        """The state :meth:`progress_dict` wrote, on ``plan`` (a ``plan`` key in ``data`` is ignored)."""
        final = data.get("final_state")
        current = data.get("current_step")
        reached = data.get("reached_by_step")
        return cls(
            plan=plan,
            started=bool(data.get("started", False)),
            current_step=None if current is None else int(current),
            attempts=tuple(Attempt.from_dict(a) for a in data.get("attempts", ())),
            final_state=None if final is None else NotificationState(final),
            finished_at=_time(data.get("finished_at")),
            finish_reason=data.get("finish_reason"),
            reached_by_step=None if reached is None else int(reached),
            ended_by_late_report=bool(data.get("ended_by_late_report", False)),
        )


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Start:
    """Begin the cascade (the accepted notification's first work item)."""

    at: datetime


@dataclass(frozen=True, slots=True)
class StepSubmitted:
    """The provider accepted the submit of ``step_index``, attempt ``attempt``; ``expires_at``:
    when its TTL runs out, if it was sent with one."""

    step_index: int
    attempt: int
    at: datetime
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SubmitFailed:
    """A submit failed. For a provider-wide fault (``TRANSIENT_EXHAUSTED``), ``retry_after`` is
    how long the provider (or its open breaker) asked to wait, and ``jitter`` a fraction in
    [0, 1] the gateway drew to spread the retry (the router has no randomness of its own).
    ``expires_at``: for an unknown outcome, when the TTL of what may have been sent runs out."""

    step_index: int
    attempt: int
    error: SubmitError
    at: datetime
    detail: str | None = None
    retry_after: timedelta | None = None
    jitter: float = 0.5
    expires_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeliveryReported:
    """A provider callback (or status query) about one attempt."""

    step_index: int
    attempt: int
    outcome: DeliveryOutcome
    at: datetime


@dataclass(frozen=True, slots=True)
class WaitExpired:
    """A REPORT_WAIT or READ_WAIT timer fired; ``can_query``: the step's provider answers
    status queries (the gateway knows its adapters, the cascade does not)."""

    step_index: int
    attempt: int
    kind: TimerKind
    at: datetime
    can_query: bool = False


@dataclass(frozen=True, slots=True)
class StatusAnswered:
    """The provider's answer to a STATUS_QUERY: a final ``outcome``, or None (pending, or not
    known: the query failed); ``recheck_at``: when to ask again if it was None."""

    step_index: int
    attempt: int
    outcome: DeliveryOutcome | None
    at: datetime
    recheck_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class RetryDue:
    """A VOICE_RETRY timer fired: time for call number ``attempt`` of the step."""

    step_index: int
    attempt: int
    at: datetime


@dataclass(frozen=True, slots=True)
class SubmitRetryDue:
    """A SUBMIT_RETRY timer fired: submit attempt ``attempt`` of the step again."""

    step_index: int
    attempt: int
    at: datetime


@dataclass(frozen=True, slots=True)
class DeadlineReached:
    at: datetime


@dataclass(frozen=True, slots=True)
class CancelRequested:
    at: datetime


CascadeEvent = (
    Start
    | StepSubmitted
    | SubmitFailed
    | DeliveryReported
    | WaitExpired
    | StatusAnswered
    | RetryDue
    | SubmitRetryDue
    | DeadlineReached
    | CancelRequested
)

# -- commands --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubmitStep:
    """Submit the plan's step ``step_index`` (attempt ``attempt``) unless ``not_after`` passed."""

    step_index: int
    attempt: int
    channel: Channel
    provider: str
    not_after: datetime


@dataclass(frozen=True, slots=True)
class ScheduleTimer:
    """Create a durable timer; when it fires, feed :meth:`fired` to :func:`handle`."""

    kind: TimerKind
    due_at: datetime
    step_index: int | None = None
    attempt: int | None = None

    def fired(self, at: datetime) -> CascadeEvent:
        """The event this timer produces when it fires at ``at``."""
        match self.kind:
            case TimerKind.DEADLINE:
                return DeadlineReached(at)
            case TimerKind.VOICE_RETRY:
                return RetryDue(self._step(), self._attempt(), at)
            case TimerKind.SUBMIT_RETRY:
                return SubmitRetryDue(self._step(), self._attempt(), at)
            case TimerKind.REPORT_WAIT | TimerKind.READ_WAIT:
                return WaitExpired(self._step(), self._attempt(), self.kind, at)
            case TimerKind.STATUS_QUERY:
                # Fired without an answer (the gateway asks and substitutes it): unknown.
                return StatusAnswered(self._step(), self._attempt(), None, at)
            case _ as unreachable:
                assert_never(unreachable)

    def _step(self) -> int:
        if self.step_index is None:
            raise ValueError(f"{self.kind} timer without a step")
        return self.step_index

    def _attempt(self) -> int:
        if self.attempt is None:
            raise ValueError(f"{self.kind} timer without an attempt")
        return self.attempt


@dataclass(frozen=True, slots=True)
class RecordObservation:
    """One outcome for the recipient's reachability and the channel-wide stats.

    ``latency`` (submit to report) is set when the outcome reached the person.
    ``after_timeout``: the report of an attempt already observed as ``timed_out``; only a
    delivery is news then (a late delivery, billed although the cascade moved on).
    """

    channel: Channel
    provider: str
    outcome: DeliveryOutcome
    at: datetime
    latency: timedelta | None = None
    late: bool = False
    after_timeout: bool = False

    def apply(
        self,
        recipient: RecipientReachability,
        traffic: TrafficStats,
        settings: ReachabilitySettings | None = None,
    ) -> tuple[RecipientReachability, TrafficStats]:
        after = self.after_timeout
        return (
            recipient.observe(
                self.channel, self.outcome, self.at, settings, after_timeout=after, latency=self.latency
            ),
            traffic.observe(self.channel, self.outcome, self.latency, settings, after_timeout=after),
        )


@dataclass(frozen=True, slots=True)
class RecordReachabilityFact:
    """The provider said the person cannot be reached on ``channel``: a hard fact."""

    channel: Channel
    provider: str
    at: datetime
    reason: str

    def apply(
        self,
        recipient: RecipientReachability,
        traffic: TrafficStats,
        settings: ReachabilitySettings | None = None,
    ) -> tuple[RecipientReachability, TrafficStats]:
        return (
            recipient.observe(self.channel, DeliveryOutcome.UNREACHABLE, self.at, settings, self.reason),
            traffic.observe(self.channel, DeliveryOutcome.UNREACHABLE, None, settings),
        )


@dataclass(frozen=True, slots=True)
class Finish:
    """The notification reached a final state; close all its pending work."""

    state: NotificationState
    at: datetime
    reason: str
    reached_by_step: int | None = None
    late: bool = False


CascadeCommand = SubmitStep | ScheduleTimer | RecordObservation | RecordReachabilityFact | Finish


@dataclass(frozen=True, slots=True)
class Transition:
    state: CascadeState
    commands: tuple[CascadeCommand, ...] = ()


# -- the machine ------------------------------------------------------------------------------


def handle(state: CascadeState, event: CascadeEvent) -> Transition:
    """The cascade after ``event``, and what the gateway must do about it."""
    if state.is_final:
        return _after_final(state, event)
    match event:
        case Start():
            return _start(state, event.at)
        case StepSubmitted():
            return _submitted(state, event)
        case SubmitFailed():
            return _submit_failed(state, event)
        case DeliveryReported():
            return _reported(state, event)
        case WaitExpired():
            return _wait_expired(state, event)
        case StatusAnswered():
            return _status_answered(state, event)
        case RetryDue():
            return _retry_due(state, event)
        case SubmitRetryDue():
            return _submit_retry_due(state, event)
        case DeadlineReached():
            if event.at < state.plan.deadline:
                return Transition(state)  # a timer fired early; the real one will come
            return _finish(state, NotificationState.EXPIRED, event.at, "the deadline passed")
        case CancelRequested():
            return _finish(state, NotificationState.CANCELLED, event.at, "cancelled by the caller")
        case _ as unreachable:
            assert_never(unreachable)


def _start(state: CascadeState, at: datetime) -> Transition:
    if state.started:
        return Transition(state)
    state = replace(state, started=True)
    if not state.plan.steps:
        reasons = "; ".join(f"{s.channel}: {s.reason}" for s in state.plan.skipped) or "no channels"
        return _finish(state, NotificationState.FAILED, at, f"no usable channel ({reasons})")
    deadline_timer = ScheduleTimer(TimerKind.DEADLINE, state.plan.deadline)
    begun = _begin(state, 0, 1, at)
    return Transition(begun.state, (deadline_timer, *begun.commands))


def _begin(state: CascadeState, step_index: int, number: int, at: datetime) -> Transition:
    if at >= state.plan.deadline:
        return _finish(state, NotificationState.EXPIRED, at, "the deadline passed before the next step")
    step = state.plan.steps[step_index]
    attempt = Attempt(step_index, number, step.channel, step.provider, AttemptStatus.SUBMITTING, at)
    state = replace(state, current_step=step_index, attempts=(*state.attempts, attempt))
    return Transition(
        state, (SubmitStep(step_index, number, step.channel, step.provider, state.plan.deadline),)
    )


def _advance(state: CascadeState, at: datetime, why: str) -> Transition:
    assert state.current_step is not None
    following = _next_open_step(state, state.current_step)
    if following is None:
        return _finish(state, NotificationState.FAILED, at, f"every step failed; last: {why}")
    return _begin(state, following, _next_number(state, following), at)


def _is_open(state: CascadeState, step_index: int) -> bool:
    """The step has said nothing about the person: never tried, or only kept from being sent
    by provider faults."""
    return all(a.status is AttemptStatus.NOT_SENT for a in state.attempts if a.step_index == step_index)


def _next_open_step(state: CascadeState, current: int) -> int | None:
    """The step to go to from ``current``: the next one not tried yet, else (once every later
    step has said its word) an earlier one that provider faults kept from being sent."""
    count = len(state.plan.steps)
    order = [*range(current + 1, count), *range(current)]
    return next((i for i in order if _is_open(state, i)), None)


def _next_number(state: CascadeState, step_index: int) -> int:
    return 1 + max((a.number for a in state.attempts if a.step_index == step_index), default=0)


def _latest_leave(state: CascadeState, step_index: int) -> datetime:
    """The latest a step can be left for the later steps to keep their planned waits (each
    but the last must end before the deadline)."""
    later = state.plan.steps[step_index + 1 : -1]
    return state.plan.deadline - sum((s.wait + (s.ack_wait or timedelta(0)) for s in later), timedelta(0))


def _is_current(state: CascadeState, attempt: Attempt) -> bool:
    """The attempt the cascade is waiting on; reports about any other one are late."""
    latest = state.latest_attempt()
    return (
        latest is not None
        and (latest.step_index, latest.number) == (attempt.step_index, attempt.number)
        and attempt.step_index == state.current_step
    )


def _submitted(state: CascadeState, event: StepSubmitted) -> Transition:
    attempt = state.attempt(event.step_index, event.attempt)
    if attempt is None or attempt.submitted_at is not None:
        return Transition(state)
    if attempt.status is not AttemptStatus.SUBMITTING or not _is_current(state, attempt):
        # A report overtook the submit acknowledgement; keep the submit time for latency.
        return Transition(_with(state, replace(attempt, submitted_at=event.at)))
    step = state.plan.steps[attempt.step_index]
    updated = replace(
        attempt, status=AttemptStatus.AWAITING_REPORT, submitted_at=event.at, expires_at=event.expires_at
    )
    timer = ScheduleTimer(TimerKind.REPORT_WAIT, event.at + step.wait, attempt.step_index, attempt.number)
    return Transition(_with(state, updated), (timer,))


def _submit_failed(state: CascadeState, event: SubmitFailed) -> Transition:
    attempt = state.attempt(event.step_index, event.attempt)
    if attempt is None or attempt.status is not AttemptStatus.SUBMITTING or not _is_current(state, attempt):
        return Transition(state)
    detail = event.detail or str(event.error)
    match event.error:
        case SubmitError.OUTCOME_UNKNOWN:
            # It may have been sent: moving on now could reach the person twice.
            step = state.plan.steps[attempt.step_index]
            updated = replace(
                attempt,
                status=AttemptStatus.OUTCOME_UNKNOWN,
                submitted_at=event.at,
                expires_at=event.expires_at,
            )
            timer = ScheduleTimer(
                TimerKind.REPORT_WAIT, event.at + step.wait, attempt.step_index, attempt.number
            )
            return Transition(_with(state, updated), (timer,))
        case SubmitError.UNREACHABLE:
            updated = replace(
                attempt,
                status=AttemptStatus.FAILED,
                outcome=DeliveryOutcome.UNREACHABLE,
                outcome_at=event.at,
                observed=True,
            )
            fact = RecordReachabilityFact(attempt.channel, attempt.provider, event.at, detail)
            moved = _advance(_with(state, updated), event.at, f"{attempt.channel} unreachable: {detail}")
            return Transition(moved.state, (fact, *moved.commands))
        case SubmitError.REJECTED:
            updated = replace(
                attempt, status=AttemptStatus.FAILED, outcome=DeliveryOutcome.REJECTED, outcome_at=event.at
            )
            return _advance(_with(state, updated), event.at, f"{attempt.channel} rejected: {detail}")
        case SubmitError.TRANSIENT_EXHAUSTED:
            return _provider_fault(state, attempt, event)
        case _ as unreachable:
            assert_never(unreachable)


def _provider_fault(state: CascadeState, attempt: Attempt, event: SubmitFailed) -> Transition:
    """Wait a provider-wide fault out from a timer, or move on when waiting costs more.

    Nothing is observed about the person either way: the provider never had the message.
    """
    retries = attempt.retries + 1
    since = attempt.fault_since or event.at
    faulted = replace(attempt, retries=retries, fault_since=since, outcome_at=event.at)
    due = event.at + retry_delay(retries, event.jitter, event.retry_after)
    step = state.plan.steps[attempt.step_index]
    elsewhere = _next_open_step(state, attempt.step_index)
    if elsewhere is None:
        leave_at = None
    elif any(a.step_index == elsewhere for a in state.attempts):
        # Back to a step whose provider was down too: after the patience, and never at once,
        # so that channels that are all down are not tried in a tight loop.
        leave_at = since + max(step.patience, RETRY_BACKOFF_MAX)
    else:
        # Forward: also early enough for the later steps to keep their waits.
        leave_at = min(since + step.patience, _latest_leave(state, attempt.step_index))
    if elsewhere is not None and leave_at is not None and due > leave_at:
        left = _with(state, replace(faulted, status=AttemptStatus.NOT_SENT))
        return _begin(left, elsewhere, _next_number(left, elsewhere), event.at)
    waiting = _with(state, replace(faulted, status=AttemptStatus.RETRY_WAIT))
    if due >= state.plan.deadline:
        return Transition(waiting)  # no retry fits: the deadline timer ends it EXPIRED
    timer = ScheduleTimer(TimerKind.SUBMIT_RETRY, due, attempt.step_index, attempt.number)
    return Transition(waiting, (timer,))


def _submit_retry_due(state: CascadeState, event: SubmitRetryDue) -> Transition:
    attempt = state.attempt(event.step_index, event.attempt)
    if attempt is None or attempt.status is not AttemptStatus.RETRY_WAIT or not _is_current(state, attempt):
        return Transition(state)  # a stale or repeated timer
    if event.at >= state.plan.deadline:
        return _finish(state, NotificationState.EXPIRED, event.at, "the deadline passed before a retry")
    again = replace(attempt, status=AttemptStatus.SUBMITTING)
    submit = SubmitStep(
        attempt.step_index, attempt.number, attempt.channel, attempt.provider, state.plan.deadline
    )
    return Transition(_with(state, again), (submit,))


def _reported(state: CascadeState, event: DeliveryReported) -> Transition:
    attempt = state.attempt(event.step_index, event.attempt)
    if attempt is None:
        return Transition(state)
    current = _is_current(state, attempt)
    policy = state.plan.ack_policy
    outcome = event.outcome
    commands: list[CascadeCommand] = []
    observed = attempt.observed
    if not observed and outcome.says_about_recipient:
        # Expired after its wait ran out (its status was being asked): the person let the whole
        # wait pass, which the planner must price as a timeout, not as a quick failure.
        expired_after_wait = outcome is DeliveryOutcome.EXPIRED and attempt.queries > 0
        seen = DeliveryOutcome.TIMED_OUT if expired_after_wait else outcome
        commands.append(_observation(attempt, seen, event.at, late=not current))
        observed = True
    elif _late_delivery(attempt, outcome):
        commands.append(_observation(attempt, outcome, event.at, late=True, after_timeout=True))

    if _ends_cascade(outcome, policy):
        updated = replace(
            attempt,
            status=AttemptStatus.SUCCEEDED,
            outcome=outcome,
            outcome_at=event.at,
            observed=observed,
            late=not current,
        )
        final = _success_state(outcome, policy)
        how = f"{outcome} on {attempt.channel} (step {attempt.step_index + 1})"
        finished = _finish(
            _with(state, updated),
            final,
            event.at,
            how + (", reported after the next step started" if not current else ""),
            reached_by_step=attempt.step_index,
            late=not current,
        )
        return Transition(finished.state, (*commands, *finished.commands))

    if attempt.outcome is not None and attempt.status not in (
        AttemptStatus.TIMED_OUT,
        AttemptStatus.AWAITING_READ,
    ):
        # Already concluded (a duplicate or contradicting callback): keep the first word.
        return Transition(_with(state, replace(attempt, observed=observed)), tuple(commands))

    match outcome:
        case DeliveryOutcome.DELIVERED:
            # Only reached under READ: delivered, now wait for the read.
            if attempt.status is AttemptStatus.AWAITING_READ:
                return Transition(state)
            step = state.plan.steps[attempt.step_index]
            if not current:
                updated = replace(attempt, outcome=outcome, outcome_at=event.at, observed=observed, late=True)
                return Transition(_with(state, updated), tuple(commands))
            updated = replace(
                attempt,
                status=AttemptStatus.AWAITING_READ,
                outcome=outcome,
                outcome_at=event.at,
                observed=observed,
            )
            ack_wait = step.ack_wait or timedelta(0)
            timer = ScheduleTimer(
                TimerKind.READ_WAIT, event.at + ack_wait, attempt.step_index, attempt.number
            )
            return Transition(_with(state, updated), (*commands, timer))
        case (
            DeliveryOutcome.FAILED
            | DeliveryOutcome.EXPIRED
            | DeliveryOutcome.UNDELIVERABLE
            | DeliveryOutcome.REJECTED
            | DeliveryOutcome.UNREACHABLE
            | DeliveryOutcome.TIMED_OUT  # never reported by a provider; a failure if it were
        ):
            if not current:
                updated = replace(attempt, outcome=outcome, outcome_at=event.at, observed=observed, late=True)
                return Transition(_with(state, updated), tuple(commands))
            updated = replace(
                attempt, status=AttemptStatus.FAILED, outcome=outcome, outcome_at=event.at, observed=observed
            )
            moved = _advance(_with(state, updated), event.at, f"{attempt.channel} reported {outcome}")
            return Transition(moved.state, (*commands, *moved.commands))
        case DeliveryOutcome.NO_ANSWER | DeliveryOutcome.BUSY:
            updated = replace(
                attempt,
                status=AttemptStatus.FAILED if current else attempt.status,
                outcome=outcome,
                outcome_at=event.at,
                observed=observed,
                late=not current,
            )
            if not current:
                return Transition(_with(state, updated), tuple(commands))
            return _retry_or_advance(_with(state, updated), updated, event.at, tuple(commands))
        case DeliveryOutcome.READ | DeliveryOutcome.ANSWERED:
            raise AssertionError("read and answered always end the cascade")  # pragma: no cover
        case _ as unreachable:
            assert_never(unreachable)


def _retry_or_advance(
    state: CascadeState, attempt: Attempt, at: datetime, commands: tuple[CascadeCommand, ...]
) -> Transition:
    step = state.plan.steps[attempt.step_index]
    spacing = step.retry_spacing
    if spacing is not None and attempt.number < step.attempts and at + spacing < state.plan.deadline:
        timer = ScheduleTimer(TimerKind.VOICE_RETRY, at + spacing, attempt.step_index, attempt.number + 1)
        return Transition(state, (*commands, timer))
    moved = _advance(state, at, f"{attempt.channel}: {attempt.outcome} after {attempt.number} call(s)")
    return Transition(moved.state, (*commands, *moved.commands))


def _wait_expired(state: CascadeState, event: WaitExpired) -> Transition:
    attempt = state.attempt(event.step_index, event.attempt)
    if attempt is None or not _is_current(state, attempt):
        return Transition(state)
    match event.kind:
        case TimerKind.REPORT_WAIT:
            waiting = attempt.status in (AttemptStatus.AWAITING_REPORT, AttemptStatus.OUTCOME_UNKNOWN)
            why = f"no report from {attempt.channel} within its wait"
        case TimerKind.READ_WAIT:
            waiting = attempt.status is AttemptStatus.AWAITING_READ
            why = f"{attempt.channel} delivered but not read within the ack timeout"
        case TimerKind.VOICE_RETRY | TimerKind.DEADLINE | TimerKind.SUBMIT_RETRY | TimerKind.STATUS_QUERY:
            waiting, why = False, ""
        case _ as unreachable:
            assert_never(unreachable)
    if not waiting:
        return Transition(state)
    if event.kind is TimerKind.REPORT_WAIT:
        if attempt.querying:
            return Transition(state)  # a status query is out: its answer decides
        if event.can_query and attempt.queries < _queries_allowed(attempt, event.at):
            # No report is an unknown outcome, not a failure: ask before sending elsewhere.
            asking = replace(attempt, queries=attempt.queries + 1, querying=True)
            query = ScheduleTimer(TimerKind.STATUS_QUERY, event.at, attempt.step_index, attempt.number)
            return Transition(_with(state, asking), (query,))
        waited = _wait_for_ttl(state, attempt, event.at)
        if waited is not None:
            return waited
    return _give_up(state, attempt, event.at, why)


def _queries_allowed(attempt: Attempt, at: datetime) -> int:
    """``MAX_STATUS_QUERIES``, and one more once the message's TTL has passed: the provider's
    answer is final then (delivered, or expired), where an earlier one may have said pending."""
    ttl_passed = attempt.expires_at is not None and at >= attempt.expires_at
    return MAX_STATUS_QUERIES + 1 if ttl_passed else MAX_STATUS_QUERIES


def _wait_for_ttl(state: CascadeState, attempt: Attempt, at: datetime) -> Transition | None:
    """Until a message's TTL has passed the provider may still deliver it: moving on before
    then could reach the person twice (and bill twice)."""
    if attempt.expires_at is None or at >= attempt.expires_at:
        return None
    timer = ScheduleTimer(TimerKind.REPORT_WAIT, attempt.expires_at, attempt.step_index, attempt.number)
    return Transition(state, (timer,))


def _status_answered(state: CascadeState, event: StatusAnswered) -> Transition:
    attempt = state.attempt(event.step_index, event.attempt)
    if (
        attempt is None
        or not attempt.querying
        or not _is_current(state, attempt)
        or attempt.status not in (AttemptStatus.AWAITING_REPORT, AttemptStatus.OUTCOME_UNKNOWN)
    ):
        return Transition(state)  # stale: a report came first, or the cascade moved on
    attempt = replace(attempt, querying=False)
    state = _with(state, attempt)
    if event.outcome is not None:
        # The provider's final word is the report that never arrived.
        return _reported(state, DeliveryReported(event.step_index, event.attempt, event.outcome, event.at))
    if attempt.queries < _queries_allowed(attempt, event.at) and event.recheck_at is not None:
        timer = ScheduleTimer(TimerKind.REPORT_WAIT, event.recheck_at, attempt.step_index, attempt.number)
        return Transition(state, (timer,))
    waited = _wait_for_ttl(state, attempt, event.at)
    if waited is not None:
        return waited
    why = f"{attempt.channel}: no report, and its status still unknown after {attempt.queries} queries"
    return _give_up(state, attempt, event.at, why)


def _give_up(state: CascadeState, attempt: Attempt, at: datetime, why: str) -> Transition:
    """Move on from an attempt whose wait ran out (and whose outcome could not be resolved)."""
    updated = replace(attempt, status=AttemptStatus.TIMED_OUT)
    observations: tuple[CascadeCommand, ...] = ()
    if attempt.status is AttemptStatus.AWAITING_REPORT and not attempt.observed:
        # No word in time is evidence too: the person was not reached here when it mattered.
        # Without it, someone who never opens VK would cost a VK wait on every notification.
        # (After an unknown submit outcome the provider may never have had the message: that
        # says nothing about the person.)
        updated = replace(updated, observed=True, timed_out=True)
        observations = (_observation(attempt, DeliveryOutcome.TIMED_OUT, at, late=False),)
    moved = _advance(_with(state, updated), at, why)
    return Transition(moved.state, (*observations, *moved.commands))


def _retry_due(state: CascadeState, event: RetryDue) -> Transition:
    previous = state.attempt(event.step_index, event.attempt - 1)
    if (
        previous is None
        or not _is_current(state, previous)
        or previous.status is not AttemptStatus.FAILED
        or state.attempt(event.step_index, event.attempt) is not None
    ):
        return Transition(state)
    return _begin(state, event.step_index, event.attempt, event.at)


def _after_final(state: CascadeState, event: CascadeEvent) -> Transition:
    # Absorbing: only record what a late report teaches about the recipient.
    if not isinstance(event, DeliveryReported):
        return Transition(state)
    attempt = state.attempt(event.step_index, event.attempt)
    if attempt is None or not event.outcome.says_about_recipient:
        return Transition(state)
    if attempt.observed:
        if not _late_delivery(attempt, event.outcome):
            return Transition(state)
        observation = _observation(attempt, event.outcome, event.at, late=True, after_timeout=True)
    else:
        observation = _observation(attempt, event.outcome, event.at, late=True)
    updated = replace(attempt, outcome=event.outcome, outcome_at=event.at, observed=True, late=True)
    return Transition(_with(state, updated), (observation,))


def _finish(
    state: CascadeState,
    final: NotificationState,
    at: datetime,
    reason: str,
    *,
    reached_by_step: int | None = None,
    late: bool = False,
) -> Transition:
    attempts = tuple(
        replace(a, status=AttemptStatus.ABANDONED)
        if a.status.in_flight
        else replace(a, status=AttemptStatus.NOT_SENT)
        if a.status is AttemptStatus.RETRY_WAIT
        else a
        for a in state.attempts
    )
    state = replace(
        state,
        attempts=attempts,
        final_state=final,
        finished_at=at,
        finish_reason=reason,
        reached_by_step=reached_by_step,
        ended_by_late_report=late,
    )
    return Transition(state, (Finish(final, at, reason, reached_by_step, late),))


def _ends_cascade(outcome: DeliveryOutcome, policy: AckPolicy) -> bool:
    match policy:
        case AckPolicy.DELIVERED:
            return outcome.reached_person
        case AckPolicy.READ:
            return outcome in (DeliveryOutcome.READ, DeliveryOutcome.ANSWERED)
        case _ as unreachable:
            assert_never(unreachable)


def _success_state(outcome: DeliveryOutcome, policy: AckPolicy) -> NotificationState:
    if outcome is DeliveryOutcome.READ:
        return NotificationState.READ
    if outcome is DeliveryOutcome.ANSWERED and policy is AckPolicy.READ:
        return NotificationState.READ  # the person heard the robot: as good as read
    return NotificationState.DELIVERED


def _late_delivery(attempt: Attempt, outcome: DeliveryOutcome) -> bool:
    """The first report that the message reached the person after its wait ran out (which
    was observed as ``timed_out``): news for reachability once, as a late delivery."""
    return attempt.timed_out and attempt.outcome is None and outcome.reached_person


def _observation(
    attempt: Attempt, outcome: DeliveryOutcome, at: datetime, *, late: bool, after_timeout: bool = False
) -> RecordObservation:
    latency = None
    sent = attempt.submitted_at or attempt.requested_at
    if outcome.reached_person and at >= sent:
        latency = at - sent
    return RecordObservation(attempt.channel, attempt.provider, outcome, at, latency, late, after_timeout)


def _with(state: CascadeState, updated: Attempt) -> CascadeState:
    attempts = tuple(
        updated if (a.step_index, a.number) == (updated.step_index, updated.number) else a
        for a in state.attempts
    )
    return replace(state, attempts=attempts)


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 time string, got {value!r}")
    return datetime.fromisoformat(value)
