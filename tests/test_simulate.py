"""``kaskad simulate`` end to end on a small population: behaviour, not timing.

Real PostgreSQL (a database per strategy on the test server), Redis, gRPC and HTTP, the
provider simulator in virtual time. Nothing here asserts a speed or a saving target.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from gateway.core.config import Settings
from gateway.runtime.cli import parse_args
from lab.commands import simulate_parser
from lab.simulate import (
    COLUMNS,
    SimulationReport,
    SimulationSettings,
    Strategy,
    StrategyResult,
    plan_sends,
    settings_from_args,
    simulate,
    to_csv,
    to_json,
    to_table,
)
from lab.simulator.population import Population
from lab.simulator.settings import PopulationSettings

START = datetime(2030, 1, 1, tzinfo=UTC)
SMALL = SimulationSettings(recipients=12, notifications_per_recipient=3, seed=5, span=timedelta(hours=2))


@pytest.fixture
async def report(settings: Settings, server_url: str, redis_url: str) -> SimulationReport:
    return await simulate(SMALL, settings, server_url=server_url, redis_url=redis_url)


async def test_one_row_per_strategy_and_the_csv_parses(report: SimulationReport) -> None:
    rows = list(csv.DictReader(io.StringIO(to_csv(report))))
    assert [r["strategy"] for r in rows] == [s.value for s in Strategy]
    assert all(set(r) == set(COLUMNS) for r in rows)
    sent = SMALL.recipients * SMALL.notifications_per_recipient
    assert all(int(r["notifications"]) == sent for r in rows)
    assert [s["strategy"] for s in json.loads(to_json(report))["strategies"]] == [s.value for s in Strategy]
    table = to_table(report)
    assert all(label in table for label in ("SMS only", "fixed VK>Viber>SMS", "Kaskad router", "oracle"))
    assert "+7900" not in table + to_csv(report) + to_json(report)  # no phone numbers in any output


async def test_strategies_behave_as_their_names_say(report: SimulationReport) -> None:
    sms_only = report.result(Strategy.SMS_ONLY)
    oracle = report.result(Strategy.ORACLE)
    fixed = report.result(Strategy.FIXED_CASCADE)
    router = report.result(Strategy.ROUTER)
    assert sms_only and oracle and fixed and router
    # SMS only sends and delivers by SMS alone.
    assert set(sms_only.attempts_by) == {"sms"}
    assert set(sms_only.delivered_by) <= {"sms"}
    # The oracle tries once, on a channel that reaches the person: nothing is paid for in vain.
    assert oracle.paid_failed_attempts == 0
    assert oracle.attempts == oracle.delivered
    # The fixed cascade always starts with VK.
    assert fixed.attempts_by["vk"] == fixed.notifications
    # Everyone the population can reach at all is reached by the cascades and the oracle.
    population = Population(SMALL.seed, SMALL.population)
    phones = {send.phone for send in plan_sends(SMALL, START)}
    reachable = sum(
        SMALL.notifications_per_recipient
        for p in phones
        if any(population.reaches(channel, p) for channel in ("vk", "viber", "sms"))
    )
    assert oracle.delivered == fixed.delivered == router.delivered == reachable


async def test_costs_are_the_ledgers_and_match_what_providers_billed(report: SimulationReport) -> None:
    for result in report.results:
        # total_cost is read from the cost ledger; the simulated providers kept their own books.
        assert result.total_cost == result.provider_billed, result.strategy
        assert result.total_cost > 0
        assert len(result.times_to_delivery) == result.delivered
        assert all(t >= 0 for t in result.times_to_delivery)
    sms_only = report.result(Strategy.SMS_ONLY)
    assert sms_only is not None
    # Every SMS attempt is billed at submit, delivered or not: one 4.50 segment each.
    assert sms_only.total_cost == Decimal("4.50") * sms_only.attempts


def test_the_command_line_builds_settings() -> None:
    argv = "simulate --recipients 7 --notifications-per-recipient 2 --seed 3 --fixed-wait 60"
    line = parse_args([*argv.split(), "--strategy", "router", "--strategy", "oracle", "--format", "csv"])
    assert line.command == "simulate"
    args = simulate_parser().parse_args(line.lab_args)
    settings = settings_from_args(args)
    assert settings.recipients == 7 and settings.notifications_per_recipient == 2 and settings.seed == 3
    assert settings.fixed_wait == timedelta(minutes=1)
    assert settings.strategies == (Strategy.ROUTER, Strategy.ORACLE)
    assert args.format == "csv"


def test_sends_are_seeded_and_spread_over_the_span() -> None:
    start = START
    first, again = plan_sends(SMALL, start), plan_sends(SMALL, start)
    assert first == again
    assert len(first) == SMALL.recipients * SMALL.notifications_per_recipient
    assert all(start <= s.at < start + SMALL.span for s in first)
    assert [s.at for s in first] == sorted(s.at for s in first)


# Everyone has VK and gets Viber messages at once; how VK reaches them varies by test.
ON_VK_AND_VIBER = PopulationSettings(
    vk_reachable=1.0, vk_slow=0.0, vk_dormant=0.0, viber_reachable=1.0, viber_slow=0.0, viber_dormant=0.0
)


async def fixed_and_router(
    simulation: SimulationSettings, settings: Settings, server_url: str, redis_url: str
) -> tuple[StrategyResult, StrategyResult]:
    simulation = replace(simulation, strategies=(Strategy.FIXED_CASCADE, Strategy.ROUTER))
    report = await simulate(simulation, settings, server_url=server_url, redis_url=redis_url)
    fixed, router = report.result(Strategy.FIXED_CASCADE), report.result(Strategy.ROUTER)
    assert fixed and router
    return fixed, router


async def test_the_router_learns_who_never_answers_on_vk(
    settings: Settings, server_url: str, redis_url: str
) -> None:
    # VK accepts every message and never delivers one (nobody has been active lately). The
    # fixed cascade waits out VK every time; the router learns.
    dormant_on_vk = SimulationSettings(
        recipients=4,
        notifications_per_recipient=6,
        seed=11,
        span=timedelta(hours=12),
        population=replace(ON_VK_AND_VIBER, vk_dormant=1.0),
    )
    fixed, router = await fixed_and_router(dormant_on_vk, settings, server_url, redis_url)
    sent = dormant_on_vk.recipients * dormant_on_vk.notifications_per_recipient
    assert fixed.delivered_by == router.delivered_by == {"viber": sent}
    assert fixed.attempts_by["vk"] == sent  # a VK wait in front of every delivery
    # The router tried VK for each person's first notifications only, then went to Viber first.
    assert router.attempts_by["vk"] <= sent // 2
    assert min(fixed.times_to_delivery) >= dormant_on_vk.fixed_wait.total_seconds()
    assert sorted(router.times_to_delivery)[sent // 2] < 60  # most reached in seconds
    # Nothing delivered, nothing billed on VK: the same money, sooner.
    assert router.total_cost == fixed.total_cost == Decimal("1.20") * sent


async def test_with_messenger_ttls_nobody_pays_twice_for_a_slow_vk_user(
    settings: Settings, server_url: str, redis_url: str
) -> None:
    # Everyone reads VK, but minutes late (1 to 20). VK is sent with a TTL of the step's wait,
    # so a message not delivered by then expires unbilled before Viber is sent: a slow VK user
    # gets Viber instead, and is never billed on both (which the fixed cascade used to be).
    slow_on_vk = SimulationSettings(
        recipients=15,
        notifications_per_recipient=4,
        seed=12,
        span=timedelta(hours=12),
        population=replace(ON_VK_AND_VIBER, vk_slow=1.0),
    )
    fixed, router = await fixed_and_router(slow_on_vk, settings, server_url, redis_url)
    sent = slow_on_vk.recipients * slow_on_vk.notifications_per_recipient
    assert fixed.attempts_by["vk"] == sent  # the fixed cascade starts everyone on VK
    for result in (fixed, router):
        assert result.delivered == sent
        # Viber goes only to those whose VK message expired (or, for the router, who were sent
        # Viber first), and every delivered notification is billed once, on the channel that
        # reached the person, by Kaskad's ledger and the providers alike.
        assert result.attempts_by.get("viber", 0) == result.delivered_by.get("viber", 0) > 0
        assert result.paid_failed_attempts == 0
        assert result.total_cost == result.provider_billed
        assert result.total_cost == (
            Decimal("0.35") * result.delivered_by.get("vk", 0)
            + Decimal("1.20") * result.delivered_by.get("viber", 0)
        )
    # No cost comparison: with late VK deliveries gone, the router sees no latency beyond the
    # wait to learn a longer one from. What it learns is that these people let VK's wait run
    # out, and it weighs that wait against Viber's price (KASKAD_VALUE_OF_AN_HOUR).
