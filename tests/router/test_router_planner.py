"""The planner: channel order by expected cost, waits from latency, skips with reasons."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.domain import AckPolicy, BillingMoment, Channel, DeliveryOutcome, Money
from router.planner import Plan, Planner, PlannerSettings, PlanRequest, SkipReason
from router.price_book import PriceBook
from router.reachability import (
    ChannelStats,
    LatencyHistogram,
    ReachabilitySettings,
    RecipientReachability,
    TrafficStats,
)

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
MESSAGES = (Channel.VK, Channel.VIBER, Channel.SMS)
ALL = frozenset(Channel)
ONE_UNIT = {c: 1 for c in Channel}


def rub(amount: str) -> Money:
    return Money(Decimal(amount), "RUB")


def latency(seconds: float, samples: int = 100) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for _ in range(samples):
        histogram = histogram.record(timedelta(seconds=seconds))
    return histogram


def stats(rate: float, seconds: float = 20, n: int = 1000) -> ChannelStats:
    successes = round(rate * n)
    return ChannelStats(successes=successes, failures=n - successes, latency=latency(seconds))


# Typical channel-wide traffic: messengers reach some people, SMS nearly everyone.
TRAFFIC = TrafficStats(
    {
        Channel.VK: stats(0.60, seconds=20),
        Channel.VIBER: stats(0.50, seconds=40),
        Channel.SMS: stats(0.97, seconds=10),
        Channel.VOICE: stats(0.70, seconds=50),
    }
)


def request(
    *,
    channels: Iterable[Channel] = ALL,
    units: Mapping[Channel, int] = ONE_UNIT,
    deadline: timedelta = timedelta(hours=24),
    ack_policy: AckPolicy = AckPolicy.DELIVERED,
    ack_timeout: timedelta | None = None,
    max_cost: Money | None = None,
    unavailable: Iterable[str] = (),
    capped: Iterable[str] = (),
) -> PlanRequest:
    return PlanRequest(
        allowed_channels=frozenset(channels),
        billed_units=units,
        now=NOW,
        deadline=NOW + deadline,
        ack_policy=ack_policy,
        ack_timeout=ack_timeout,
        max_cost=max_cost,
        unavailable_providers=frozenset(unavailable),
        capped_providers=frozenset(capped),
    )


def order(plan: Plan) -> list[Channel]:
    return [step.channel for step in plan.steps]


def skipped(plan: Plan) -> dict[Channel, SkipReason]:
    return {s.channel: s.reason for s in plan.skipped}


def on_submit_book(**overrides: str) -> PriceBook:
    """Default prices, but messengers billed on submit (as some gateways do)."""
    data = PriceBook.default().to_mapping()
    for channel in ("vk", "viber"):
        entry = data[channel]
        assert isinstance(entry, dict)
        entry[channel]["bills"] = "on_submit"
    for channel, price in overrides.items():
        entry = data[channel]
        assert isinstance(entry, dict)
        entry[channel]["price"] = price
    return PriceBook.from_mapping(data)


def history(**outcomes: tuple[int, int]) -> RecipientReachability:
    recipient = RecipientReachability()
    at = NOW - timedelta(days=30)
    for name, (good, bad) in outcomes.items():
        for _ in range(good):
            recipient = recipient.observe(Channel(name), DeliveryOutcome.DELIVERED, at)
        for _ in range(bad):
            recipient = recipient.observe(Channel(name), DeliveryOutcome.UNDELIVERABLE, at)
    return recipient


planner = Planner(PriceBook.default())


def test_default_order_is_vk_viber_sms_with_expected_costs() -> None:
    plan = planner.plan(request(), RecipientReachability(), TRAFFIC)

    assert order(plan) == [Channel.VK, Channel.VIBER, Channel.SMS]
    assert skipped(plan) == {Channel.VOICE: SkipReason.VOICE_ONLY_FOR_READ}
    p_vk = 601 / 1002
    p_viber = 501 / 1002
    p_sms = 971 / 1002
    vk, viber, sms = plan.steps
    assert vk.delivery_probability == pytest.approx(p_vk)
    assert viber.reach_probability == pytest.approx(1 - p_vk)
    assert sms.reach_probability == pytest.approx((1 - p_vk) * (1 - p_viber))
    # Messengers are billed only when delivered; SMS whenever it is sent.
    assert vk.expected_cost.amount == pytest.approx(
        Decimal("0.35") * Decimal(str(p_vk)), abs=Decimal("0.0001")
    )
    expected_viber = Decimal("1.20") * Decimal(str((1 - p_vk) * p_viber))
    assert viber.expected_cost.amount == pytest.approx(expected_viber, abs=Decimal("0.0001"))
    expected_sms = Decimal("4.50") * Decimal(str((1 - p_vk) * (1 - p_viber)))
    assert sms.expected_cost.amount == pytest.approx(expected_sms, abs=Decimal("0.0001"))
    assert plan.expected_cost == vk.expected_cost + viber.expected_cost + sms.expected_cost
    assert isinstance(plan.expected_cost.amount, Decimal)
    assert plan.expected_cost.amount == plan.expected_cost.amount.quantize(Decimal("0.0001"))
    assert plan.reach_probability == pytest.approx(1 - (1 - p_vk) * (1 - p_viber) * (1 - p_sms))


def test_recipient_known_absent_from_vk_starts_at_viber() -> None:
    absent = RecipientReachability().observe(
        Channel.VK, DeliveryOutcome.UNREACHABLE, NOW - timedelta(days=2), reason="vk 901: cannot message"
    )

    plan = planner.plan(request(), absent, TRAFFIC)

    assert order(plan) == [Channel.VIBER, Channel.SMS]
    vk = next(s for s in plan.skipped if s.channel is Channel.VK)
    assert vk.reason is SkipReason.KNOWN_UNREACHABLE
    assert vk.until == NOW + timedelta(days=28)
    assert "vk 901" in vk.detail


def test_an_expired_fact_lets_vk_back_in() -> None:
    long_ago = RecipientReachability().observe(
        Channel.VK, DeliveryOutcome.UNREACHABLE, NOW - timedelta(days=31)
    )
    assert order(planner.plan(request(), long_ago, TRAFFIC))[0] is Channel.VK


def test_short_deadline_goes_straight_to_sms() -> None:
    slow_messengers = TrafficStats(
        {
            Channel.VK: stats(0.60, seconds=300),
            Channel.VIBER: stats(0.50, seconds=300),
            Channel.SMS: stats(0.97, seconds=300),
        }
    )

    plan = planner.plan(request(deadline=timedelta(minutes=3)), RecipientReachability(), slow_messengers)

    assert order(plan) == [Channel.SMS]
    assert skipped(plan)[Channel.VK] is SkipReason.NO_TIME
    assert skipped(plan)[Channel.VIBER] is SkipReason.NO_TIME


def test_only_waits_that_fit_before_the_deadline_are_planned() -> None:
    # Messenger waits 5 min, SMS 30 s, deadline 8 min: VK -> Viber -> SMS would wait
    # past the deadline on Viber, so Viber goes last, where its wait need not fit.
    traffic = TrafficStats(
        {
            Channel.VK: stats(0.60, seconds=300),
            Channel.VIBER: stats(0.50, seconds=300),
            Channel.SMS: stats(0.97, seconds=30),
        }
    )

    plan = planner.plan(request(deadline=timedelta(minutes=8)), RecipientReachability(), traffic)

    assert order(plan) == [Channel.VK, Channel.SMS, Channel.VIBER]
    starts = [NOW + step.starts_after for step in plan.steps]
    for step, start in zip(plan.steps[:-1], starts, strict=False):
        assert start + step.wait <= plan.deadline
    assert starts[-1] < plan.deadline


def test_waits_come_from_observed_latency_clamped() -> None:
    s = PlannerSettings(min_wait=timedelta(seconds=30), max_wait=timedelta(minutes=10))
    traffic = TrafficStats(
        {
            Channel.VK: stats(0.6, seconds=100),  # bucket (90, 120]
            Channel.VIBER: stats(0.5, seconds=3),  # below min_wait
            Channel.SMS: stats(0.97, seconds=5000),  # above max_wait
        }
    )
    plan = Planner(PriceBook.default(), s).plan(request(), RecipientReachability(), traffic)
    waits = {step.channel: step.wait for step in plan.steps}

    assert waits == {
        Channel.VK: timedelta(seconds=120),
        Channel.VIBER: timedelta(seconds=30),
        Channel.SMS: timedelta(minutes=10),
    }
    assert "p95" in plan.steps[0].wait_basis


def test_default_wait_without_enough_latency_data() -> None:
    s = PlannerSettings(default_wait=timedelta(minutes=4), min_latency_samples=20)
    thin = TrafficStats({Channel.VK: ChannelStats(latency=latency(100, samples=19))})
    step = Planner(PriceBook.default(), s).plan(request(channels=[Channel.VK]), None, thin).steps[0]
    assert step.wait == timedelta(minutes=4)
    assert "default" in step.wait_basis


def test_read_policy_appends_the_voice_robot_last() -> None:
    s = PlannerSettings(voice_retries=2, voice_retry_spacing=timedelta(minutes=10))
    plan = Planner(PriceBook.default(), s).plan(
        request(ack_policy=AckPolicy.READ, ack_timeout=timedelta(minutes=20)),
        RecipientReachability(),
        TRAFFIC,
    )

    assert order(plan) == [Channel.VK, Channel.VIBER, Channel.SMS, Channel.VOICE]
    assert all(step.ack_wait == timedelta(minutes=20) for step in plan.steps[:3])
    voice = plan.steps[-1]
    assert voice.ack_wait is None
    assert voice.attempts == 3
    assert voice.retry_spacing == timedelta(minutes=10)
    p_call = 701 / 1002
    assert voice.delivery_probability == pytest.approx(1 - (1 - p_call) ** 3)
    assert plan.skipped == ()


def test_voice_retries_are_limited_by_the_deadline() -> None:
    s = PlannerSettings(voice_retries=5, voice_retry_spacing=timedelta(minutes=10))
    plan = Planner(PriceBook.default(), s).plan(
        request(channels=[Channel.VOICE], ack_policy=AckPolicy.READ, deadline=timedelta(minutes=25)),
        None,
        TRAFFIC,
    )
    assert [(step.channel, step.attempts) for step in plan.steps] == [(Channel.VOICE, 3)]


def test_voice_is_not_a_plain_message_channel_under_delivered() -> None:
    plan = planner.plan(request(channels=[Channel.SMS, Channel.VOICE]), None, TRAFFIC)
    assert order(plan) == [Channel.SMS]
    assert skipped(plan)[Channel.VOICE] is SkipReason.VOICE_ONLY_FOR_READ

    only_voice = planner.plan(request(channels=[Channel.VOICE]), None, TRAFFIC)
    assert order(only_voice) == [Channel.VOICE]


def test_max_cost_skips_what_the_worst_case_cannot_afford() -> None:
    plan = planner.plan(request(max_cost=rub("5.00")), RecipientReachability(), TRAFFIC)

    # VK + Viber + SMS could all be billed (6.05); VK + SMS (4.85) fits and reaches more than VK + Viber.
    assert order(plan) == [Channel.VK, Channel.SMS]
    assert skipped(plan)[Channel.VIBER] is SkipReason.OVER_MAX_COST


def test_max_cost_below_every_price_leaves_nothing() -> None:
    plan = planner.plan(request(max_cost=rub("0.30")), RecipientReachability(), TRAFFIC)
    assert plan.steps == ()
    assert {c: r for c, r in skipped(plan).items() if c in MESSAGES} == {
        c: SkipReason.OVER_MAX_COST for c in MESSAGES
    }
    assert plan.reach_probability == 0
    assert plan.expected_cost == rub("0")


def test_open_breakers_are_not_the_persons_business_and_change_nothing() -> None:
    # Provider health is not a property of the person: the plan is the healthy one, and the
    # cascade waits the outage out. Even with every breaker open, nothing is skipped.
    healthy = planner.plan(request(), RecipientReachability(), TRAFFIC)
    for down in (["viber"], ["vk", "viber", "sms", "voice"]):
        plan = planner.plan(request(unavailable=down), RecipientReachability(), TRAFFIC)
        assert plan.steps == healthy.steps
        assert order(plan) == [Channel.VK, Channel.VIBER, Channel.SMS]
        assert not any(s.reason is SkipReason.PROVIDER_UNAVAILABLE for s in plan.skipped)
    only_vk = planner.plan(request(channels=[Channel.VK], unavailable=["vk"]), None, TRAFFIC)
    assert [(s.channel, s.provider) for s in only_vk.steps] == [(Channel.VK, "vk")]


def test_a_person_known_absent_from_the_only_allowed_channel_still_gets_no_plan() -> None:
    absent = RecipientReachability().observe(
        Channel.VK, DeliveryOutcome.UNREACHABLE, NOW, reason="not a VK user"
    )
    plan = planner.plan(request(channels=[Channel.VK], unavailable=["vk"]), absent, TRAFFIC)
    assert plan.steps == ()
    assert skipped(plan)[Channel.VK] is SkipReason.KNOWN_UNREACHABLE
    assert plan.skipped[0].detail == "not a VK user"


def test_a_providers_daily_limit_for_the_person_skips_the_channel() -> None:
    plan = planner.plan(request(capped=["viber"]), RecipientReachability(), TRAFFIC)
    assert order(plan) == [Channel.VK, Channel.SMS]
    assert skipped(plan)[Channel.VIBER] is SkipReason.PROVIDER_UNAVAILABLE


def test_patience_with_provider_faults_is_what_the_next_step_costs_more_in_time() -> None:
    # VK 0.35 -> Viber 1.20: 0.85 RUB at 2.00 RUB an hour is 25.5 min of waiting; Viber 1.20
    # -> SMS 4.50 is 99 min; the last step and a zero value of time take the configured cap.
    long = Planner(PriceBook.default(), PlannerSettings(provider_patience=timedelta(hours=2)))
    plan = long.plan(request(), RecipientReachability(), TRAFFIC)
    assert order(plan) == [Channel.VK, Channel.VIBER, Channel.SMS]
    assert [s.patience for s in plan.steps] == [
        timedelta(minutes=25, seconds=30),
        timedelta(minutes=99),
        timedelta(hours=2),
    ]
    assert [s.patience for s in planner.plan(request(), None, TRAFFIC).steps] == [timedelta(minutes=10)] * 3
    free_time = Planner(
        PriceBook.default(),
        PlannerSettings(value_of_an_hour=Decimal(0), provider_patience=timedelta(minutes=3)),
    )
    assert {s.patience for s in free_time.plan(request(), None, TRAFFIC).steps} == {timedelta(minutes=3)}


def test_open_breaker_falls_over_to_the_next_provider_of_the_channel() -> None:
    book = PriceBook.from_mapping(
        {
            "sms": {
                "smsc": {"unit": "segment", "price": "4.50"},
                "backup": {"unit": "segment", "price": "5.10"},
            }
        }
    )
    plan = Planner(book).plan(request(channels=[Channel.SMS], unavailable=["smsc"]), None, TRAFFIC)
    assert [(s.provider, s.price) for s in plan.steps] == [("backup", rub("5.10"))]
    # Both down: the preferred provider, waited out, rather than no SMS at all.
    both = Planner(book).plan(request(channels=[Channel.SMS], unavailable=["smsc", "backup"]), None, TRAFFIC)
    assert [(s.provider, s.price) for s in both.steps] == [("smsc", rub("4.50"))]


def test_many_sms_segments_make_messengers_relatively_more_attractive() -> None:
    # VK billed on submit and rarely delivered to this person: with a one-segment SMS it is
    # cheaper to go to SMS first; a long Cyrillic text of 6 UCS-2 segments flips that.
    book = on_submit_book()
    traffic = TrafficStats({Channel.VK: stats(0.30), Channel.SMS: stats(0.97)})
    poor_vk = history(vk=(0, 40), sms=(20, 0))
    assert poor_vk.delivery_probability(Channel.VK, traffic) < 0.07
    short = Planner(book).plan(request(channels=[Channel.VK, Channel.SMS]), poor_vk, traffic)
    long = Planner(book).plan(
        request(channels=[Channel.VK, Channel.SMS], units={Channel.VK: 1, Channel.SMS: 6}), poor_vk, traffic
    )

    assert order(short) == [Channel.SMS, Channel.VK]
    assert order(long) == [Channel.VK, Channel.SMS]
    assert long.steps[1].price == rub("27.00")


def test_strong_sms_history_starts_at_sms_when_that_is_cheaper_in_expectation() -> None:
    traffic = TrafficStats({**TRAFFIC.channels, Channel.VK: stats(0.30)})
    recipient = history(vk=(0, 40), viber=(0, 40), sms=(30, 0))

    submit_billed = Planner(on_submit_book()).plan(request(), recipient, traffic)
    assert order(submit_billed) == [Channel.SMS, Channel.VK, Channel.VIBER]

    # When messengers bill only delivered messages a failed try costs nothing, so the
    # same person still starts at VK: it can only make the plan cheaper.
    delivery_billed = planner.plan(request(), recipient, traffic)
    assert order(delivery_billed)[0] is Channel.VK


def test_deadline_already_passed_plans_nothing() -> None:
    plan = planner.plan(request(deadline=timedelta(0)), None, TRAFFIC)
    assert plan.steps == ()
    assert {skipped(plan)[c] for c in MESSAGES} == {SkipReason.NO_TIME}


def test_not_allowed_channels_are_explained() -> None:
    plan = planner.plan(request(channels=[Channel.SMS]), None, TRAFFIC)
    assert skipped(plan) == {
        Channel.VK: SkipReason.NOT_ALLOWED,
        Channel.VIBER: SkipReason.NOT_ALLOWED,
        Channel.VOICE: SkipReason.NOT_ALLOWED,
    }


def test_missing_billed_units_is_an_error() -> None:
    with pytest.raises(ValueError, match="billed_units has no entry for channel viber"):
        planner.plan(request(units={Channel.VK: 1}), None, TRAFFIC)


def test_max_cost_in_another_currency_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_cost is in EUR"):
        planner.plan(request(max_cost=Money(Decimal(1), "EUR")), None, TRAFFIC)


def test_plan_is_explainable_and_round_trips_through_json() -> None:
    plan = planner.plan(request(capped=["viber"]), None, TRAFFIC)

    lines = plan.explain()
    assert lines[0].startswith("step 1: vk via vk")
    assert "expected cost" in lines[0]
    assert any(line.startswith("skipped viber: provider_unavailable") for line in lines)
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def _expected_cost(
    sequence: tuple[Channel, ...], p: Mapping[Channel, float], book: PriceBook, units: Mapping[Channel, int]
) -> float:
    total, reach = 0.0, 1.0
    for channel in sequence:
        price = book.for_channel(channel)[0]
        billed = 1.0 if price.bills is BillingMoment.ON_SUBMIT else p[channel]
        total += reach * billed * float(price.cost(units[channel]).amount)
        reach *= 1 - p[channel]
    return total


@settings(max_examples=150, deadline=None)
@given(
    rates=st.tuples(*[st.integers(min_value=0, max_value=50)] * 6),
    sms_units=st.integers(min_value=1, max_value=10),
    submit_billing=st.booleans(),
)
def test_chosen_order_is_the_cheapest_permutation(
    rates: tuple[int, ...], sms_units: int, submit_billing: bool
) -> None:
    recipient = history(vk=rates[0:2], viber=rates[2:4], sms=rates[4:6])
    book = on_submit_book() if submit_billing else PriceBook.default()
    units = {**ONE_UNIT, Channel.SMS: sms_units}
    plan = Planner(book).plan(request(units=units), recipient, TRAFFIC)

    # What the planner sees at NOW: the history, 30 days old, aged by one half-life.
    p = {c: recipient.delivery_probability(c, TRAFFIC, now=NOW) for c in MESSAGES}
    best = min(_expected_cost(seq, p, book, units) for seq in itertools.permutations(MESSAGES))
    assert sorted(order(plan)) == sorted(MESSAGES)
    assert _expected_cost(tuple(order(plan)), p, book, units) <= best + 1e-3
    assert float(plan.expected_cost.amount) == pytest.approx(best, abs=1e-3)


def test_a_late_delivery_is_billed_so_it_counts_in_the_expected_cost() -> None:
    # VK: no channel traffic (prior Beta(1, 1)); this person timed out once and that message
    # was delivered later (billed): p = (1 + 1) / (2 + 2) = 0.5, late share 1/1 = 1.
    person = RecipientReachability().observe(Channel.VK, DeliveryOutcome.DELIVERED, NOW)
    person = person.observe(Channel.VK, DeliveryOutcome.TIMED_OUT, NOW)
    person = person.observe(Channel.VK, DeliveryOutcome.DELIVERED, NOW, after_timeout=True)
    traffic = TrafficStats({Channel.SMS: TRAFFIC.get(Channel.SMS)})

    plan = Planner(PriceBook.default()).plan(request(channels=[Channel.VK, Channel.SMS]), person, traffic)

    assert [s.channel for s in plan.steps] == [Channel.VK, Channel.SMS]
    # VK: 0.35 * (0.5 on time + 0.5 * 1.0 late) = 0.35, not 0.175; SMS: 4.50 * 0.5 = 2.25.
    assert [s.expected_cost for s in plan.steps] == [rub("0.3500"), rub("2.2500")]
    assert plan.expected_cost == rub("2.6000")


def test_time_spent_waiting_in_vain_moves_a_channel_the_person_never_answers_on_later() -> None:
    twenty_minutes = 1200
    traffic = TrafficStats(
        {
            Channel.VK: ChannelStats(latency=latency(twenty_minutes)),
            Channel.VIBER: ChannelStats(successes=500, failures=500, latency=latency(twenty_minutes)),
        }
    )
    # Three VK waits ran out for this person, and nothing came later: p = 1 / (2 + 3) = 0.2.
    dormant = RecipientReachability()
    for hour in range(3):
        dormant = dormant.observe(Channel.VK, DeliveryOutcome.TIMED_OUT, NOW - timedelta(hours=hour))
    both = request(channels=[Channel.VK, Channel.VIBER])

    by_cost = Planner(PriceBook.default(), PlannerSettings(value_of_an_hour=Decimal(0))).plan(
        both, dormant, traffic
    )
    # Cost alone: VK first, 0.35 * 0.2 + 0.8 * 1.20 * 0.5 = 0.55 < 1.20 * 0.5 + 0.5 * 0.35 * 0.2 = 0.635.
    assert [s.channel for s in by_cost.steps] == [Channel.VK, Channel.VIBER]
    assert by_cost.expected_cost == rub("0.5500")

    # At 2.00 an hour, VK first also waits 0.8 * 20 min in vain (0.5333): 1.0833 > 0.635.
    timely = Planner(PriceBook.default(), PlannerSettings(value_of_an_hour=Decimal("2.00"))).plan(
        both, dormant, traffic
    )
    assert [s.channel for s in timely.steps] == [Channel.VIBER, Channel.VK]
    assert timely.expected_cost == rub("0.6350")

    # A stranger on VK has no timeouts to learn from: VK first either way.
    stranger = Planner(PriceBook.default()).plan(both, RecipientReachability(), traffic)
    assert [s.channel for s in stranger.steps] == [Channel.VK, Channel.VIBER]


def test_reports_later_than_max_wait_do_not_size_the_wait() -> None:
    s = PlannerSettings(max_wait=timedelta(minutes=30))
    histogram = latency(100, samples=90)
    for _ in range(10):
        histogram = histogram.record(timedelta(hours=5))
    traffic = TrafficStats({Channel.VK: ChannelStats(successes=100, latency=histogram)})

    wait, basis = Planner(PriceBook.default(), s).step_wait(Channel.VK, traffic)

    # Over all 100 the p95 is hours; over the 90 a wait could catch it is the (90, 120] bucket.
    assert wait == timedelta(seconds=120)
    assert "10 later ones count as late deliveries" in basis


def test_old_timeouts_fade_so_a_channel_dropped_for_someone_is_tried_first_again() -> None:
    twenty_minutes = 1200
    traffic = TrafficStats(
        {
            Channel.VK: ChannelStats(latency=latency(twenty_minutes)),
            Channel.VIBER: ChannelStats(successes=500, failures=500, latency=latency(twenty_minutes)),
        }
    )
    # VK reaches most people in time: 5% of its outcomes are waits that ran out.
    traffic = TrafficStats(
        {**traffic.channels, Channel.VK: ChannelStats(900, 100, latency(twenty_minutes), timeouts=50)}
    )
    settings = PlannerSettings(reachability=ReachabilitySettings(evidence_half_life=timedelta(days=30)))
    both = request(channels=[Channel.VK, Channel.VIBER])

    def dormant_since(age: timedelta) -> RecipientReachability:
        person = RecipientReachability()
        for hour in range(3):
            at = NOW - age - timedelta(hours=hour)
            person = person.observe(Channel.VK, DeliveryOutcome.TIMED_OUT, at, settings.reachability)
        return person

    recent = Planner(PriceBook.default(), settings).plan(both, dormant_since(timedelta(days=1)), traffic)
    assert [s.channel for s in recent.steps] == [Channel.VIBER, Channel.VK]
    # Half a year on, three timeouts weigh as a few hundredths of one: VK is worth a try again.
    stale = Planner(PriceBook.default(), settings).plan(both, dormant_since(timedelta(days=180)), traffic)
    assert [s.channel for s in stale.steps] == [Channel.VK, Channel.VIBER]
