"""The cost-optimising cascade planner: which channels, in what order, with what waits.

The planner is a pure function of its inputs (:class:`PlanRequest`, the recipient's
:class:`~router.reachability.RecipientReachability`, channel-wide
:class:`~router.reachability.TrafficStats` and the :class:`~router.price_book.PriceBook`).

How a plan is chosen
--------------------
Each step ``i`` reaches the person with probability ``p_i`` (their Beta posterior) and
is tried only if every earlier step failed, with probability ``r_i = prod(1 - p_j)``.
A step is billed always when its provider bills on submit, and only when it succeeds
when the provider bills on delivery or answer; but a message that gets no report within
its wait and is delivered later is billed too, so a bill-on-delivery step is billed with
probability ``p_i + (1 - p_i) * l_i``, where ``l_i`` is the person's learned share of such
late deliveries on that channel. So the plan's expected cost is
``sum(r_i * billed_i * price_i)`` and its probability of reaching the person is
``1 - prod(1 - p_i)``.

Among all orderings of every subset of the message channels (at most 3! + 3*2 + 3 = 15
sequences; the search is exhaustive, hence exact) the planner keeps those that fit the
deadline and ``max_cost`` and picks the one most likely to reach the person (counting one
call for the voice robot), then the one with the lowest expected cost plus the value of
the time it expects to spend waiting in vain, priced at
:attr:`PlannerSettings.value_of_an_hour`: ``r_i * t_i * wait_i`` for every step but the
last, where ``t_i`` is the person's learned share of waits that ran out on that channel
(a refusal at submit costs no time). When every channel fits, the probability is the
same for every order, so this is simply the cheapest order, with time breaking
near-ties: a cheap channel that this person rarely answers on in time goes after the
one that reaches them.

Time: a step's wait comes from the channel's observed delivery-report latency (a high
percentile of the reports that came within ``max_wait``, raised to ``min_wait``;
``default_wait`` without enough data, ``max_wait`` when most reports came later than
that). Reports that came later than any allowed wait cannot size a wait; they show up
as late deliveries in the cost instead.
Every step but the last must finish its wait before the deadline; the last only has to
start before it.

Provider health is not a property of the person: an open circuit breaker only makes the
planner prefer another provider of the same channel; with none, the channel is planned as
if its provider were healthy, and the cascade waits a provider fault out (see
:mod:`router.cascade`). How long a step waits out such a fault before the cascade moves to
the next step is the step's ``patience``: the configured ``provider_patience``, shortened
to the time whose value (``value_of_an_hour``) equals what the next step costs more.

``max_cost`` caps the worst case: every attempt of every step billed (a messenger that
delivers late is billed even after the cascade moved on).

The voice robot: under ``AckPolicy.READ`` it is the no-answer fallback, always the final
step, retried on no answer or busy. Under ``AckPolicy.DELIVERED`` it is used only when it
is the only allowed channel.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from router.domain import AckPolicy, BillingMoment, Channel, Money
from router.price_book import PriceBook, ProviderPrice
from router.reachability import ReachabilitySettings, RecipientReachability, TrafficStats

MESSAGE_CHANNELS: tuple[Channel, ...] = (Channel.VK, Channel.VIBER, Channel.SMS)
"""Channels that carry a written message, in the tie-break order."""

EXPECTED_COST_QUANTUM = Decimal("0.0001")
"""Expected costs are fractions of a kopeck; four places keep them comparable and exact."""

_PROBABILITY_TOLERANCE = 1e-9

DEFAULT_PROVIDER_PATIENCE = timedelta(minutes=10)
"""How long a step waits out a provider-wide fault unless the settings say otherwise."""


class SkipReason(enum.StrEnum):
    """Why a channel is not in the plan."""

    NOT_ALLOWED = "not_allowed"
    NO_PRICE = "no_price"
    KNOWN_UNREACHABLE = "known_unreachable"
    PROVIDER_UNAVAILABLE = "provider_unavailable"
    OVER_MAX_COST = "over_max_cost"
    NO_TIME = "no_time"
    VOICE_ONLY_FOR_READ = "voice_only_for_read"


@dataclass(frozen=True, slots=True)
class PlannerSettings:
    """Tunables of the planner; the gateway builds them from its configuration."""

    min_wait: timedelta = timedelta(seconds=30)
    max_wait: timedelta = timedelta(minutes=30)
    default_wait: timedelta = timedelta(minutes=5)
    """A step's wait when its channel has fewer than ``min_latency_samples`` reports."""
    latency_percentile: float = 0.95
    min_latency_samples: int = 20
    default_ack_timeout: timedelta = timedelta(minutes=30)
    """How long to wait for a read after delivery under READ when the request names none."""
    voice_retries: int = 2
    """Extra calls after no answer or busy, each ``voice_retry_spacing`` after the last."""
    voice_retry_spacing: timedelta = timedelta(minutes=10)
    value_of_an_hour: Decimal = Decimal("2.00")
    """What reaching a person an hour sooner is worth, in the price book's currency: the
    price of expected waiting when plans are ranked (0: cost alone decides). The default
    makes a wait of a minute worth about a tenth of a VK message."""
    provider_patience: timedelta = DEFAULT_PROVIDER_PATIENCE
    """The longest a step waits out a provider-wide fault (outage, open breaker, rate limit)
    before the cascade moves to the next step; shorter when the next step costs little more."""
    reachability: ReachabilitySettings = field(default_factory=ReachabilitySettings)

    def __post_init__(self) -> None:
        if not timedelta(0) < self.min_wait <= self.max_wait:
            raise ValueError("waits need 0 < min_wait <= max_wait")
        if not self.min_wait <= self.default_wait <= self.max_wait:
            raise ValueError("default_wait must lie within [min_wait, max_wait]")
        if not 0 < self.latency_percentile <= 1:
            raise ValueError("latency_percentile must be in (0, 1]")
        if self.min_latency_samples < 1:
            raise ValueError("min_latency_samples must be at least 1")
        if self.default_ack_timeout <= timedelta(0):
            raise ValueError("default_ack_timeout must be positive")
        if self.voice_retries < 0:
            raise ValueError("voice_retries must not be negative")
        if self.voice_retry_spacing <= timedelta(0):
            raise ValueError("voice_retry_spacing must be positive")
        if not (self.value_of_an_hour.is_finite() and self.value_of_an_hour >= 0):
            raise ValueError("value_of_an_hour must be a finite non-negative amount")
        if self.provider_patience < timedelta(0):
            raise ValueError("provider_patience must not be negative")


