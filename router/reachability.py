"""What Kaskad has learned about reaching people: per recipient and channel, and channel-wide.

Three kinds of knowledge, all immutable values updated by pure methods that return a
new value:

- **Hard facts.** A provider said "this person cannot be messaged here" (not a VK user,
  privacy settings, not on Viber). The channel is skipped until the fact expires
  (:attr:`ReachabilitySettings.fact_ttl`), because people install apps and change settings.
- **Delivery probability.** A Beta posterior per (recipient, channel). Its prior is the
  channel-wide delivery rate with a capped strength, so a first-time recipient gets the
  channel-wide rate and a handful of their own outcomes quickly outweighs it. Their own
  outcomes fade with age (:attr:`ReachabilitySettings.evidence_half_life`), so a channel
  someone was once unreachable on in time gets tried first again after a while.
- **Delivery-report latency.** A fixed-bucket histogram per channel; the planner reads a
  high percentile from it to size each step's wait.
- **Late deliveries.** A step whose wait ran out without a report counts as a failure
  (``timed_out``: the message did not reach the person in time). When that message is
  delivered after all, within the longest wait the planner may choose
  (:attr:`ReachabilitySettings.catchable_within`), the wait was too short, not the
  channel wrong: the timeout becomes the success it was (and its latency lets the waits
  grow). Later than that, the delivery is counted apart (``late``), per person and
  channel-wide: a messenger bills it, so for a person who is often late on a channel,
  trying that channel first costs money as well as time
  (:meth:`RecipientReachability.late_share`).

Every value round-trips through JSON-compatible dicts (``to_dict``/``from_dict``): the
gateway keeps the truth in PostgreSQL and a hot copy in Redis.

Feed one observation per attempt (the cascade emits exactly that): a "read" that follows
a "delivered" for the same message is not a second success.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any

from router.domain import Channel, DeliveryOutcome

SCHEMA_VERSION = 1

# Upper bounds (seconds) of the latency buckets: about 1.5x apart, from a second to a
# day, so the p95 read from them is at most ~50% above the true value, which is the
# safe direction for a wait.
DEFAULT_LATENCY_BOUNDS_S: tuple[float, ...] = (
    1, 2, 3, 5, 7, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 420, 600,
    900, 1200, 1800, 2700, 3600, 5400, 7200, 10800, 14400, 21600, 43200, 86400,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class BetaPrior:
    """Pseudo-counts of successes (alpha) and failures (beta)."""

    alpha: float
    beta: float

    def __post_init__(self) -> None:
        if not (self.alpha > 0 and self.beta > 0 and math.isfinite(self.alpha + self.beta)):
            raise ValueError(f"a Beta prior needs positive finite alpha and beta, got {self}")

    @property
    def mean(self) -> float:
        return self.alpha / (self.alpha + self.beta)

    @property
    def strength(self) -> float:
        return self.alpha + self.beta


@dataclass(frozen=True, slots=True)
class ReachabilitySettings:
    """How fast Kaskad forgets and how much the channel-wide rate counts for one person."""

    fact_ttl: timedelta = timedelta(days=30)
    """How long "cannot be messaged here" stays true without new evidence."""
    prior_strength_cap: float = 3.0
    """At most this many pseudo-observations of channel-wide traffic in a person's prior,
    so their own history wins after about as many outcomes. Small, because people differ
    more than channels do: someone who never opens VK should stop costing a wait on VK
    after a few notifications, not after dozens."""
    no_traffic_prior: BetaPrior = BetaPrior(1.0, 1.0)
    """The prior of a channel that has seen no traffic at all."""
    recipient_history_cap: int = 50
    """When a person's counts on a channel pass this, both are halved: old behaviour fades."""
    channel_history_cap: int = 100_000
    """The same for channel-wide counts and latency buckets; keeps them adaptive and bounded."""
    evidence_half_life: timedelta = timedelta(days=30)
    """A person's own outcomes on a channel count half as much this long after the latest
    of them, and the channel-wide rate fills the gap: people install and abandon apps,
    and a channel planned last for someone is seldom tried again to find out."""
    catchable_within: timedelta = timedelta(minutes=30)
    """The longest step wait the planner may choose: a delivery reported after a timeout
    but within this was a wait too short (counted as a success), later ones are late."""

    def __post_init__(self) -> None:
        if self.fact_ttl <= timedelta(0):
            raise ValueError("fact_ttl must be positive")
        if not self.prior_strength_cap > 0:
            raise ValueError("prior_strength_cap must be positive")
        if self.recipient_history_cap < 2 or self.channel_history_cap < 2:
            raise ValueError("history caps must be at least 2")
        if self.catchable_within <= timedelta(0):
            raise ValueError("catchable_within must be positive")
        if self.evidence_half_life <= timedelta(0):
            raise ValueError("evidence_half_life must be positive")


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    """Counts of delivery-report latencies in fixed buckets; bounded memory, deterministic.

    ``counts[i]`` counts latencies in ``(bounds[i-1], bounds[i]]``; the last count is the
    overflow above the largest bound.
    """

    upper_bounds_s: tuple[float, ...] = DEFAULT_LATENCY_BOUNDS_S
    counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.upper_bounds_s or list(self.upper_bounds_s) != sorted(set(self.upper_bounds_s)):
            raise ValueError("latency bucket bounds must be strictly increasing")
        if not self.counts:
            object.__setattr__(self, "counts", (0,) * (len(self.upper_bounds_s) + 1))
        if len(self.counts) != len(self.upper_bounds_s) + 1:
            raise ValueError(
                f"latency histogram needs {len(self.upper_bounds_s) + 1} counts, got {len(self.counts)}"
            )
        if any(c < 0 for c in self.counts):
            raise ValueError("latency counts must not be negative")

    @property
    def total(self) -> int:
        return sum(self.counts)

    def record(self, latency: timedelta, *, cap: int = 100_000) -> LatencyHistogram:
        """A histogram with one more latency; halves every bucket once the total passes ``cap``."""
        seconds = max(latency.total_seconds(), 0.0)
        index = bisect.bisect_left(self.upper_bounds_s, seconds)
        counts = list(self.counts)
        counts[index] += 1
        if sum(counts) > cap:
            counts = [c // 2 for c in counts]
        return replace(self, counts=tuple(counts))

    def percentile(self, q: float, at_most: timedelta | None = None) -> timedelta | None:
        """The upper bound of the bucket holding the ``q`` quantile (0 < q <= 1), or None
        when nothing was recorded. Overflow reads as the largest bound.

        ``at_most``: only latencies in buckets that end at or below it count (a wait can
        never be longer than that, so reports that come later cannot size it; they are
        counted as late deliveries instead)."""
        if not 0 < q <= 1:
            raise ValueError(f"percentile must be in (0, 1], got {q}")
        counts = self.counts if at_most is None else self._within(at_most)
        total = sum(counts)
        if total == 0:
            return None
        rank = math.ceil(q * total)
        running = 0
        for index, count in enumerate(counts):
            running += count
            if running >= rank:
                bound = self.upper_bounds_s[min(index, len(self.upper_bounds_s) - 1)]
                return timedelta(seconds=bound)
        raise AssertionError("unreachable: rank is at most the total")  # pragma: no cover

    def count_at_most(self, at_most: timedelta) -> int:
        """How many recorded latencies lie in buckets that end at or below ``at_most``."""
        return sum(self._within(at_most))

    def _within(self, at_most: timedelta) -> tuple[int, ...]:
        """The counts with every bucket that ends above ``at_most`` (overflow included) emptied."""
        limit = at_most.total_seconds()
        return tuple(
            c if i < len(self.upper_bounds_s) and self.upper_bounds_s[i] <= limit else 0
            for i, c in enumerate(self.counts)
        )

    def to_dict(self) -> dict[str, Any]:
        return {"upper_bounds_s": list(self.upper_bounds_s), "counts": list(self.counts)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LatencyHistogram:
        bounds = tuple(float(b) for b in data.get("upper_bounds_s", DEFAULT_LATENCY_BOUNDS_S))
        counts = tuple(_non_negative_int(c, "latency count") for c in data.get("counts", ()))
        return cls(upper_bounds_s=bounds, counts=counts)


@dataclass(frozen=True, slots=True)
class ChannelStats:
    """Channel-wide delivery counts and latency, the prior for every recipient."""

    successes: int = 0
    failures: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    timeouts: int = 0
    """Failures that were a wait running out (``timed_out``), a subset of ``failures``."""
    late: int = 0
    """Timed-out messages that were delivered after all."""

    def observe(
        self,
        outcome: DeliveryOutcome,
        latency: timedelta | None = None,
        settings: ReachabilitySettings | None = None,
        *,
        after_timeout: bool = False,
    ) -> ChannelStats:
        """Stats with one more outcome; ``latency`` (submit to report) is recorded for
        outcomes that reached the person.

        ``after_timeout``: the report of a message already counted as ``timed_out``; a
        delivery then corrects that timeout or counts as late (see the module docstring;
        its latency is recorded either way), anything else is already counted."""
        settings = settings or ReachabilitySettings()
        if not outcome.says_about_recipient:
            return self
        histogram = self.latency
        if latency is not None and outcome.reached_person:
            histogram = histogram.record(latency, cap=settings.channel_history_cap)
        counts = _Counts(self.successes, self.failures, self.timeouts, self.late).observe(
            outcome, latency, settings, settings.channel_history_cap, after_timeout=after_timeout
        )
        if counts is None:
            return self
        return ChannelStats(counts.successes, counts.failures, histogram, counts.timeouts, counts.late)

    def prior(self, settings: ReachabilitySettings | None = None) -> BetaPrior:
        """The Beta prior for a person on this channel: the channel's smoothed delivery rate,
        worth at most ``prior_strength_cap`` observations."""
        settings = settings or ReachabilitySettings()
        observed = self.successes + self.failures
        if observed == 0:
            return settings.no_traffic_prior
        rate = (self.successes + 1) / (observed + 2)
        strength = min(float(observed + 2), settings.prior_strength_cap)
        return BetaPrior(rate * strength, (1 - rate) * strength)

    def timeout_rate(self) -> tuple[float, float]:
        """The channel's share of outcomes that were a wait running out, and how many
        outcomes it rests on (0 and 0 before any)."""
        observed = self.successes + self.failures
        if observed == 0:
            return 0.0, 0.0
        return self.timeouts / observed, float(observed)

    def late_rate(self) -> tuple[float, float]:
        """The channel's share of timed-out messages delivered after all, and how many
        timeouts it rests on (0 and 0 before any timeout)."""
        if self.timeouts == 0:
            return 0.0, 0.0
        return self.late / self.timeouts, float(self.timeouts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "successes": self.successes,
            "failures": self.failures,
            "timeouts": self.timeouts,
            "late": self.late,
            "latency": self.latency.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelStats:
        _check_version(data)
        return cls(
            successes=_non_negative_int(data.get("successes", 0), "successes"),
            failures=_non_negative_int(data.get("failures", 0), "failures"),
            latency=LatencyHistogram.from_dict(data.get("latency", {})),
            timeouts=_non_negative_int(data.get("timeouts", 0), "timeouts"),
            late=_non_negative_int(data.get("late", 0), "late"),
        )


@dataclass(frozen=True, slots=True)
class TrafficStats:
    """:class:`ChannelStats` for every channel."""

    channels: Mapping[Channel, ChannelStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", MappingProxyType(dict(self.channels)))

    def get(self, channel: Channel) -> ChannelStats:
        return self.channels.get(channel, ChannelStats())

    def observe(
        self,
        channel: Channel,
        outcome: DeliveryOutcome,
        latency: timedelta | None = None,
        settings: ReachabilitySettings | None = None,
        *,
        after_timeout: bool = False,
    ) -> TrafficStats:
        updated = dict(self.channels)
        updated[channel] = self.get(channel).observe(outcome, latency, settings, after_timeout=after_timeout)
        return TrafficStats(updated)

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "channels": {c.value: s.to_dict() for c, s in sorted(self.channels.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrafficStats:
        _check_version(data)
        return cls({Channel(k): ChannelStats.from_dict(v) for k, v in data.get("channels", {}).items()})


@dataclass(frozen=True, slots=True)
class ChannelReachability:
    """One person on one channel: their own outcomes and any hard fact."""

    successes: int = 0
    failures: int = 0
    unreachable_since: datetime | None = None
    unreachable_until: datetime | None = None
    unreachable_reason: str | None = None
    last_outcome: DeliveryOutcome | None = None
    last_observed_at: datetime | None = None
    timeouts: int = 0
    """Failures that were a wait running out, a subset of ``failures``."""
    late: int = 0
    """Timed-out messages delivered after all (billed, but after the cascade moved on)."""

    def observe(
        self,
        outcome: DeliveryOutcome,
        at: datetime,
        settings: ReachabilitySettings | None = None,
        reason: str | None = None,
        *,
        after_timeout: bool = False,
        latency: timedelta | None = None,
    ) -> ChannelReachability:
        """This channel after one more outcome at ``at`` (an aware datetime).

        ``unreachable`` also sets a hard fact until ``at + fact_ttl``; a later outcome that
        reached the person clears it. ``reason`` is the provider's words, for operators.
        ``after_timeout``: the report of a message already counted as ``timed_out``: a
        delivery ``latency`` after submit corrects the timeout or counts as late (see the
        module docstring), anything else was counted already.
        """
        settings = settings or ReachabilitySettings()
        _require_aware(at)
        if not outcome.says_about_recipient:
            return self
        counts = _Counts(self.successes, self.failures, self.timeouts, self.late).observe(
            outcome, latency, settings, settings.recipient_history_cap, after_timeout=after_timeout
        )
        if counts is None:
            return self
        since, until, why = self.unreachable_since, self.unreachable_until, self.unreachable_reason
        if outcome is DeliveryOutcome.UNREACHABLE:
            new_until = at + settings.fact_ttl
            if until is None or new_until > until:
                since, until, why = at, new_until, reason or "the provider said the person cannot be reached"
        elif outcome.reached_person and since is not None and at >= since:
            since, until, why = None, None, None
        newest = self.last_observed_at is None or at >= self.last_observed_at
        return ChannelReachability(
            successes=counts.successes,
            failures=counts.failures,
            unreachable_since=since,
            unreachable_until=until,
            unreachable_reason=why,
            last_outcome=outcome if newest else self.last_outcome,
            last_observed_at=at if newest else self.last_observed_at,
            timeouts=counts.timeouts,
            late=counts.late,
        )

    def is_unreachable_at(self, now: datetime) -> bool:
        """True while a hard fact says the person cannot be messaged here."""
        return self.unreachable_until is not None and now < self.unreachable_until

    def evidence_weight(self, now: datetime | None, settings: ReachabilitySettings | None = None) -> float:
        """How much this person's own counts weigh at ``now``: 1 right after the latest
        outcome, halving every ``evidence_half_life``; 1 when ``now`` is not given."""
        if now is None or self.last_observed_at is None or now <= self.last_observed_at:
            return 1.0
        settings = settings or ReachabilitySettings()
        return float(0.5 ** ((now - self.last_observed_at) / settings.evidence_half_life))

    def delivery_probability(self, prior: BetaPrior, weight: float = 1.0) -> float:
        """Posterior mean of delivering to this person here, ignoring hard facts; ``weight``
        scales their own counts (:meth:`evidence_weight`)."""
        successes, failures = weight * self.successes, weight * self.failures
        return (prior.alpha + successes) / (prior.strength + successes + failures)

    def timeout_share(self, channel_rate: float, strength: float, weight: float = 1.0) -> float:
        """Share of this person's outcomes here that were a wait running out, shrunk toward
        the channel's ``channel_rate`` as if by ``strength`` outcomes."""
        return _shrunk(
            weight * self.timeouts, weight * (self.successes + self.failures), channel_rate, strength
        )

    def late_share(self, channel_rate: float, strength: float, weight: float = 1.0) -> float:
        """Share of this person's timed-out messages here that were delivered (and billed)
        later, shrunk toward the channel's ``channel_rate`` as if by ``strength`` timeouts;
        0 when neither has seen a timeout."""
        return _shrunk(weight * self.late, weight * self.timeouts, channel_rate, strength)

    def to_dict(self) -> dict[str, Any]:
        return {
            "successes": self.successes,
            "failures": self.failures,
            "unreachable_since": _iso(self.unreachable_since),
            "unreachable_until": _iso(self.unreachable_until),
            "unreachable_reason": self.unreachable_reason,
            "last_outcome": None if self.last_outcome is None else self.last_outcome.value,
            "last_observed_at": _iso(self.last_observed_at),
            "timeouts": self.timeouts,
            "late": self.late,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ChannelReachability:
        last = data.get("last_outcome")
        return cls(
            successes=_non_negative_int(data.get("successes", 0), "successes"),
            failures=_non_negative_int(data.get("failures", 0), "failures"),
            unreachable_since=_parse_time(data.get("unreachable_since")),
            unreachable_until=_parse_time(data.get("unreachable_until")),
            unreachable_reason=data.get("unreachable_reason"),
            last_outcome=None if last is None else DeliveryOutcome(last),
            last_observed_at=_parse_time(data.get("last_observed_at")),
            timeouts=_non_negative_int(data.get("timeouts", 0), "timeouts"),
            late=_non_negative_int(data.get("late", 0), "late"),
        )


@dataclass(frozen=True, slots=True)
class RecipientReachability:
    """Everything learned about one person, by channel.

    Serialised form (JSON-compatible)::

        {"version": 1, "channels": {"vk": {"successes": 0, "failures": 1,
            "unreachable_since": "2025-01-01T10:00:00+00:00",
            "unreachable_until": "2025-01-31T10:00:00+00:00",
            "unreachable_reason": "vk 902: privacy settings",
            "last_outcome": "unreachable", "last_observed_at": "2025-01-01T10:00:00+00:00"}}}
    """

    channels: Mapping[Channel, ChannelReachability] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", MappingProxyType(dict(self.channels)))

    def get(self, channel: Channel) -> ChannelReachability:
        return self.channels.get(channel, ChannelReachability())

    def observe(
        self,
        channel: Channel,
        outcome: DeliveryOutcome,
        at: datetime,
        settings: ReachabilitySettings | None = None,
        reason: str | None = None,
        *,
        after_timeout: bool = False,
        latency: timedelta | None = None,
    ) -> RecipientReachability:
        """This person's knowledge after one outcome on ``channel`` at ``at``."""
        updated = dict(self.channels)
        updated[channel] = self.get(channel).observe(
            outcome, at, settings, reason, after_timeout=after_timeout, latency=latency
        )
        return RecipientReachability(updated)

    def delivery_probability(
        self,
        channel: Channel,
        traffic: TrafficStats,
        settings: ReachabilitySettings | None = None,
        now: datetime | None = None,
    ) -> float:
        """Chance a message on ``channel`` reaches this person: their posterior over the
        channel-wide prior (their own outcomes aged to ``now``, when given)."""
        known = self.get(channel)
        return known.delivery_probability(
            traffic.get(channel).prior(settings), known.evidence_weight(now, settings)
        )

    def timeout_share(
        self,
        channel: Channel,
        traffic: TrafficStats,
        settings: ReachabilitySettings | None = None,
        now: datetime | None = None,
    ) -> float:
        """Chance that a message on ``channel`` gets no report within its wait: the time a
        failure here costs. (A refusal at submit fails at once and costs none.)"""
        settings = settings or ReachabilitySettings()
        rate, seen = traffic.get(channel).timeout_rate()
        known = self.get(channel)
        return known.timeout_share(
            rate, min(seen, settings.prior_strength_cap), known.evidence_weight(now, settings)
        )

    def late_share(
        self,
        channel: Channel,
        traffic: TrafficStats,
        settings: ReachabilitySettings | None = None,
        now: datetime | None = None,
    ) -> float:
        """Chance that a message on ``channel`` that gets no report within its wait is
        delivered after all: billed by a messenger even though the cascade moved on."""
        settings = settings or ReachabilitySettings()
        rate, seen = traffic.get(channel).late_rate()
        known = self.get(channel)
        return known.late_share(
            rate, min(seen, settings.prior_strength_cap), known.evidence_weight(now, settings)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": SCHEMA_VERSION,
            "channels": {c.value: r.to_dict() for c, r in sorted(self.channels.items())},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecipientReachability:
        _check_version(data)
        return cls(
            {Channel(k): ChannelReachability.from_dict(v) for k, v in data.get("channels", {}).items()}
        )


def _shrunk(count: float, total: float, channel_rate: float, strength: float) -> float:
    """``count / total`` shrunk toward ``channel_rate`` as if by ``strength`` more; 0 with neither."""
    if total + strength == 0:
        return 0.0
    return (count + channel_rate * strength) / (total + strength)


@dataclass(frozen=True, slots=True)
class _Counts:
    successes: int
    failures: int
    timeouts: int
    late: int

    def observe(
        self,
        outcome: DeliveryOutcome,
        latency: timedelta | None,
        settings: ReachabilitySettings,
        cap: int,
        *,
        after_timeout: bool,
    ) -> _Counts | None:
        """The counts after one outcome; None when it changes nothing (a failure reported
        for a message already counted as timed out)."""
        if not after_timeout:
            return self.add(outcome, cap)
        return self.delivered_after_timeout(latency, settings) if outcome.reached_person else None

    def add(self, outcome: DeliveryOutcome, cap: int) -> _Counts:
        successes, failures, timeouts = self.successes, self.failures, self.timeouts
        if outcome.reached_person:
            successes += 1
        else:
            failures += 1
            timeouts += outcome is DeliveryOutcome.TIMED_OUT
        late = self.late
        if successes + failures > cap:
            # Halving keeps the rates and forgets the age: recent outcomes weigh more.
            successes, failures, timeouts, late = successes // 2, failures // 2, timeouts // 2, late // 2
        return _Counts(successes, failures, min(timeouts, failures), min(late, timeouts))

    def delivered_after_timeout(self, latency: timedelta | None, settings: ReachabilitySettings) -> _Counts:
        """A message counted as timed out was delivered after all, ``latency`` after submit."""
        if self.timeouts == 0:
            return self  # the timeout was forgotten (halved away): nothing to correct
        if latency is not None and latency <= settings.catchable_within:
            # A longer allowed wait would have caught it: the timeout was a success.
            return _Counts(
                self.successes + 1, self.failures - 1, self.timeouts - 1, min(self.late, self.timeouts - 1)
            )
        return replace(self, late=min(self.late + 1, self.timeouts))


def _require_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"times must be timezone-aware, got {at!r}")


def _iso(at: datetime | None) -> str | None:
    return None if at is None else at.isoformat()


def _parse_time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 8601 time string, got {value!r}")
    parsed = datetime.fromisoformat(value)
    _require_aware(parsed)
    return parsed


def _non_negative_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {value!r}")
    return value


def _check_version(data: Mapping[str, Any]) -> None:
    version = data.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ValueError(f"unsupported reachability schema version {version!r} (expected {SCHEMA_VERSION})")
