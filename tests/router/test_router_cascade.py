"""The cascade state machine: every rule, late reports, cancel, and absorbing final states."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st

from router.cascade import (
    MAX_STATUS_QUERIES,
    RETRY_BACKOFF_INITIAL,
    RETRY_BACKOFF_MAX,
    AttemptStatus,
    CancelRequested,
    CascadeCommand,
    CascadeEvent,
    CascadeState,
    DeadlineReached,
    DeliveryReported,
    Finish,
    RecordObservation,
    RecordReachabilityFact,
    RetryDue,
    ScheduleTimer,
    Start,
    StatusAnswered,
    StepSubmitted,
    SubmitError,
    SubmitFailed,
    SubmitRetryDue,
    SubmitStep,
    TimerKind,
    WaitExpired,
    handle,
    retry_delay,
)
from router.domain import AckPolicy, Channel, DeliveryOutcome, NotificationState
from router.planner import Plan, Planner, PlannerSettings, PlanRequest
from router.price_book import PriceBook
from router.reachability import RecipientReachability, TrafficStats

T = TypeVar("T")
T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def make_plan(
    channels: tuple[Channel, ...] = (Channel.VK, Channel.VIBER, Channel.SMS),
    *,
    ack_policy: AckPolicy = AckPolicy.DELIVERED,
    deadline: timedelta = timedelta(hours=6),
    voice_retries: int = 2,
    patience: timedelta = timedelta(minutes=5),
) -> Plan:
    planner = Planner(
        PriceBook.default(),
        PlannerSettings(
            default_wait=timedelta(minutes=5),
            default_ack_timeout=timedelta(minutes=15),
            voice_retries=voice_retries,
            voice_retry_spacing=timedelta(minutes=10),
            provider_patience=patience,
        ),
    )
    return planner.plan(
        PlanRequest(
            allowed_channels=frozenset(channels),
            billed_units={c: 1 for c in Channel},
            now=T0,
            deadline=T0 + deadline,
            ack_policy=ack_policy,
        ),
        RecipientReachability(),
        TrafficStats(),
    )


def run(state: CascadeState, *events: CascadeEvent) -> tuple[CascadeState, list[CascadeCommand]]:
    """Apply events in order; return the final state and the last event's commands."""
    commands: list[CascadeCommand] = []
    for event in events:
        transition = handle(state, event)
        state, commands = transition.state, list(transition.commands)
    return state, commands


def started(plan: Plan | None = None) -> CascadeState:
    state, _ = run(CascadeState.new(plan or make_plan()), Start(T0), StepSubmitted(0, 1, T0 + S))
    return state


def of_type(commands: list[CascadeCommand], kind: type[T]) -> list[T]:
    return [c for c in commands if isinstance(c, kind)]


def test_plan_under_test_is_vk_viber_sms() -> None:
    assert [s.channel for s in make_plan().steps] == [Channel.VK, Channel.VIBER, Channel.SMS]


def test_start_submits_the_first_step_and_arms_the_deadline() -> None:
    plan = make_plan()
    transition = handle(CascadeState.new(plan), Start(T0))

    assert transition.commands == (
        ScheduleTimer(TimerKind.DEADLINE, plan.deadline),
        SubmitStep(0, 1, Channel.VK, "vk", plan.deadline),
    )
    assert transition.state.current_step == 0
    assert handle(transition.state, Start(T0 + S)).commands == ()  # a repeated start is a no-op


def test_submitted_step_waits_for_its_report() -> None:
    state = CascadeState.new(make_plan())
    state, _ = run(state, Start(T0))
    state, commands = run(state, StepSubmitted(0, 1, T0 + S))

    assert commands == [ScheduleTimer(TimerKind.REPORT_WAIT, T0 + S + state.plan.steps[0].wait, 0, 1)]
    assert state.attempts[0].status is AttemptStatus.AWAITING_REPORT


def test_delivered_ends_the_cascade_under_delivered_policy() -> None:
    state, commands = run(started(), DeliveryReported(0, 1, DeliveryOutcome.DELIVERED, T0 + 9 * S))

    assert commands == [
        RecordObservation(Channel.VK, "vk", DeliveryOutcome.DELIVERED, T0 + 9 * S, latency=8 * S),
        Finish(NotificationState.DELIVERED, T0 + 9 * S, "delivered on vk (step 1)", reached_by_step=0),
    ]
    assert state.final_state is NotificationState.DELIVERED
    assert state.reached_by_step == 0


def test_wait_expiry_moves_to_the_next_step_and_stale_timers_are_ignored() -> None:
    state = started()
    due = T0 + S + state.plan.steps[0].wait
    state, commands = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, due))

    # No report in time is a failure for the person's reachability, observed once.
    assert commands == [
        RecordObservation(Channel.VK, "vk", DeliveryOutcome.TIMED_OUT, due),
        SubmitStep(1, 1, Channel.VIBER, "viber", state.plan.deadline),
    ]
    assert state.attempts[0].status is AttemptStatus.TIMED_OUT
    assert state.attempts[0].timed_out
    # The same timer delivered twice, or a READ_WAIT for a step already left: nothing.
    assert handle(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, due)).commands == ()


