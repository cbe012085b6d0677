"""The route planner of the accept path: the router's cost planner, fed with what the gateway knows.

:class:`CostPlanner` gathers the inputs the pure planner needs (billed units per channel
from each adapter, the recipient's reachability, channel-wide stats, which providers'
circuit breakers are open: only a preference among a channel's providers, never a reason to
refuse) and returns its :class:`router.planner.Plan`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from gateway.core.errors import FailedPrecondition
from gateway.core.model import NewNotification
from gateway.store.rate_limits import ProviderRateLimits
from gateway.store.reachability import ReachabilityStore
from gateway.store.redis_link import RedisLink
from providers.base import ProviderAdapter
from providers.breaker import BreakerState
from router.domain import Channel, Money
from router.planner import Plan, Planner, PlanRequest, SkippedChannel, SkipReason
from router.reachability import RecipientReachability, TrafficStats

_FRESH_PLAN_CACHE = 1024


class RoutePlanner(Protocol):
    async def plan(self, new: NewNotification, now: datetime) -> Plan: ...

    def sms_baseline(self, new: NewNotification) -> Decimal:
        """What sending this notification by SMS alone would cost."""
        ...


class CostPlanner:
    """Plans with :class:`router.planner.Planner`; one provider adapter per channel."""

    def __init__(
        self,
        planner: Planner,
        adapters: Mapping[Channel, ProviderAdapter],
        reachability: ReachabilityStore,
        rate_limits: ProviderRateLimits,
        redis: RedisLink,
    ) -> None:
        self._redis = redis
        self._planner = planner
        self._adapters = adapters
        self._reachability = reachability
        self._rate_limits = rate_limits
        self._fresh_plans: dict[tuple[object, ...], Plan] = {}
        self._cached_traffic: TrafficStats | None = None

    def _daily_reason(self, skipped: SkippedChannel, daily_full: set[str]) -> SkippedChannel:
        provider = self._adapters[skipped.channel].name
        if skipped.reason is not SkipReason.PROVIDER_UNAVAILABLE or provider not in daily_full:
            return skipped
        limit = self._rate_limits.limit(provider).per_recipient_per_day
        return replace(
            skipped, detail=f"{provider} allows {limit} messages per person per day; reached today"
        )

    def _plan(self, request: PlanRequest, recipient: RecipientReachability, traffic: TrafficStats) -> Plan:
        """The router's plan; for a person Kaskad knows nothing about, reused from an equal request.

        Such a plan depends only on the request's terms and the channel-wide stats, and it
        holds no absolute time but its creation and deadline, which are stamped afresh.
        The cache is dropped whenever the channel-wide stats are reloaded.
        """
        if recipient.channels:
            return self._planner.plan(request, recipient, traffic)
        if traffic is not self._cached_traffic:
            self._fresh_plans.clear()
            self._cached_traffic = traffic
        key = (
            tuple(request.billed_units.items()),
            request.ack_policy,
            request.ack_timeout,
            request.max_cost,
            frozenset(request.unavailable_providers),
            frozenset(request.capped_providers),
            request.deadline - request.now,
        )
        cached = self._fresh_plans.get(key)
        if cached is None:
            cached = self._planner.plan(request, recipient, traffic)
            if len(self._fresh_plans) >= _FRESH_PLAN_CACHE:
                self._fresh_plans.pop(next(iter(self._fresh_plans)))
            self._fresh_plans[key] = cached
        return replace(cached, created_at=request.now, deadline=request.deadline)

    def sms_baseline(self, new: NewNotification) -> Decimal:
        sms = self._adapters[Channel.SMS]
        return sms.price_for(sms.units_for(new.sms_body)).amount

    async def plan(self, new: NewNotification, now: datetime) -> Plan:
        units: dict[Channel, int] = {}
        too_long: list[str] = []
        for channel in new.channels:
            adapter = self._adapters[channel]
            body = new.bodies[channel]
            if len(body) > adapter.max_text_length:
                too_long.append(f"{channel.value} takes at most {adapter.max_text_length} characters")
                continue
            units[channel] = adapter.units_for(body)
        if not units:
            raise FailedPrecondition(
                "the message is too long for every allowed channel: " + "; ".join(too_long)
            )
        unavailable = {a.name for a in self._adapters.values() if a.breaker_state is BreakerState.OPEN}
        recipient_key = self._reachability.recipient_key(new.phone)
        capped = [
            self._adapters[c].name
            for c in units
            if self._rate_limits.limit(self._adapters[c].name).per_recipient_per_day
        ]
        # One Redis round trip for the person's hot reachability and their daily counts.
        hot = await self._redis.get_many(
            [
                self._reachability.hot_key(recipient_key),
                *(self._rate_limits.daily_redis_key(p, recipient_key, now) for p in capped),
            ]
        )
        if hot is None:  # Redis down: PostgreSQL for reachability, this process's counts
            recipient = await self._reachability.recipient(new.phone)
            daily_full = {p for p in capped if await self._rate_limits.recipient_full(p, recipient_key, now)}
        else:
            recipient = await self._reachability.recipient_from_hot(recipient_key, hot[0])
            daily_full = {
                p for p, count in zip(capped, hot[1:], strict=True) if self._rate_limits.is_full(p, count)
            }
        request = PlanRequest(
            allowed_channels=tuple(units),
            billed_units=units,
            now=now,
            deadline=new.deadline,
            ack_policy=new.ack_policy,
            ack_timeout=new.ack_timeout,
            max_cost=None if new.max_cost is None else Money(new.max_cost, new.currency),
            # Open breakers only steer the choice among a channel's providers; they never
            # refuse a notification (the cascade waits a provider fault out). A person's
            # daily limit at a provider does keep that provider out.
            unavailable_providers=frozenset(unavailable),
            capped_providers=frozenset(daily_full),
        )
        traffic = await self._reachability.traffic(now)
        plan = self._plan(request, recipient, traffic)
        if daily_full:
            plan = replace(plan, skipped=tuple(self._daily_reason(s, daily_full) for s in plan.skipped))
        if not plan.steps:
            reasons = "; ".join(f"{s.channel.value}: {s.detail}" for s in plan.skipped)
            raise FailedPrecondition(f"no channel can carry this notification ({reasons})")
        return plan
