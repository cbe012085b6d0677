"""A per-provider circuit breaker with an injectable clock.

After ``failure_threshold`` consecutive failures the breaker opens: calls are
refused with :class:`~providers.errors.CircuitOpen` without touching the
network. After ``cool_down_s`` it lets exactly one probe through (half-open);
the probe's success closes it, its failure re-opens it for another cool-down.

Only failures that say something about the provider's health count (transient
errors and unknown outcomes); a provider that answers "this user is
unreachable" is healthy.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable

from providers.errors import CircuitOpen


class BreakerState(enum.StrEnum):
    """The breaker's state, exported for metrics."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Counts consecutive failures of one provider and refuses calls while it is open.

    ``clock`` returns monotonic seconds; tests inject a fake one instead of sleeping.
    """

    def __init__(
        self,
        provider: str,
        *,
        failure_threshold: int,
        cool_down_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cool_down_s < 0:
            raise ValueError("cool_down_s must not be negative")
        self._provider = provider
        self._threshold = failure_threshold
        self._cool_down_s = cool_down_s
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose cool-down has passed reports half-open."""
        if self._state is BreakerState.OPEN and self._cool_down_over():
            return BreakerState.HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive_failures

    def allow(self) -> None:
        """Admit one call or raise :class:`CircuitOpen`.

        Every admitted call must be followed by exactly one of
        :meth:`record_success`, :meth:`record_failure` or :meth:`release`.
        """
        if self._state is BreakerState.CLOSED:
            return
        if self._state is BreakerState.OPEN:
            if not self._cool_down_over():
                raise CircuitOpen(
                    "circuit open", provider=self._provider, retry_in=self._remaining_cool_down()
                )
            self._state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
        # Half-open: exactly one probe at a time decides whether the provider is back.
        if self._probe_in_flight:
            raise CircuitOpen("circuit half-open, probe in flight", provider=self._provider, retry_in=0.0)
        self._probe_in_flight = True

    def record_success(self) -> None:
        """The provider answered (even with a permanent error): it is healthy."""
        if self._state is BreakerState.OPEN:
            # A slow call admitted before the breaker opened; the probe decides, not it.
            return
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._probe_in_flight = False

    def record_failure(self) -> None:
        """The provider failed in a way that says it is unhealthy."""
        if self._state is BreakerState.OPEN:
            return
        if self._state is BreakerState.HALF_OPEN:
            self._open()
            return
        self._consecutive_failures += 1
        if self._consecutive_failures >= self._threshold:
            self._open()

    def release(self) -> None:
        """An admitted call ended without a verdict (cancelled); free the probe slot."""
        if self._state is BreakerState.HALF_OPEN:
            self._probe_in_flight = False

    def _open(self) -> None:
        self._state = BreakerState.OPEN
        self._opened_at = self._clock()
        self._probe_in_flight = False

    def _cool_down_over(self) -> bool:
        return self._clock() - self._opened_at >= self._cool_down_s

    def _remaining_cool_down(self) -> float:
        return max(0.0, self._cool_down_s - (self._clock() - self._opened_at))