@dataclass(frozen=True, slots=True)
class PlanRequest:
    """One notification's constraints, as the gateway knows them at accept time.

    ``billed_units`` is what each channel would bill for this message (SMS segments
    counted by the SMS adapter, started minutes of the robot's speech); the planner
    never counts them itself. ``unavailable_providers`` names providers whose circuit
    breaker is open: another provider of the channel is preferred, but an open breaker never
    leaves a channel out. ``capped_providers`` names providers that take no more messages for
    this person now (their per-person daily limit is reached): they are not used.
    """

    allowed_channels: Collection[Channel]
    billed_units: Mapping[Channel, int]
    now: datetime
    deadline: datetime
    ack_policy: AckPolicy = AckPolicy.DELIVERED
    ack_timeout: timedelta | None = None
    max_cost: Money | None = None
    unavailable_providers: Collection[str] = frozenset()
    capped_providers: Collection[str] = frozenset()

    def __post_init__(self) -> None:
        for name, at in (("now", self.now), ("deadline", self.deadline)):
            if at.tzinfo is None or at.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")
        if self.ack_timeout is not None and self.ack_timeout <= timedelta(0):
            raise ValueError("ack_timeout must be positive")


@dataclass(frozen=True, slots=True)
class PlanStep:
    """One step of a plan, with the numbers that explain it."""

    channel: Channel
    provider: str
    billed_units: int
    price: Money
    """What one billed attempt costs."""
    bills: BillingMoment
    delivery_probability: float
    """Chance this step reaches the person if it runs (over all its attempts)."""
    reach_probability: float
    """Chance the cascade gets to this step (every earlier step failed)."""
    expected_cost: Money
    """``price`` x chance it is billed x ``reach_probability``."""
    starts_after: timedelta
    """Planned start, counted from the plan's ``created_at`` when every earlier step waits in full."""
    wait: timedelta
    """How long to wait for this step's delivery report before moving on."""
    wait_basis: str
    ack_wait: timedelta | None = None
    """Under READ: how long to wait for a read after the delivery report."""
    attempts: int = 1
    """More than one only for the voice robot: calls again after no answer or busy."""
    retry_spacing: timedelta | None = None
    patience: timedelta = DEFAULT_PROVIDER_PATIENCE
    """How long a provider-wide fault on this step is waited out (retried from a timer) before
    the cascade moves to another step; the person is not judged by it."""

    def explain(self) -> str:
        text = (
            f"{self.channel} via {self.provider}: {self.billed_units} x {self.price.currency} "
            f"= {self.price} per billed attempt ({self.bills}); "
            f"reaches the person with p={self.delivery_probability:.3f}; "
            f"tried with p={self.reach_probability:.3f}; expected cost {self.expected_cost}; "
            f"wait {_fmt(self.wait)} ({self.wait_basis})"
        )
        if self.ack_wait is not None:
            text += f", then {_fmt(self.ack_wait)} for a read"
        if self.attempts > 1 and self.retry_spacing is not None:
            text += f"; up to {self.attempts} calls {_fmt(self.retry_spacing)} apart"
        text += f"; provider faults waited out for {_fmt(self.patience)}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel.value,
            "provider": self.provider,
            "billed_units": self.billed_units,
            "price": str(self.price.amount),
            "currency": self.price.currency,
            "bills": self.bills.value,
            "delivery_probability": self.delivery_probability,
            "reach_probability": self.reach_probability,
            "expected_cost": str(self.expected_cost.amount),
            "starts_after_s": self.starts_after.total_seconds(),
            "wait_s": self.wait.total_seconds(),
            "wait_basis": self.wait_basis,
            "ack_wait_s": None if self.ack_wait is None else self.ack_wait.total_seconds(),
            "attempts": self.attempts,
            "retry_spacing_s": None if self.retry_spacing is None else self.retry_spacing.total_seconds(),
            "patience_s": self.patience.total_seconds(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanStep:
        currency = str(data["currency"])
        ack = data.get("ack_wait_s")
        spacing = data.get("retry_spacing_s")
        return cls(
            channel=Channel(data["channel"]),
            provider=str(data["provider"]),
            billed_units=int(data["billed_units"]),
            price=Money(Decimal(data["price"]), currency),
            bills=BillingMoment(data["bills"]),
            delivery_probability=float(data["delivery_probability"]),
            reach_probability=float(data["reach_probability"]),
            expected_cost=Money(Decimal(data["expected_cost"]), currency),
            starts_after=timedelta(seconds=float(data["starts_after_s"])),
            wait=timedelta(seconds=float(data["wait_s"])),
            wait_basis=str(data["wait_basis"]),
            ack_wait=None if ack is None else timedelta(seconds=float(ack)),
            attempts=int(data.get("attempts", 1)),
            retry_spacing=None if spacing is None else timedelta(seconds=float(spacing)),
            # Plans stored before patience existed wait out faults for the default.
            patience=timedelta(
                seconds=float(data.get("patience_s", DEFAULT_PROVIDER_PATIENCE.total_seconds()))
            ),
        )


@dataclass(frozen=True, slots=True)
class SkippedChannel:
    """A channel left out of the plan and why."""

    channel: Channel
    reason: SkipReason
    detail: str
    until: datetime | None = None
    """For ``known_unreachable``: when the fact expires."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel.value,
            "reason": self.reason.value,
            "detail": self.detail,
            "until": None if self.until is None else self.until.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SkippedChannel:
        until = data.get("until")
        return cls(
            channel=Channel(data["channel"]),
            reason=SkipReason(data["reason"]),
            detail=str(data["detail"]),
            until=None if until is None else datetime.fromisoformat(until),
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """An ordered cascade with its expected cost and its chance of reaching the person."""

    steps: tuple[PlanStep, ...]
    skipped: tuple[SkippedChannel, ...]
    expected_cost: Money
    reach_probability: float
    ack_policy: AckPolicy
    created_at: datetime
    deadline: datetime

    def explain(self) -> list[str]:
        """One line per step and per skipped channel, for logs, the CLI and the API."""
        lines = [f"step {i + 1}: {step.explain()}" for i, step in enumerate(self.steps)]
        lines += [f"skipped {s.channel}: {s.reason} ({s.detail})" for s in self.skipped]
        lines.append(f"total expected cost {self.expected_cost}; reach p={self.reach_probability:.3f}")
        return lines

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": [s.to_dict() for s in self.steps],
            "skipped": [s.to_dict() for s in self.skipped],
            "expected_cost": str(self.expected_cost.amount),
            "currency": self.expected_cost.currency,
            "reach_probability": self.reach_probability,
            "ack_policy": self.ack_policy.value,
            "created_at": self.created_at.isoformat(),
            "deadline": self.deadline.isoformat(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        return cls(
            steps=tuple(PlanStep.from_dict(s) for s in data["steps"]),
            skipped=tuple(SkippedChannel.from_dict(s) for s in data["skipped"]),
            expected_cost=Money(Decimal(data["expected_cost"]), str(data["currency"])),
            reach_probability=float(data["reach_probability"]),
            ack_policy=AckPolicy(data["ack_policy"]),
            created_at=datetime.fromisoformat(data["created_at"]),
            deadline=datetime.fromisoformat(data["deadline"]),
        )


@dataclass(frozen=True, slots=True)
class _Candidate:
    """A channel that survived the filters, with everything but its place in the order."""

    channel: Channel
    price: ProviderPrice
    units: int
    cost: Money
    probability: float
    late_share: float
    timeout_share: float
    wait: timedelta
    wait_basis: str
    ack_wait: timedelta | None


@dataclass(frozen=True, slots=True)
class _Scored:
    steps: tuple[PlanStep, ...]
    reach: float
    ranking_reach: float
    expected_cost: Money
    score: Decimal
    """Expected cost plus the value of the expected waiting: what plans are ranked by."""
    rank: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class _Infeasible:
    channel: Channel
    reason: SkipReason
    detail: str


class Planner:
    """Plans cascades from a price book and settings; one instance serves every request."""

    def __init__(self, price_book: PriceBook, settings: PlannerSettings | None = None) -> None:
        self._prices = price_book
        self._settings = settings or PlannerSettings()

    @property
    def settings(self) -> PlannerSettings:
        return self._settings

    def plan(
        self,
        request: PlanRequest,
        recipient: RecipientReachability | None = None,
        traffic: TrafficStats | None = None,
    ) -> Plan:
        """The cheapest-in-expectation cascade that is most likely to reach the person.

        Raises :class:`ValueError` when a channel that could be used has no billed units
        in ``request.billed_units`` or ``max_cost`` is in another currency.
        """
        recipient = recipient or RecipientReachability()
        traffic = traffic or TrafficStats()
        if request.max_cost is not None and request.max_cost.currency != self._prices.currency:
            raise ValueError(
                f"max_cost is in {request.max_cost.currency}, the price book in {self._prices.currency}"
            )
        allowed = frozenset(request.allowed_channels)
        skipped: dict[Channel, SkippedChannel] = {}
        candidates: dict[Channel, _Candidate] = {}
        for channel in Channel:
            outcome = self._candidate(channel, allowed, request, recipient, traffic)
            if isinstance(outcome, SkippedChannel):
                skipped[channel] = outcome
            else:
                candidates[channel] = outcome

        messages = [candidates[c] for c in MESSAGE_CHANNELS if c in candidates]
        voice = candidates.get(Channel.VOICE)
        if voice is not None and request.ack_policy is AckPolicy.DELIVERED:
            if messages or any(c in allowed for c in MESSAGE_CHANNELS):
                skipped[Channel.VOICE] = SkippedChannel(
                    Channel.VOICE,
                    SkipReason.VOICE_ONLY_FOR_READ,
                    "the voice robot is the no-answer fallback for READ acks, "
                    "used for DELIVERED only when it is the only allowed channel",
                )
                voice = None
            else:
                # Voice is the only allowed channel: a plain one-step cascade.
                messages, voice = [voice], None

        best = self._search(messages, voice, request)
        chosen = {step.channel for step in best.steps} if best else set()
        for candidate in [*messages, *([voice] if voice else [])]:
            if candidate.channel not in chosen:
                why = self._why_left_out(candidate, best.steps if best else (), candidates, request)
                skipped[candidate.channel] = SkippedChannel(candidate.channel, why.reason, why.detail)

        steps = self._with_patience(best.steps) if best else ()
        return Plan(
            steps=steps,
            skipped=tuple(skipped[c] for c in Channel if c in skipped),
            expected_cost=best.expected_cost if best else Money.zero(self._prices.currency),
            reach_probability=best.reach if best else 0.0,
            ack_policy=request.ack_policy,
            created_at=request.now,
            deadline=request.deadline,
        )

    def step_wait(self, channel: Channel, traffic: TrafficStats) -> tuple[timedelta, str]:
        """How long to wait for a delivery report on ``channel``, and why that long."""
        s = self._settings
        histogram = traffic.get(channel).latency
        pct = f"p{round(s.latency_percentile * 100):d}"
        if histogram.total < s.min_latency_samples:
            return s.default_wait, f"default: {histogram.total} reports, fewer than {s.min_latency_samples}"
        usable = histogram.count_at_most(s.max_wait)
        observed = histogram.percentile(s.latency_percentile, at_most=s.max_wait)
        if usable < s.min_latency_samples or observed is None:
            late = histogram.total - usable
            return s.max_wait, f"{late} of {histogram.total} reports came after max_wait: waits max_wait"
        if observed < s.min_wait:
            return s.min_wait, f"{pct} {_fmt(observed)} of {usable} reports, raised to min_wait"
        later = histogram.total - usable
        beyond = f" ({later} later ones count as late deliveries)" if later else ""
        return observed, f"{pct} of {usable} reports within max_wait{beyond}"

    def _with_patience(self, steps: Sequence[PlanStep]) -> tuple[PlanStep, ...]:
        """Each step's patience with provider faults: waiting is worth at most what the next
        step costs more (priced at ``value_of_an_hour``), and never longer than configured."""
        s = self._settings
        patient: list[PlanStep] = []
        for index, step in enumerate(steps):
            patience = s.provider_patience
            if index + 1 < len(steps) and s.value_of_an_hour > 0:
                dearer_by = max(Decimal(0), steps[index + 1].price.amount - step.price.amount)
                worth = timedelta(seconds=int(dearer_by / s.value_of_an_hour * 3600))
                patience = min(patience, worth)
            patient.append(replace(step, patience=patience))
        return tuple(patient)

    # -- filters ---------------------------------------------------------------------------

    def _candidate(
        self,
        channel: Channel,
        allowed: frozenset[Channel],
        request: PlanRequest,
        recipient: RecipientReachability,
        traffic: TrafficStats,
    ) -> _Candidate | SkippedChannel:
        if channel not in allowed:
            return SkippedChannel(channel, SkipReason.NOT_ALLOWED, "not in the request's channels")
        prices = self._prices.for_channel(channel)
        if not prices:
            return SkippedChannel(channel, SkipReason.NO_PRICE, "the price book lists no provider")
        known = recipient.get(channel)
        if known.is_unreachable_at(request.now):
            return SkippedChannel(
                channel,
                SkipReason.KNOWN_UNREACHABLE,
                known.unreachable_reason or "the provider said the person cannot be reached",
                until=known.unreachable_until,
            )
        capped = frozenset(request.capped_providers)
        usable = [p for p in prices if p.provider not in capped]
        if not usable:
            names = ", ".join(p.provider for p in prices)
            return SkippedChannel(
                channel, SkipReason.PROVIDER_UNAVAILABLE, f"per-person daily limit reached: {names}"
            )
        # An open breaker is the provider's state, not the person's: prefer a healthy provider
        # of the channel, else plan the first one anyway and let the cascade wait it out.
        unavailable = frozenset(request.unavailable_providers)
        price = next((p for p in usable if p.provider not in unavailable), usable[0])
        if channel not in request.billed_units:
            raise ValueError(f"billed_units has no entry for channel {channel}")
        units = request.billed_units[channel]
        if units < 1:
            raise ValueError(f"billed_units[{channel}] must be at least 1, got {units}")
        wait, basis = self.step_wait(channel, traffic)
        learned = self._settings.reachability
        ack_wait = None
        if request.ack_policy is AckPolicy.READ and channel is not Channel.VOICE:
            ack_wait = request.ack_timeout or self._settings.default_ack_timeout
        return _Candidate(
            channel=channel,
            price=price,
            units=units,
            cost=price.cost(units),
            probability=recipient.delivery_probability(channel, traffic, learned, request.now),
            late_share=recipient.late_share(channel, traffic, learned, request.now),
            timeout_share=recipient.timeout_share(channel, traffic, learned, request.now),
            wait=wait,
            wait_basis=basis,
            ack_wait=ack_wait,
        )

    # -- search ----------------------------------------------------------------------------

    def _search(
        self, messages: Sequence[_Candidate], voice: _Candidate | None, request: PlanRequest
    ) -> _Scored | None:
        best: _Scored | None = None
        tails: list[tuple[_Candidate, ...]] = [()] + ([(voice,)] if voice else [])
        for size in range(len(messages), -1, -1):
            for ordered in itertools.permutations(messages, size):
                for tail in tails:
                    sequence = (*ordered, *tail)
                    if not sequence:
                        continue
                    scored = self._score(sequence, request)
                    if isinstance(scored, _Scored) and (best is None or _better(scored, best)):
                        best = scored
        return best

    def _score(self, sequence: Sequence[_Candidate], request: PlanRequest) -> _Scored | _Infeasible:
        s = self._settings
        steps: list[PlanStep] = []
        offset = timedelta(0)
        reach = 1.0
        # Voice retries squeezed into the time left are a bonus, never a reason to drop a
        # message channel, so plans are compared as if every step made one attempt.
        ranking_miss = 1.0
        total = Money.zero(self._prices.currency)
        worst = Money.zero(self._prices.currency)
        waiting = timedelta(0)
        for index, candidate in enumerate(sequence):
            start = request.now + offset
            last = index == len(sequence) - 1
            if start >= request.deadline:
                late = f"would start at {start.isoformat()}, after the deadline"
                return _Infeasible(candidate.channel, SkipReason.NO_TIME, late)
            duration = candidate.wait + (candidate.ack_wait or timedelta(0))
            if not last and start + duration > request.deadline:
                return _Infeasible(
                    candidate.channel,
                    SkipReason.NO_TIME,
                    f"its {_fmt(duration)} wait does not fit before the deadline",
                )
            attempts, spacing = 1, None
            if candidate.channel is Channel.VOICE:
                attempts, spacing = self._voice_attempts(start, request.deadline), s.voice_retry_spacing
            p_step = 1 - (1 - candidate.probability) ** attempts
            if candidate.price.bills.bills_only_on_success:
                # A message delivered after its wait ran out is billed all the same.
                billed_share = p_step + (1 - p_step) * candidate.late_share
                worst_attempts = 1
            else:
                # Billed per attempt: the expected number of calls actually made.
                billed_share = sum((1 - candidate.probability) ** k for k in range(attempts))
                worst_attempts = attempts
            worst = worst + candidate.cost * worst_attempts
            if request.max_cost is not None and request.max_cost < worst:
                return _Infeasible(
                    candidate.channel,
                    SkipReason.OVER_MAX_COST,
                    f"worst case {worst} with it exceeds max_cost {request.max_cost}",
                )
            expected = (candidate.cost * _decimal(reach * billed_share)).amount.quantize(
                EXPECTED_COST_QUANTUM, rounding=ROUND_HALF_EVEN
            )
            expected_money = Money(expected, self._prices.currency)
            steps.append(
                PlanStep(
                    channel=candidate.channel,
                    provider=candidate.price.provider,
                    billed_units=candidate.units,
                    price=candidate.cost,
                    bills=candidate.price.bills,
                    delivery_probability=p_step,
                    reach_probability=reach,
                    expected_cost=expected_money,
                    starts_after=offset,
                    wait=candidate.wait,
                    wait_basis=candidate.wait_basis,
                    ack_wait=candidate.ack_wait,
                    attempts=attempts,
                    retry_spacing=spacing,
                )
            )
            total = total + expected_money
            if not last:
                # Time spent waiting in vain on a step: what a better order saves. A refusal
                # at submit moves on at once, so only a wait that runs out costs time.
                waiting += duration * (reach * min(candidate.timeout_share, 1 - p_step))
            reach *= 1 - p_step
            ranking_miss *= 1 - candidate.probability
            offset += duration
        rank = tuple(list(Channel).index(step.channel) for step in steps)
        hours = _decimal(waiting / timedelta(hours=1))
        score = total.amount + (s.value_of_an_hour * hours).quantize(EXPECTED_COST_QUANTUM, ROUND_HALF_EVEN)
        return _Scored(tuple(steps), 1 - reach, 1 - ranking_miss, total, score, rank)

    def _voice_attempts(self, start: datetime, deadline: datetime) -> int:
        spacing = self._settings.voice_retry_spacing
        fitting = math.ceil((deadline - start) / spacing) - 1
        return 1 + max(0, min(self._settings.voice_retries, fitting))

    def _why_left_out(
        self,
        candidate: _Candidate,
        chosen: Sequence[PlanStep],
        candidates: Mapping[Channel, _Candidate],
        request: PlanRequest,
    ) -> _Infeasible:
        # The best plan is the most likely to reach the person, so adding any feasible
        # channel would have beaten it: the channel must fail wherever it is placed.
        # Report what stops it at the end of the chosen plan (its least demanding place).
        sequence = [candidates[step.channel] for step in chosen]
        if candidate.channel is not Channel.VOICE and sequence and sequence[-1].channel is Channel.VOICE:
            sequence.insert(len(sequence) - 1, candidate)
        else:
            sequence.append(candidate)
        scored = self._score(sequence, request)
        if isinstance(scored, _Infeasible):
            return scored
        detail = "plans without it reach the person more surely before the deadline"
        return _Infeasible(candidate.channel, SkipReason.NO_TIME, detail)


def _better(a: _Scored, b: _Scored) -> bool:
    if abs(a.ranking_reach - b.ranking_reach) > _PROBABILITY_TOLERANCE:
        return a.ranking_reach > b.ranking_reach
    if a.score != b.score:
        return a.score < b.score
    if len(a.steps) != len(b.steps):
        return len(a.steps) < len(b.steps)
    return a.rank < b.rank


def _decimal(probability: float) -> Decimal:
    # Probabilities are floats; money is not. Go through a short decimal string.
    return Decimal(f"{probability:.9f}")


def _fmt(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    if seconds % 3600 == 0 and seconds >= 3600:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds >= 60:
        return f"{seconds // 60}min"
    return f"{seconds}s"
