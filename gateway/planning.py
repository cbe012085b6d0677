"""The route planner port of the accept path.

:class:`RoutePlanner` is what the accept path needs: a route with an expected cost per
step for a validated notification. :class:`FixedOrderPlanner` is the foundation's
implementation (cheapest-first fixed order from the price book); the cost-optimising
planner in ``router.planner`` replaces it in the composition root.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from gateway.model import NewNotification, RouteStepView, RouteView
from router.domain import AckPolicy, Channel


class RoutePlanner(Protocol):
    async def plan(self, new: NewNotification, now: datetime) -> RouteView: ...


class FixedOrderPlanner:
    """VK, then Viber, then SMS, and the voice robot last for READ acks; one price per message."""

    _ORDER = (Channel.VK, Channel.VIBER, Channel.SMS, Channel.VOICE)

    def __init__(self, prices: Mapping[Channel, Decimal], currency: str, wait: timedelta) -> None:
        self._prices = prices
        self._currency = currency
        self._wait = wait

    async def plan(self, new: NewNotification, now: datetime) -> RouteView:
        steps = []
        skipped = []
        for channel in self._ORDER:
            if channel not in new.channels:
                continue
            if channel is Channel.VOICE and new.ack_policy is not AckPolicy.READ and len(new.channels) > 1:
                skipped.append((channel, "voice robot is the no-answer fallback for READ acks"))
                continue
            steps.append(RouteStepView(channel, channel.value, self._prices[channel], 1.0, self._wait))
        total = steps[0].expected_cost if steps else Decimal(0)
        return RouteView(tuple(steps), total, self._currency, tuple(skipped))