def test_failure_report_moves_on_at_once() -> None:
    state, commands = run(started(), DeliveryReported(0, 1, DeliveryOutcome.UNDELIVERABLE, T0 + 5 * S))
    assert of_type(commands, SubmitStep) == [SubmitStep(1, 1, Channel.VIBER, "viber", state.plan.deadline)]
    assert of_type(commands, RecordObservation)[0].outcome is DeliveryOutcome.UNDELIVERABLE


def test_read_policy_waits_for_a_read_after_delivery() -> None:
    plan = make_plan(ack_policy=AckPolicy.READ)
    state = started(plan)
    state, commands = run(state, DeliveryReported(0, 1, DeliveryOutcome.DELIVERED, T0 + 10 * S))

    assert of_type(commands, Finish) == []
    assert of_type(commands, ScheduleTimer) == [
        ScheduleTimer(TimerKind.READ_WAIT, T0 + 10 * S + timedelta(minutes=15), 0, 1)
    ]
    # The earlier report wait no longer governs the step.
    assert handle(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, T0 + timedelta(minutes=6))).commands == ()

    read_state, read_commands = run(
        state, DeliveryReported(0, 1, DeliveryOutcome.READ, T0 + timedelta(minutes=2))
    )
    assert read_state.final_state is NotificationState.READ
    assert of_type(read_commands, RecordObservation) == []  # "delivered" was the one observation

    unread_state, unread_commands = run(
        state, WaitExpired(0, 1, TimerKind.READ_WAIT, T0 + 10 * S + timedelta(minutes=15))
    )
    assert unread_commands == [SubmitStep(1, 1, Channel.VIBER, "viber", plan.deadline)]
    assert unread_state.final_state is None


def test_late_report_from_an_earlier_step_ends_the_cascade_flagged_late() -> None:
    state = started()
    state, _ = run(
        state,
        WaitExpired(0, 1, TimerKind.REPORT_WAIT, T0 + timedelta(minutes=6)),
        StepSubmitted(1, 1, T0 + timedelta(minutes=6, seconds=1)),
    )
    state, commands = run(state, DeliveryReported(0, 1, DeliveryOutcome.DELIVERED, T0 + timedelta(minutes=7)))

    finish = of_type(commands, Finish)
    assert len(finish) == 1
    assert (finish[0].state, finish[0].late, finish[0].reached_by_step) == (
        NotificationState.DELIVERED,
        True,
        0,
    )
    assert state.ended_by_late_report
    assert state.attempts[0].late
    assert state.attempts[1].status is AttemptStatus.ABANDONED
    observation = of_type(commands, RecordObservation)[0]
    # The timeout was the attempt's failure; the delivery is observed again, as late.
    assert observation.late and observation.after_timeout
    assert observation.outcome is DeliveryOutcome.DELIVERED
    assert observation.latency == timedelta(minutes=7) - S


def test_late_delivered_under_read_is_recorded_but_a_late_read_ends_it() -> None:
    state = started(make_plan(ack_policy=AckPolicy.READ))
    state, _ = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, T0 + timedelta(minutes=6)))

    state, commands = run(state, DeliveryReported(0, 1, DeliveryOutcome.DELIVERED, T0 + timedelta(minutes=7)))
    assert [type(c) for c in commands] == [RecordObservation]
    assert state.final_state is None

    state, commands = run(state, DeliveryReported(0, 1, DeliveryOutcome.READ, T0 + timedelta(minutes=8)))
    assert of_type(commands, Finish) == [
        Finish(
            NotificationState.READ,
            T0 + timedelta(minutes=8),
            "read on vk (step 1), reported after the next step started",
            reached_by_step=0,
            late=True,
        )
    ]


def test_cancel_stops_pending_steps_and_absorbs_later_events() -> None:
    state, commands = run(started(), CancelRequested(T0 + timedelta(minutes=1)))

    assert commands == [
        Finish(NotificationState.CANCELLED, T0 + timedelta(minutes=1), "cancelled by the caller")
    ]
    assert state.attempts[0].status is AttemptStatus.ABANDONED
    for event in (
        WaitExpired(0, 1, TimerKind.REPORT_WAIT, T0 + timedelta(minutes=6)),
        DeadlineReached(state.plan.deadline),
        CancelRequested(T0 + timedelta(minutes=2)),
        StepSubmitted(0, 1, T0),
    ):
        assert handle(state, event).commands == ()

    # A report arriving after the end is still data about the person, nothing more.
    late_state, late = run(
        state, DeliveryReported(0, 1, DeliveryOutcome.DELIVERED, T0 + timedelta(minutes=3))
    )
    assert [type(c) for c in late] == [RecordObservation]
    assert late_state.final_state is NotificationState.CANCELLED
    assert (
        handle(late_state, DeliveryReported(0, 1, DeliveryOutcome.READ, T0 + timedelta(minutes=4))).commands
        == ()
    )


def test_outcome_unknown_waits_for_the_report_instead_of_moving_on() -> None:
    state, _ = run(CascadeState.new(make_plan()), Start(T0))
    state, commands = run(state, SubmitFailed(0, 1, SubmitError.OUTCOME_UNKNOWN, T0 + 10 * S))

    assert commands == [ScheduleTimer(TimerKind.REPORT_WAIT, T0 + 10 * S + state.plan.steps[0].wait, 0, 1)]
    assert state.current_step == 0
    assert state.attempts[0].status is AttemptStatus.OUTCOME_UNKNOWN

    delivered, _ = run(state, DeliveryReported(0, 1, DeliveryOutcome.DELIVERED, T0 + 30 * S))
    assert delivered.final_state is NotificationState.DELIVERED

    _, moved = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, T0 + 10 * S + state.plan.steps[0].wait))
    assert of_type(moved, SubmitStep)[0].step_index == 1
    # The provider may never have had the message: no word about the person.
    assert of_type(moved, RecordObservation) == []


