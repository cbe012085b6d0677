"""Reachability: Beta posteriors over channel-wide priors, hard facts that expire, latency."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.domain import Channel, DeliveryOutcome
from router.reachability import (
    BetaPrior,
    ChannelReachability,
    ChannelStats,
    LatencyHistogram,
    ReachabilitySettings,
    RecipientReachability,
    TrafficStats,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def channel_with(successes: int, failures: int) -> ChannelStats:
    stats = ChannelStats()
    for _ in range(successes):
        stats = stats.observe(DeliveryOutcome.DELIVERED)
    for _ in range(failures):
        stats = stats.observe(DeliveryOutcome.UNDELIVERABLE)
    return stats


def test_first_time_recipient_gets_the_channel_wide_rate() -> None:
    traffic = TrafficStats({Channel.VK: channel_with(598, 398)})

    p = RecipientReachability().delivery_probability(Channel.VK, traffic)

    assert p == pytest.approx(599 / 998)


def test_channel_without_traffic_uses_the_no_traffic_prior() -> None:
    settings = ReachabilitySettings(no_traffic_prior=BetaPrior(9, 1))
    assert RecipientReachability().delivery_probability(Channel.VIBER, TrafficStats(), settings) == 0.9


def test_prior_strength_is_capped_so_own_history_wins_quickly() -> None:
    settings = ReachabilitySettings(prior_strength_cap=10)
    prior = channel_with(9_000, 1_000).prior(settings)
    assert prior.strength == pytest.approx(10)
    assert prior.mean == pytest.approx(9_001 / 10_002)

    recipient = RecipientReachability()
    for i in range(10):
        recipient = recipient.observe(Channel.VK, DeliveryOutcome.FAILED, T0 + timedelta(minutes=i), settings)

    p = recipient.get(Channel.VK).delivery_probability(prior)
    # (alpha + 0) / (10 + 10): ten own failures halve a 90% channel.
    assert p == pytest.approx(prior.alpha / 20)
    assert p < 0.5


def test_posterior_moves_with_each_outcome() -> None:
    prior = BetaPrior(2, 2)
    vk = ChannelReachability()
    assert vk.delivery_probability(prior) == 0.5

    vk = vk.observe(DeliveryOutcome.DELIVERED, T0)
    assert vk.delivery_probability(prior) == pytest.approx(3 / 5)
    vk = vk.observe(DeliveryOutcome.EXPIRED, T0 + timedelta(hours=1))
    assert vk.delivery_probability(prior) == pytest.approx(3 / 6)
    assert (vk.successes, vk.failures, vk.last_outcome) == (1, 1, DeliveryOutcome.EXPIRED)


def test_rejection_is_about_the_message_not_the_person() -> None:
    vk = ChannelReachability().observe(DeliveryOutcome.REJECTED, T0)
    assert vk == ChannelReachability()
    assert ChannelStats().observe(DeliveryOutcome.REJECTED) == ChannelStats()


def test_history_is_halved_past_the_cap() -> None:
    settings = ReachabilitySettings(recipient_history_cap=10)
    vk = ChannelReachability()
    for i in range(11):
        vk = vk.observe(DeliveryOutcome.DELIVERED, T0 + timedelta(minutes=i), settings)
    assert vk.successes == 5


def test_unreachable_fact_holds_until_it_expires() -> None:
    settings = ReachabilitySettings(fact_ttl=timedelta(days=7))
    vk = ChannelReachability().observe(DeliveryOutcome.UNREACHABLE, T0, settings, "vk 902: privacy settings")

    assert vk.unreachable_until == T0 + timedelta(days=7)
    assert vk.unreachable_reason == "vk 902: privacy settings"
    assert vk.is_unreachable_at(T0 + timedelta(days=6, hours=23))
    assert not vk.is_unreachable_at(T0 + timedelta(days=7))
    assert vk.failures == 1


def test_delivery_after_the_fact_clears_it_but_an_older_one_does_not() -> None:
    vk = ChannelReachability().observe(DeliveryOutcome.UNREACHABLE, T0)

    stale = vk.observe(DeliveryOutcome.DELIVERED, T0 - timedelta(minutes=1))
    assert stale.is_unreachable_at(T0 + timedelta(hours=1))
    assert stale.last_outcome is DeliveryOutcome.UNREACHABLE  # the newest word stays the newest

    fresh = vk.observe(DeliveryOutcome.DELIVERED, T0 + timedelta(days=1))
    assert not fresh.is_unreachable_at(T0 + timedelta(days=1, minutes=1))
    assert fresh.unreachable_until is None


def test_observe_needs_aware_times() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        ChannelReachability().observe(DeliveryOutcome.DELIVERED, datetime(2025, 1, 1))


def test_latency_percentile_reads_the_bucket_bound() -> None:
    histogram = LatencyHistogram()
    assert histogram.percentile(0.95) is None
    for _ in range(95):
        histogram = histogram.record(timedelta(seconds=4))  # bucket (3, 5]
    for _ in range(5):
        histogram = histogram.record(timedelta(minutes=8))  # bucket (420, 600]

    assert histogram.total == 100
    assert histogram.percentile(0.95) == timedelta(seconds=5)
    assert histogram.percentile(0.96) == timedelta(seconds=600)
    assert histogram.percentile(0.5) == timedelta(seconds=5)


def test_latency_overflow_reads_as_the_largest_bound() -> None:
    histogram = LatencyHistogram(upper_bounds_s=(10, 60)).record(timedelta(hours=2))
    assert histogram.percentile(0.95) == timedelta(seconds=60)


def test_latency_histogram_memory_is_bounded() -> None:
    histogram = LatencyHistogram(upper_bounds_s=(10, 60))
    for i in range(1_000):
        histogram = histogram.record(timedelta(seconds=i % 90), cap=100)
    assert histogram.total <= 100
    assert len(histogram.counts) == 3


@given(st.lists(st.floats(min_value=0, max_value=200_000, allow_nan=False), min_size=1, max_size=200))
def test_percentile_is_never_below_the_true_value(seconds: list[float]) -> None:
    histogram = LatencyHistogram()
    for s in seconds:
        histogram = histogram.record(timedelta(seconds=s))
    p95 = histogram.percentile(0.95)
    assert p95 is not None
    ordered = sorted(seconds)
    true_p95 = ordered[max(0, -(-len(ordered) * 95 // 100) - 1)]
    # The bound of the bucket is never below the sample (except past the last bound).
    assert p95.total_seconds() >= min(true_p95, 86_400)


def test_channel_stats_record_latency_only_for_successes() -> None:
    stats = ChannelStats().observe(DeliveryOutcome.DELIVERED, timedelta(seconds=12))
    stats = stats.observe(DeliveryOutcome.FAILED, timedelta(seconds=500))
    assert stats.latency.total == 1
    assert (stats.successes, stats.failures) == (1, 1)


def test_state_round_trips_through_json() -> None:
    recipient = (
        RecipientReachability()
        .observe(Channel.VK, DeliveryOutcome.UNREACHABLE, T0, reason="vk 901")
        .observe(Channel.SMS, DeliveryOutcome.DELIVERED, T0 + timedelta(minutes=3))
    )
    traffic = TrafficStats().observe(Channel.SMS, DeliveryOutcome.DELIVERED, timedelta(seconds=8))

    recipient_again = RecipientReachability.from_dict(json.loads(json.dumps(recipient.to_dict())))
    traffic_again = TrafficStats.from_dict(json.loads(json.dumps(traffic.to_dict())))

    assert recipient_again == recipient
    assert traffic_again == traffic
    assert recipient.to_dict()["channels"]["vk"]["unreachable_until"] == "2025-03-31T12:00:00+00:00"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"version": 2, "channels": {}}, "unsupported reachability schema version 2"),
        ({"channels": {"vk": {"successes": -1}}}, "successes must be a non-negative integer"),
        ({"channels": {"vk": {"unreachable_until": "2025-01-01T00:00:00"}}}, "timezone-aware"),
        ({"channels": {"fax": {}}}, "'fax' is not a valid Channel"),
    ],
)
def test_bad_stored_state_is_refused(data: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RecipientReachability.from_dict(data)


def test_a_wait_that_ran_out_is_a_failure_and_a_later_delivery_counts_as_late() -> None:
    settings = ReachabilitySettings(prior_strength_cap=3)
    person = RecipientReachability().observe(Channel.VK, DeliveryOutcome.TIMED_OUT, T0, settings)
    vk = person.get(Channel.VK)
    assert (vk.successes, vk.failures, vk.timeouts, vk.late) == (0, 1, 1, 0)

    person = person.observe(
        Channel.VK, DeliveryOutcome.DELIVERED, T0 + timedelta(minutes=40), settings, after_timeout=True
    )
    vk = person.get(Channel.VK)
    # Still one failure (it did not reach them in time), now also one late delivery.
    assert (vk.successes, vk.failures, vk.timeouts, vk.late) == (0, 1, 1, 1)
    # An expiry reported after the timeout adds nothing: the timeout was counted.
    again = person.observe(Channel.VK, DeliveryOutcome.EXPIRED, T0, settings, after_timeout=True)
    assert again == person
    assert ChannelReachability.from_dict(json.loads(json.dumps(vk.to_dict()))) == vk


def test_late_and_timeout_shares_shrink_toward_the_channel() -> None:
    settings = ReachabilitySettings(prior_strength_cap=3)
    channel = ChannelStats()
    for _ in range(8):
        channel = channel.observe(DeliveryOutcome.DELIVERED, timedelta(seconds=2), settings)
    for latency in (None, None):
        channel = channel.observe(DeliveryOutcome.TIMED_OUT, latency, settings)
    channel = channel.observe(DeliveryOutcome.DELIVERED, timedelta(minutes=45), settings, after_timeout=True)
    assert (channel.successes, channel.failures, channel.timeouts, channel.late) == (8, 2, 2, 1)
    assert channel.latency.total == 9  # the late delivery's latency is data too
    traffic = TrafficStats({Channel.VK: channel})

    stranger = RecipientReachability()
    # Channel: 2 timeouts of 10 outcomes, 1 of 2 timeouts delivered late.
    assert stranger.timeout_share(Channel.VK, traffic, settings) == pytest.approx(0.2)
    assert stranger.late_share(Channel.VK, traffic, settings) == pytest.approx(0.5)

    sleeper = stranger
    for i in range(3):
        at = T0 + timedelta(hours=i)
        sleeper = sleeper.observe(Channel.VK, DeliveryOutcome.TIMED_OUT, at, settings)
        sleeper = sleeper.observe(Channel.VK, DeliveryOutcome.DELIVERED, at, settings, after_timeout=True)
    # (3 + 0.2 * 3) / (3 + 3) and (3 + 0.5 * 2) / (3 + 2): the prior rests on at most 3 (and
    # on only the 2 timeouts the channel has seen for the late share).
    assert sleeper.timeout_share(Channel.VK, traffic, settings) == pytest.approx(3.6 / 6)
    assert sleeper.late_share(Channel.VK, traffic, settings) == pytest.approx(4 / 5)
    assert stranger.late_share(Channel.VIBER, traffic, settings) == 0.0  # nothing seen yet


def test_percentile_can_ignore_latencies_beyond_a_limit() -> None:
    histogram = LatencyHistogram()
    for seconds in [2] * 90 + [5000] * 10:
        histogram = histogram.record(timedelta(seconds=seconds))
    assert histogram.percentile(0.95) == timedelta(seconds=5400)
    assert histogram.percentile(0.95, at_most=timedelta(minutes=30)) == timedelta(seconds=2)
    assert histogram.count_at_most(timedelta(minutes=30)) == 90


def test_a_late_delivery_a_longer_wait_could_catch_turns_the_timeout_into_a_success() -> None:
    settings = ReachabilitySettings(catchable_within=timedelta(minutes=30))
    person = RecipientReachability().observe(Channel.VK, DeliveryOutcome.TIMED_OUT, T0, settings)
    channel = ChannelStats().observe(DeliveryOutcome.TIMED_OUT, None, settings)

    twelve_minutes = timedelta(minutes=12)
    person = person.observe(
        Channel.VK, DeliveryOutcome.DELIVERED, T0, settings, after_timeout=True, latency=twelve_minutes
    )
    channel = channel.observe(DeliveryOutcome.DELIVERED, twelve_minutes, settings, after_timeout=True)

    vk = person.get(Channel.VK)
    # The wait was too short, the channel was right: one success, no timeout, nothing late.
    assert (vk.successes, vk.failures, vk.timeouts, vk.late) == (1, 0, 0, 0)
    assert (channel.successes, channel.failures, channel.timeouts, channel.late) == (1, 0, 0, 0)
    assert channel.latency.percentile(1.0) == timedelta(minutes=15)  # the (10, 15] min bucket


def test_a_persons_own_evidence_fades_with_time_toward_the_channel() -> None:
    settings = ReachabilitySettings(prior_strength_cap=3, evidence_half_life=timedelta(days=30))
    traffic = TrafficStats({Channel.VK: channel_with(598, 398)})  # channel rate 599/998
    person = RecipientReachability()
    for day in range(4):
        person = person.observe(Channel.VK, DeliveryOutcome.FAILED, T0 + timedelta(days=day), settings)
    last = T0 + timedelta(days=3)
    rate = 599 / 998
    # Right after the last outcome the four failures count in full: (3 * rate) / (3 + 4).
    assert person.delivery_probability(Channel.VK, traffic, settings, now=last) == pytest.approx(3 * rate / 7)
    # Sixty days (two half-lives) later they count as one: (3 * rate) / (3 + 1).
    later = last + timedelta(days=60)
    assert person.delivery_probability(Channel.VK, traffic, settings, now=later) == pytest.approx(
        3 * rate / 4
    )
    # Without a time, nothing is aged (the stored counts are unchanged either way).
    assert person.delivery_probability(Channel.VK, traffic, settings) == pytest.approx(3 * rate / 7)
    assert person.get(Channel.VK).failures == 4
