"""Route planners that ``kaskad simulate`` compares the router with.

Both return a :class:`router.planner.Plan`, so the real engine runs them exactly as it
runs the router's plans; only the choice of steps differs.

- :class:`FixedOrderPlanner`: the allowed channels in a fixed order (VK, Viber, SMS),
  every step waiting the same fixed time for its report. No learning.
- :class:`OraclePlanner`: knows from the seeded simulator population which channels
  reach each person (an account, and not dormant) and plans one step, the cheapest of
  them, waiting as long as it takes (no step at all when nothing reaches the person).
  Not a real strategy: the lower bound of the comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from gateway.accept.planning import RoutePlanner
from gateway.core.errors import FailedPrecondition
from gateway.core.model import NewNotification
from lab.simulator.population import Population
from providers.base import ProviderAdapter
from router.domain import AckPolicy, BillingMoment, Channel, Money
from router.planner import Plan, PlanStep, SkippedChannel, SkipReason

FIXED_ORDER: tuple[Channel, ...] = (Channel.VK, Channel.VIBER, Channel.SMS)


def _step(
    adapter: ProviderAdapter,
    channel: Channel,
    units: int,
    *,
    probability: float,
    reach: float,
    starts_after: timedelta,
    wait: timedelta,
    basis: str,
) -> PlanStep:
    price = adapter.price_for(units)
    bills = BillingMoment(adapter.billing.value)
    billed_share = Decimal(1) if not bills.bills_only_on_success else Decimal(str(probability))
    return PlanStep(
        channel=channel,
        provider=adapter.name,
        billed_units=units,
        price=price,
        bills=bills,
        delivery_probability=probability,
        reach_probability=reach,
        expected_cost=Money(
            (price.amount * billed_share * Decimal(str(reach))).quantize(Decimal("0.0001")), price.currency
        ),
        starts_after=starts_after,
        wait=wait,
        wait_basis=basis,
    )


def _units(new: NewNotification, adapters: Mapping[Channel, ProviderAdapter]) -> dict[Channel, int]:
    """Billed units of each allowed message channel that can carry this body."""
    units: dict[Channel, int] = {}
    for channel in new.channels:
        adapter = adapters.get(channel)
        if adapter is None or channel is Channel.VOICE:
            continue
        body = new.bodies[channel]
        if len(body) <= adapter.max_text_length:
            units[channel] = adapter.units_for(body)
    return units


def _not_allowed(chosen: Sequence[Channel], reason: SkipReason, detail: str) -> tuple[SkippedChannel, ...]:
    return tuple(SkippedChannel(c, reason, detail) for c in Channel if c not in chosen)


def _plan(
    new: NewNotification, now: datetime, steps: Sequence[PlanStep], skipped: tuple[SkippedChannel, ...]
) -> Plan:
    currency = new.currency
    total = sum((s.expected_cost.amount for s in steps), Decimal(0))
    miss = 1.0
    for step in steps:
        miss *= 1 - step.delivery_probability
    return Plan(
        steps=tuple(steps),
        skipped=skipped,
        expected_cost=Money(total, currency),
        reach_probability=1 - miss if steps else 0.0,
        ack_policy=new.ack_policy,
        created_at=now,
        deadline=new.deadline,
    )


class FixedOrderPlanner:
    """VK, then Viber, then SMS (those allowed), each step waiting ``wait`` for its report."""

    def __init__(
        self,
        adapters: Mapping[Channel, ProviderAdapter],
        baseline: RoutePlanner,
        wait: timedelta,
        order: Sequence[Channel] = FIXED_ORDER,
    ) -> None:
        if wait <= timedelta(0):
            raise ValueError("the fixed wait must be positive")
        self._adapters = adapters
        self._baseline = baseline
        self._wait = wait
        self._order = tuple(order)

    def sms_baseline(self, new: NewNotification) -> Decimal:
        return self._baseline.sms_baseline(new)

    async def plan(self, new: NewNotification, now: datetime) -> Plan:
        if new.ack_policy is not AckPolicy.DELIVERED:
            raise FailedPrecondition("the fixed cascade plans DELIVERED notifications only")
        units = _units(new, self._adapters)
        steps: list[PlanStep] = []
        offset = timedelta(0)
        for channel in self._order:
            if channel not in units:
                continue
            # It knows nothing about the person: every step is tried, none is expected to work.
            steps.append(
                _step(
                    self._adapters[channel],
                    channel,
                    units[channel],
                    probability=0.0,
                    reach=1.0,
                    starts_after=offset,
                    wait=self._wait,
                    basis="fixed wait",
                )
            )
            offset += self._wait
        if not steps:
            raise FailedPrecondition("no channel of the fixed order can carry this notification")
        chosen = [s.channel for s in steps]
        return _plan(new, now, steps, _not_allowed(chosen, SkipReason.NOT_ALLOWED, "not in the fixed order"))


class OraclePlanner:
    """One step: the cheapest channel that the seeded population says reaches the person."""

    def __init__(
        self,
        adapters: Mapping[Channel, ProviderAdapter],
        baseline: RoutePlanner,
        population: Population,
    ) -> None:
        self._adapters = adapters
        self._baseline = baseline
        self._population = population

    def sms_baseline(self, new: NewNotification) -> Decimal:
        return self._baseline.sms_baseline(new)

    async def plan(self, new: NewNotification, now: datetime) -> Plan:
        if new.ack_policy is not AckPolicy.DELIVERED:
            raise FailedPrecondition("the oracle plans DELIVERED notifications only")
        units = _units(new, self._adapters)
        # The simulator decides by the phone (Kaskad sends no VK or Viber user ids here).
        reachable = [c for c in FIXED_ORDER if c in units and self._population.reaches(c.value, new.phone)]
        if not reachable:
            # Nothing reaches this person: the oracle does not try (and pays nothing).
            return _plan(
                new,
                now,
                (),
                _not_allowed((), SkipReason.KNOWN_UNREACHABLE, "the oracle knows nothing reaches the person"),
            )
        best = min(
            reachable, key=lambda c: (self._adapters[c].price_for(units[c]).amount, FIXED_ORDER.index(c))
        )
        wait = new.deadline - now
        step = _step(
            self._adapters[best],
            best,
            units[best],
            probability=1.0,
            reach=1.0,
            starts_after=timedelta(0),
            wait=wait,
            basis="oracle: waits until the deadline",
        )
        return _plan(
            new,
            now,
            (step,),
            _not_allowed(
                (best,),
                SkipReason.NOT_ALLOWED,
                "the oracle plans only the cheapest channel that reaches the person",
            ),
        )