def test_unreachable_moves_on_at_once_and_records_a_fact() -> None:
    state, _ = run(CascadeState.new(make_plan()), Start(T0))
    state, commands = run(state, SubmitFailed(0, 1, SubmitError.UNREACHABLE, T0 + S, "vk 902: privacy"))

    fact = RecordReachabilityFact(Channel.VK, "vk", T0 + S, "vk 902: privacy")
    assert commands == [fact, SubmitStep(1, 1, Channel.VIBER, "viber", state.plan.deadline)]

    recipient, traffic = fact.apply(RecipientReachability(), TrafficStats())
    assert recipient.get(Channel.VK).is_unreachable_at(T0 + timedelta(days=1))
    assert traffic.get(Channel.VK).failures == 1


def test_rejected_submit_moves_on_without_a_fact() -> None:
    state, _ = run(CascadeState.new(make_plan()), Start(T0))
    _, commands = run(state, SubmitFailed(0, 1, SubmitError.REJECTED, T0 + S))
    assert commands == [SubmitStep(1, 1, Channel.VIBER, "viber", state.plan.deadline)]


def test_provider_fault_retries_the_same_submit_from_a_timer_and_learns_nothing() -> None:
    state, _ = run(CascadeState.new(make_plan()), Start(T0))
    fault = SubmitFailed(0, 1, SubmitError.TRANSIENT_EXHAUSTED, T0 + S, "vk: connection failed", jitter=0.0)
    state, commands = run(state, fault)

    # Jitter 0: half of the first backoff step.
    assert commands == [ScheduleTimer(TimerKind.SUBMIT_RETRY, T0 + S + RETRY_BACKOFF_INITIAL / 2, 0, 1)]
    vk = state.attempt(0, 1)
    assert vk is not None and vk.status is AttemptStatus.RETRY_WAIT
    assert (vk.retries, vk.fault_since, vk.observed) == (1, T0 + S, False)
    assert handle(state, fault).commands == ()  # a repeated failure report schedules nothing more

    retry_at = T0 + S + RETRY_BACKOFF_INITIAL / 2
    state, commands = run(state, ScheduleTimer(TimerKind.SUBMIT_RETRY, retry_at, 0, 1).fired(retry_at))
    # The same attempt, hence the same dedupe key: the provider cannot deliver it twice.
    assert commands == [SubmitStep(0, 1, Channel.VK, "vk", state.plan.deadline)]
    assert handle(state, SubmitRetryDue(0, 1, retry_at)).commands == ()  # a repeated timer

    state, commands = run(state, SubmitFailed(0, 1, SubmitError.TRANSIENT_EXHAUSTED, retry_at, jitter=1.0))
    assert commands == [ScheduleTimer(TimerKind.SUBMIT_RETRY, retry_at + 2 * RETRY_BACKOFF_INITIAL, 0, 1)]
    assert state.attempt(0, 1).retries == 2  # type: ignore[union-attr]

    state, commands = run(
        state, SubmitRetryDue(0, 1, retry_at + 10 * S), StepSubmitted(0, 1, retry_at + 11 * S)
    )
    assert of_type(commands, ScheduleTimer)[0].kind is TimerKind.REPORT_WAIT
    assert len(state.attempts) == 1


@given(st.integers(1, 40), st.floats(0, 1))
def test_retry_backoff_grows_with_jitter_within_bounds_up_to_a_cap(retries: int, jitter: float) -> None:
    base = min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_INITIAL * 2 ** min(retries - 1, 20))
    delay = retry_delay(retries, jitter)
    assert base / 2 <= delay <= base <= RETRY_BACKOFF_MAX
    assert retry_delay(retries, 0.0) <= retry_delay(retries + 1, 0.0)
    # The provider's Retry-After (or an open breaker's time to its probe) is never cut short.
    assert retry_delay(retries, jitter, timedelta(minutes=7)) == timedelta(minutes=7)
    assert retry_delay(retries, jitter, timedelta(0)) == delay


def test_retry_after_is_honoured() -> None:
    state, _ = run(CascadeState.new(make_plan()), Start(T0))
    fault = SubmitFailed(0, 1, SubmitError.TRANSIENT_EXHAUSTED, T0, retry_after=timedelta(seconds=90))

    _, commands = run(state, fault)

    assert commands == [ScheduleTimer(TimerKind.SUBMIT_RETRY, T0 + timedelta(seconds=90), 0, 1)]


def _fault_until_moved(
    state: CascadeState, step: int, at: datetime
) -> tuple[CascadeState, list[CascadeCommand], datetime]:
    """Feed provider faults (and their retry timers) to ``step`` until the cascade leaves it."""
    attempt = state.latest_attempt()
    assert attempt is not None and attempt.step_index == step
    for _ in range(100):
        state, commands = run(state, SubmitFailed(step, attempt.number, SubmitError.TRANSIENT_EXHAUSTED, at))
        timers = of_type(commands, ScheduleTimer)
        if not timers:
            return state, commands, at
        assert timers == [ScheduleTimer(TimerKind.SUBMIT_RETRY, timers[0].due_at, step, attempt.number)]
        at = timers[0].due_at
        state, _ = run(state, timers[0].fired(at))
    raise AssertionError("never moved on")


