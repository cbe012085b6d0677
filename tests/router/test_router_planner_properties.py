"""Properties every plan keeps, whatever the person's history, prices and limits."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from router.domain import AckPolicy, Channel, DeliveryOutcome, Money
from router.planner import Planner, SkipReason
from router.price_book import PriceBook
from router.reachability import RecipientReachability
from tests.router.test_router_planner import MESSAGES, NOW, ONE_UNIT, TRAFFIC, history, request

channel_sets = st.frozensets(st.sampled_from(list(Channel)), min_size=1)
histories = st.tuples(*[st.integers(min_value=0, max_value=20)] * 6)
policies = st.sampled_from(list(AckPolicy))


def _with_facts(recipient: RecipientReachability, channels: frozenset[Channel]) -> RecipientReachability:
    for channel in channels:
        # A day old, well inside the default 30-day life of a fact: still live.
        recipient = recipient.observe(channel, DeliveryOutcome.UNREACHABLE, NOW - timedelta(days=1))
    return recipient


@settings(max_examples=200, deadline=None)
@given(allowed=channel_sets, rates=histories, policy=policies)
def test_a_plan_never_includes_a_disallowed_channel(
    allowed: frozenset[Channel], rates: tuple[int, ...], policy: AckPolicy
) -> None:
    recipient = history(vk=rates[0:2], viber=rates[2:4], sms=rates[4:6])
    plan = Planner(PriceBook.default()).plan(request(channels=allowed, ack_policy=policy), recipient, TRAFFIC)
    assert {step.channel for step in plan.steps} <= allowed


@settings(max_examples=200, deadline=None)
@given(facts=st.frozensets(st.sampled_from(list(MESSAGES))), rates=histories, policy=policies)
def test_a_plan_never_uses_a_channel_with_a_live_unreachable_fact(
    facts: frozenset[Channel], rates: tuple[int, ...], policy: AckPolicy
) -> None:
    recipient = _with_facts(history(vk=rates[0:2], viber=rates[2:4], sms=rates[4:6]), facts)
    plan = Planner(PriceBook.default()).plan(request(ack_policy=policy), recipient, TRAFFIC)
    assert not {step.channel for step in plan.steps} & facts
    reasons = {s.channel: s.reason for s in plan.skipped}
    assert all(reasons[channel] is SkipReason.KNOWN_UNREACHABLE for channel in facts)


@settings(max_examples=200, deadline=None)
@given(
    cap_kopecks=st.integers(min_value=0, max_value=2_000),
    sms_units=st.integers(min_value=1, max_value=6),
    allowed=st.frozensets(st.sampled_from(list(MESSAGES)), min_size=1),
    rates=histories,
)
def test_a_plan_never_exceeds_max_cost_when_a_cheaper_plan_exists(
    cap_kopecks: int, sms_units: int, allowed: frozenset[Channel], rates: tuple[int, ...]
) -> None:
    book = PriceBook.default()
    cap = Money(Decimal(cap_kopecks) / 100, "RUB")
    units = {**ONE_UNIT, Channel.SMS: sms_units}
    recipient = history(vk=rates[0:2], viber=rates[2:4], sms=rates[4:6])
    plan = Planner(book).plan(request(channels=allowed, units=units, max_cost=cap), recipient, TRAFFIC)

    if plan.steps:
        assert plan.expected_cost <= cap
    # Any allowed channel that fits the cap alone is a cheaper plan: one must then be made.
    affordable = [c for c in allowed if book.for_channel(c)[0].cost(units[c]) <= cap]
    if affordable:
        assert plan.steps, f"{affordable} fit within {cap} but nothing was planned"


@settings(max_examples=200, deadline=None)
@given(allowed=channel_sets, rates=histories, policy=policies)
def test_the_route_callers_see_is_the_same_read_from_the_plan_or_from_what_was_stored(
    allowed: frozenset[Channel], rates: tuple[int, ...], policy: AckPolicy
) -> None:
    from gateway.core.model import RouteView

    recipient = history(vk=rates[0:2], viber=rates[2:4], sms=rates[4:6])
    plan = Planner(PriceBook.default()).plan(request(channels=allowed, ack_policy=policy), recipient, TRAFFIC)
    stored = json.loads(json.dumps(plan.to_dict()))
    assert RouteView.from_plan(plan) == RouteView.from_json(stored)