def test_patience_moves_on_without_a_word_about_the_person_and_comes_back_later() -> None:
    state, _ = run(CascadeState.new(make_plan()), Start(T0))
    vk_patience = state.plan.steps[0].patience
    assert vk_patience == timedelta(minutes=5)  # the settings' patience in make_plan

    state, commands, left_at = _fault_until_moved(state, 0, T0)

    # The next retry would have come after the patience: Viber now, with nothing learnt.
    assert commands == [SubmitStep(1, 1, Channel.VIBER, "viber", state.plan.deadline)]
    assert T0 + vk_patience / 2 <= left_at <= T0 + vk_patience
    assert state.attempt(0, 1).status is AttemptStatus.NOT_SENT  # type: ignore[union-attr]

    # Viber and SMS say their word about the person; VK never did: it is tried again, not FAILED.
    state, _ = run(state, SubmitFailed(1, 1, SubmitError.UNREACHABLE, left_at + S, "not a Viber user"))
    state, commands = run(
        state,
        StepSubmitted(2, 1, left_at + 2 * S),
        DeliveryReported(2, 1, DeliveryOutcome.UNDELIVERABLE, left_at + 3 * S),
    )
    assert of_type(commands, SubmitStep) == [SubmitStep(0, 2, Channel.VK, "vk", state.plan.deadline)]
    assert not of_type(commands, Finish) and state.final_state is None
    state, commands = run(
        state,
        StepSubmitted(0, 2, left_at + 4 * S),
        DeliveryReported(0, 2, DeliveryOutcome.DELIVERED, left_at + 5 * S),
    )
    assert state.final_state is NotificationState.DELIVERED
    assert [(o.channel, o.outcome) for o in of_type(commands, RecordObservation)] == [
        (Channel.VK, DeliveryOutcome.DELIVERED)
    ]


def test_patience_is_cut_short_when_the_later_steps_would_miss_the_deadline() -> None:
    # 16 min to the deadline; VK, then Viber's 5 min wait, then SMS: VK may wait about 11 min,
    # patience (make_plan: 5 min) allows 5; with a 20 min patience the deadline decides.
    plan = make_plan(deadline=timedelta(minutes=16), patience=timedelta(minutes=20))
    assert [s.channel for s in plan.steps] == [Channel.VK, Channel.VIBER, Channel.SMS]
    state, _ = run(CascadeState.new(plan), Start(T0))

    state, commands, left_at = _fault_until_moved(state, 0, T0)

    assert commands == [SubmitStep(1, 1, Channel.VIBER, "viber", plan.deadline)]
    assert left_at <= plan.deadline - plan.steps[1].wait
    assert not of_type(commands, RecordObservation)


def test_provider_faults_alone_never_fail_a_notification_the_deadline_expires_it() -> None:
    plan = make_plan(deadline=timedelta(hours=2))
    state, _ = run(CascadeState.new(plan), Start(T0))
    at = T0
    seen: list[CascadeCommand] = []
    for _ in range(1000):
        latest = state.latest_attempt()
        assert latest is not None
        state, commands = run(
            state,
            SubmitFailed(latest.step_index, latest.number, SubmitError.TRANSIENT_EXHAUSTED, at, jitter=0.3),
        )
        seen += commands
        timers = of_type(commands, ScheduleTimer)
        if timers:
            assert timers[0].due_at < plan.deadline
            at = timers[0].due_at
            state, commands = run(state, timers[0].fired(at))
            seen += commands
        elif not of_type(commands, SubmitStep):
            break  # no retry fits before the deadline
    assert state.final_state is None
    # Every channel had its turn while the providers were down.
    assert {c.channel for c in of_type(seen, SubmitStep)} == {Channel.VK, Channel.VIBER, Channel.SMS}
    assert not of_type(seen, RecordObservation) and not of_type(seen, RecordReachabilityFact)
    assert not of_type(seen, Finish)

    state, commands = run(state, DeadlineReached(plan.deadline))
    assert commands == [Finish(NotificationState.EXPIRED, plan.deadline, "the deadline passed")]
    assert all(a.status is AttemptStatus.NOT_SENT for a in state.attempts)


def test_last_open_step_retries_past_its_patience_until_the_deadline() -> None:
    plan = make_plan((Channel.SMS,), deadline=timedelta(hours=1))
    state, _ = run(CascadeState.new(plan), Start(T0))
    at = T0
    for _ in range(200):
        state, commands = run(state, SubmitFailed(0, 1, SubmitError.TRANSIENT_EXHAUSTED, at, jitter=1.0))
        if not commands:
            break
        [timer] = commands
        assert isinstance(timer, ScheduleTimer) and timer.kind is TimerKind.SUBMIT_RETRY
        at = timer.due_at
        state, _ = run(state, timer.fired(at))
    assert at > T0 + plan.steps[0].patience
    assert plan.deadline - at <= RETRY_BACKOFF_MAX
    assert state.attempt(0, 1).status is AttemptStatus.RETRY_WAIT  # type: ignore[union-attr]
    # A retry timer that fires at the deadline expires the notification, it does not submit.
    assert handle(state, SubmitRetryDue(0, 1, plan.deadline)).state.final_state is NotificationState.EXPIRED


def test_exhausting_every_step_fails() -> None:
    state = started(make_plan((Channel.SMS,)))
    state, commands = run(state, DeliveryReported(0, 1, DeliveryOutcome.EXPIRED, T0 + timedelta(minutes=1)))

    finish = of_type(commands, Finish)[0]
    assert finish.state is NotificationState.FAILED
    assert "sms reported expired" in finish.reason
    assert state.final_state is NotificationState.FAILED


def test_deadline_expires_the_cascade() -> None:
    state = started()
    assert handle(state, DeadlineReached(state.plan.deadline - S)).commands == ()  # early timer

    state, commands = run(state, DeadlineReached(state.plan.deadline))
    assert commands == [Finish(NotificationState.EXPIRED, state.plan.deadline, "the deadline passed")]


def test_moving_on_after_the_deadline_expires_instead_of_submitting() -> None:
    plan = make_plan()
    state = started(plan)
    _, commands = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, plan.deadline + S))
    assert [type(c) for c in commands] == [RecordObservation, Finish]
    assert of_type(commands, RecordObservation)[0].outcome is DeliveryOutcome.TIMED_OUT
    assert commands[1] == Finish(
        NotificationState.EXPIRED, plan.deadline + S, "the deadline passed before the next step"
    )


def test_voice_no_answer_is_retried_within_the_deadline() -> None:
    plan = make_plan((Channel.VOICE,), ack_policy=AckPolicy.READ, voice_retries=1)
    assert plan.steps[0].attempts == 2
    state = started(plan)

    t1 = T0 + timedelta(minutes=1)
    state, commands = run(state, DeliveryReported(0, 1, DeliveryOutcome.NO_ANSWER, t1))
    assert of_type(commands, ScheduleTimer) == [
        ScheduleTimer(TimerKind.VOICE_RETRY, t1 + timedelta(minutes=10), 0, 2)
    ]
    assert of_type(commands, Finish) == []

    retry = of_type(commands, ScheduleTimer)[0]
    state, commands = run(state, retry.fired(t1 + timedelta(minutes=10)))
    assert commands == [SubmitStep(0, 2, Channel.VOICE, "voice", plan.deadline)]
    assert handle(state, retry.fired(t1 + timedelta(minutes=10))).commands == ()  # duplicate timer

    state, commands = run(
        state,
        StepSubmitted(0, 2, t1 + timedelta(minutes=10)),
        DeliveryReported(0, 2, DeliveryOutcome.BUSY, T0 + timedelta(minutes=12)),
    )
    assert of_type(commands, Finish)[0].state is NotificationState.FAILED  # no calls left


def test_voice_answered_ends_a_read_cascade() -> None:
    plan = make_plan((Channel.VOICE,), ack_policy=AckPolicy.READ)
    _, commands = run(
        started(plan), DeliveryReported(0, 1, DeliveryOutcome.ANSWERED, T0 + timedelta(seconds=40))
    )
    assert of_type(commands, Finish)[0].state is NotificationState.READ


def test_voice_retry_is_not_scheduled_past_the_deadline() -> None:
    plan = make_plan((Channel.VOICE,), ack_policy=AckPolicy.READ, deadline=timedelta(minutes=15))
    state = started(plan)
    _, commands = run(state, DeliveryReported(0, 1, DeliveryOutcome.NO_ANSWER, T0 + timedelta(minutes=6)))
    assert of_type(commands, ScheduleTimer) == []
    assert of_type(commands, Finish)[0].state is NotificationState.FAILED


def test_duplicate_reports_are_recorded_once() -> None:
    plan = make_plan(ack_policy=AckPolicy.READ)
    state = started(plan)
    state, first = run(state, DeliveryReported(0, 1, DeliveryOutcome.DELIVERED, T0 + 5 * S))
    _, again = run(state, DeliveryReported(0, 1, DeliveryOutcome.DELIVERED, T0 + 6 * S))
    assert len(of_type(first, RecordObservation)) == 1
    assert again == []


def test_a_plan_with_no_steps_fails_at_start() -> None:
    plan = make_plan(deadline=timedelta(0))
    _, commands = run(CascadeState.new(plan), Start(T0))
    assert [type(c) for c in commands] == [Finish]
    assert commands[0] == Finish(
        NotificationState.FAILED,
        T0,
        "no usable channel (vk: no_time; viber: no_time; sms: no_time; voice: not_allowed)",
    )


def test_timers_fire_the_matching_events() -> None:
    assert ScheduleTimer(TimerKind.DEADLINE, T0).fired(T0) == DeadlineReached(T0)
    assert ScheduleTimer(TimerKind.REPORT_WAIT, T0, 1, 1).fired(T0) == WaitExpired(
        1, 1, TimerKind.REPORT_WAIT, T0
    )
    assert ScheduleTimer(TimerKind.READ_WAIT, T0, 0, 1).fired(T0) == WaitExpired(
        0, 1, TimerKind.READ_WAIT, T0
    )
    assert ScheduleTimer(TimerKind.VOICE_RETRY, T0, 2, 3).fired(T0) == RetryDue(2, 3, T0)
    assert ScheduleTimer(TimerKind.SUBMIT_RETRY, T0, 1, 1).fired(T0) == SubmitRetryDue(1, 1, T0)


def test_state_round_trips_through_json_mid_cascade() -> None:
    state = started(make_plan(ack_policy=AckPolicy.READ))
    state, _ = run(state, DeliveryReported(0, 1, DeliveryOutcome.DELIVERED, T0 + 5 * S))

    again = CascadeState.from_dict(json.loads(json.dumps(state.to_dict())))

    assert again == state
    assert handle(again, DeliveryReported(0, 1, DeliveryOutcome.READ, T0 + 9 * S)).state.final_state is (
        NotificationState.READ
    )


EVENTS = st.one_of(
    st.builds(Start, st.just(T0)),
    st.builds(StepSubmitted, st.integers(0, 2), st.integers(1, 2), st.just(T0 + S)),
    st.builds(
        SubmitFailed, st.integers(0, 2), st.integers(1, 2), st.sampled_from(SubmitError), st.just(T0 + S)
    ),
    st.builds(
        DeliveryReported,
        st.integers(0, 2),
        st.integers(1, 2),
        st.sampled_from(DeliveryOutcome),
        st.just(T0 + timedelta(minutes=1)),
    ),
    st.builds(
        WaitExpired,
        st.integers(0, 2),
        st.integers(1, 2),
        st.sampled_from([TimerKind.REPORT_WAIT, TimerKind.READ_WAIT]),
        st.just(T0 + timedelta(minutes=10)),
    ),
    st.builds(
        WaitExpired,
        st.integers(0, 2),
        st.integers(1, 2),
        st.just(TimerKind.REPORT_WAIT),
        st.just(T0 + timedelta(minutes=12)),
        st.just(True),
    ),
    st.builds(
        StatusAnswered,
        st.integers(0, 2),
        st.integers(1, 2),
        st.none() | st.sampled_from(DeliveryOutcome),
        st.just(T0 + timedelta(minutes=13)),
        st.none() | st.just(T0 + timedelta(minutes=14)),
    ),
    st.builds(
        StepSubmitted,
        st.integers(0, 2),
        st.integers(1, 2),
        st.just(T0 + S),
        st.just(T0 + timedelta(minutes=11)),
    ),
    st.builds(RetryDue, st.integers(0, 2), st.integers(2, 3), st.just(T0 + timedelta(minutes=20))),
    st.builds(SubmitRetryDue, st.integers(0, 2), st.integers(1, 2), st.just(T0 + timedelta(minutes=2))),
    st.builds(DeadlineReached, st.just(T0 + timedelta(hours=6))),
    st.builds(CancelRequested, st.just(T0 + timedelta(minutes=30))),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(EVENTS, max_size=25), st.sampled_from(AckPolicy))
def test_finish_happens_once_and_final_states_absorb(events: list[CascadeEvent], policy: AckPolicy) -> None:
    state = CascadeState.new(make_plan(ack_policy=policy))
    finishes = 0
    observed: set[tuple[int, int]] = set()
    timed_out: set[tuple[int, int]] = set()
    late: set[tuple[int, int]] = set()
    for event in events:
        was_final = state.is_final
        transition = handle(state, event)
        kinds = {type(c) for c in transition.commands}
        if was_final:
            assert kinds <= {RecordObservation}
            assert transition.state.final_state == state.final_state
        finishes += sum(isinstance(c, Finish) for c in transition.commands)
        for command in transition.commands:
            if isinstance(command, RecordObservation | RecordReachabilityFact):
                assert isinstance(event, DeliveryReported | SubmitFailed | WaitExpired | StatusAnswered)
                key = (event.step_index, event.attempt)
                if isinstance(command, RecordObservation) and command.after_timeout:
                    # The one extra: a delivery reported after that attempt's wait ran out.
                    assert isinstance(event, DeliveryReported) and command.outcome.reached_person
                    assert key in timed_out and key not in late, "one late delivery per timeout"
                    late.add(key)
                    continue
                if isinstance(event, WaitExpired):
                    assert isinstance(command, RecordObservation)
                    assert command.outcome is DeliveryOutcome.TIMED_OUT
                    assert event.kind is TimerKind.REPORT_WAIT
                    timed_out.add(key)
                if isinstance(event, StatusAnswered) and command.outcome is DeliveryOutcome.TIMED_OUT:
                    # Pending or unknown, or expired at its TTL: a wait spent in vain.
                    assert event.outcome in (None, DeliveryOutcome.TIMED_OUT, DeliveryOutcome.EXPIRED)
                    timed_out.add(key)
                assert key not in observed, "one observation per attempt"
                observed.add(key)
        state = transition.state
    assert finishes <= 1
    assert finishes == (1 if state.is_final else 0)
    if state.final_state is NotificationState.FAILED:
        # FAILED only when every step said something final about the person.
        assert all(
            any(a.status is not AttemptStatus.NOT_SENT for a in state.attempts if a.step_index == i)
            for i in range(len(state.plan.steps))
        )


def test_after_a_timeout_only_the_first_late_delivery_is_observed_even_after_the_end() -> None:
    state = started(make_plan((Channel.VK,)))
    wait_over = T0 + S + state.plan.steps[0].wait
    state, commands = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, wait_over))
    assert state.final_state is NotificationState.FAILED
    assert of_type(commands, RecordObservation) == [
        RecordObservation(Channel.VK, "vk", DeliveryOutcome.TIMED_OUT, wait_over)
    ]

    delivered_at = wait_over + timedelta(minutes=30)
    state, commands = run(state, DeliveryReported(0, 1, DeliveryOutcome.DELIVERED, delivered_at))
    assert commands == [
        RecordObservation(
            Channel.VK,
            "vk",
            DeliveryOutcome.DELIVERED,
            delivered_at,
            latency=delivered_at - (T0 + S),
            late=True,
            after_timeout=True,
        )
    ]
    assert state.final_state is NotificationState.FAILED  # final states absorb; the data is kept
    # The read that follows is the same message: nothing more to learn.
    _, commands = run(state, DeliveryReported(0, 1, DeliveryOutcome.READ, delivered_at + S))
    assert commands == []


def test_timed_out_attempts_round_trip_through_the_stored_state() -> None:
    state = started()
    state, _ = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, T0 + timedelta(minutes=6)))
    assert CascadeState.from_dict(state.to_dict()) == state
    assert state.attempts[0].timed_out


def test_progress_round_trips_on_its_plan_and_leaves_the_plan_out() -> None:
    state, _ = run(started(), WaitExpired(0, 1, TimerKind.REPORT_WAIT, T0 + timedelta(minutes=6)))
    progress = json.loads(json.dumps(state.progress_dict()))
    assert "plan" not in progress
    assert CascadeState.from_progress(state.plan, progress) == state
    assert CascadeState.from_progress(state.plan, {**progress, "plan": {"ignored": True}}) == state


# -- resolving waits that ran out (status queries, TTLs) --------------------------------------


def queryable_first() -> CascadeState:
    """A cascade on its first step, whose provider answers status queries: the cascade knows
    that only from ``WaitExpired.can_query``, which the engine sets from its adapters."""
    return started(make_plan((Channel.SMS, Channel.VIBER)))


def test_a_wait_that_runs_out_asks_a_provider_that_answers_status_queries() -> None:
    state = queryable_first()
    due = T0 + S + state.plan.steps[0].wait
    state, commands = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, due, can_query=True))

    # No report is an unknown outcome, not a failure: nothing observed, nothing sent yet.
    assert commands == [ScheduleTimer(TimerKind.STATUS_QUERY, due, 0, 1)]
    assert state.attempts[0].status is AttemptStatus.AWAITING_REPORT
    assert (state.attempts[0].querying, state.attempts[0].queries) == (True, 1)
    # The same wait again while the query is out: its answer decides.
    assert handle(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, due, can_query=True)).commands == ()
    assert ScheduleTimer(TimerKind.STATUS_QUERY, due, 0, 1).fired(due + S) == StatusAnswered(
        0, 1, None, due + S
    )

    # The provider says it was delivered: applied like the report that was lost.
    done, commands = run(state, StatusAnswered(0, 1, DeliveryOutcome.DELIVERED, due + S))
    assert done.final_state is NotificationState.DELIVERED
    assert done.reached_by_step == 0 and not done.ended_by_late_report
    assert of_type(commands, SubmitStep) == []
    assert [c.outcome for c in of_type(commands, RecordObservation)] == [DeliveryOutcome.DELIVERED]
    # The recorded status then arrives as a report: absorbed, nothing observed twice.
    assert handle(done, DeliveryReported(0, 1, DeliveryOutcome.DELIVERED, due + 2 * S)).commands == ()


def test_a_final_failure_from_the_status_query_moves_on_at_once() -> None:
    state = queryable_first()
    due = T0 + S + state.plan.steps[0].wait
    state, _ = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, due, can_query=True))
    state, commands = run(state, StatusAnswered(0, 1, DeliveryOutcome.UNDELIVERABLE, due + S))
    assert of_type(commands, SubmitStep) == [SubmitStep(1, 1, Channel.SMS, "sms", state.plan.deadline)]
    assert state.attempts[0].outcome is DeliveryOutcome.UNDELIVERABLE


def test_a_pending_status_is_asked_once_more_then_the_cascade_moves_on() -> None:
    state = queryable_first()
    due = T0 + S + state.plan.steps[0].wait
    recheck = due + 30 * S
    state, _ = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, due, can_query=True))
    state, commands = run(state, StatusAnswered(0, 1, None, due + S, recheck_at=recheck))
    assert commands == [ScheduleTimer(TimerKind.REPORT_WAIT, recheck, 0, 1)]
    assert not state.attempts[0].querying

    state, commands = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, recheck, can_query=True))
    assert commands == [ScheduleTimer(TimerKind.STATUS_QUERY, recheck, 0, 1)]
    # Still pending after the last query: give up on it, observed as a timeout once.
    state, commands = run(state, StatusAnswered(0, 1, None, recheck + S, recheck_at=recheck + 31 * S))
    assert of_type(commands, RecordObservation) == [
        RecordObservation(Channel.VIBER, "viber", DeliveryOutcome.TIMED_OUT, recheck + S)
    ]
    assert of_type(commands, SubmitStep) == [SubmitStep(1, 1, Channel.SMS, "sms", state.plan.deadline)]
    assert state.attempts[0].status is AttemptStatus.TIMED_OUT and state.attempts[0].queries == 2


def test_a_report_before_the_status_answer_wins_and_the_answer_is_stale() -> None:
    state = queryable_first()
    due = T0 + S + state.plan.steps[0].wait
    state, _ = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, due, can_query=True))
    state, _ = run(state, DeliveryReported(0, 1, DeliveryOutcome.UNDELIVERABLE, due + S))
    assert state.current_step == 1
    assert handle(state, StatusAnswered(0, 1, DeliveryOutcome.UNDELIVERABLE, due + 2 * S)).commands == ()
    # An answer nobody asked for (no query out) is ignored too.
    fresh = queryable_first()
    assert handle(fresh, StatusAnswered(0, 1, DeliveryOutcome.DELIVERED, due)).state == fresh


def test_a_messenger_step_is_moved_on_from_once_its_ttl_has_passed() -> None:
    plan = make_plan()
    wait = plan.steps[0].wait
    expires = T0 + S + wait + 30 * S  # VK's TTL floor outlasts a short wait
    state, _ = run(CascadeState.new(plan), Start(T0), StepSubmitted(0, 1, T0 + S, expires_at=expires))
    assert state.attempts[0].expires_at == expires

    # VK offers no status query: until the TTL passes it may still deliver, so wait for it.
    state, commands = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, T0 + S + wait))
    assert commands == [ScheduleTimer(TimerKind.REPORT_WAIT, expires, 0, 1)]
    assert state.current_step == 0

    state, commands = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, expires))
    assert of_type(commands, SubmitStep) == [SubmitStep(1, 1, Channel.VIBER, "viber", plan.deadline)]
    assert [c.outcome for c in of_type(commands, RecordObservation)] == [DeliveryOutcome.TIMED_OUT]


def test_a_ttl_within_the_wait_moves_on_at_the_wait() -> None:
    plan = make_plan()
    wait = plan.steps[0].wait
    state, _ = run(CascadeState.new(plan), Start(T0), StepSubmitted(0, 1, T0 + S, expires_at=T0 + S + wait))
    _, commands = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, T0 + S + wait))
    assert of_type(commands, SubmitStep)[0].step_index == 1


def test_an_unknown_submit_with_a_ttl_waits_for_the_ttl_without_observing() -> None:
    plan = make_plan()
    wait = plan.steps[0].wait
    expires = T0 + 10 * S + 2 * wait
    state, _ = run(CascadeState.new(plan), Start(T0))
    state, _ = run(state, SubmitFailed(0, 1, SubmitError.OUTCOME_UNKNOWN, T0 + 10 * S, expires_at=expires))
    state, commands = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, T0 + 10 * S + wait))
    assert commands == [ScheduleTimer(TimerKind.REPORT_WAIT, expires, 0, 1)]
    state, commands = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, expires))
    assert of_type(commands, SubmitStep)[0].step_index == 1
    assert of_type(commands, RecordObservation) == []


def test_resolution_fields_round_trip_and_stay_out_of_plain_attempts() -> None:
    state = queryable_first()
    assert {"expires_at", "queries", "querying"}.isdisjoint(state.attempts[0].to_dict())
    due = T0 + S + state.plan.steps[0].wait
    state, _ = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, due, can_query=True))
    stored = json.loads(json.dumps(state.to_dict()))
    assert CascadeState.from_dict(stored) == state
    plan = make_plan()
    ttl_state, _ = run(CascadeState.new(plan), Start(T0), StepSubmitted(0, 1, T0 + S, expires_at=T0 + 60 * S))
    assert CascadeState.from_dict(json.loads(json.dumps(ttl_state.to_dict()))) == ttl_state


def test_a_queryable_messenger_pending_until_its_ttl_is_asked_once_more_after_it() -> None:
    plan = make_plan((Channel.VIBER, Channel.SMS))
    wait = plan.steps[0].wait
    expires = T0 + S + wait + 120 * S
    state, _ = run(CascadeState.new(plan), Start(T0), StepSubmitted(0, 1, T0 + S, expires_at=expires))
    due = T0 + S + wait
    for _ in range(MAX_STATUS_QUERIES):  # pending each time, before the TTL has passed
        state, _ = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, due, can_query=True))
        state, commands = run(state, StatusAnswered(0, 1, None, due + S, recheck_at=due + 30 * S))
        due += 30 * S
    # Queries used up: wait for the TTL, then ask once more, since the answer is final now.
    assert commands == [ScheduleTimer(TimerKind.REPORT_WAIT, expires, 0, 1)]
    state, commands = run(state, WaitExpired(0, 1, TimerKind.REPORT_WAIT, expires, can_query=True))
    assert commands == [ScheduleTimer(TimerKind.STATUS_QUERY, expires, 0, 1)]
    done, commands = run(state, StatusAnswered(0, 1, DeliveryOutcome.DELIVERED, expires + S))
    assert done.final_state is NotificationState.DELIVERED and of_type(commands, SubmitStep) == []
    # An "expired" answer moves on, observed as the timeout it is (the wait was spent); still
    # nothing known after that last query moves on too.
    _, commands = run(state, StatusAnswered(0, 1, DeliveryOutcome.EXPIRED, expires + S))
    assert of_type(commands, SubmitStep)[0].step_index == 1
    assert [c.outcome for c in of_type(commands, RecordObservation)] == [DeliveryOutcome.TIMED_OUT]
    _, commands = run(state, StatusAnswered(0, 1, None, expires + S, recheck_at=expires + 31 * S))
    assert of_type(commands, SubmitStep)[0].step_index == 1
