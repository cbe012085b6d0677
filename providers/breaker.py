"""A per-provider circuit breaker with an injectable clock.

After ``failure_threshold`` consecutive failures the breaker opens: calls are
refused with :class:`~providers.errors.CircuitOpen` without touching the
network. After ``cool_down_s`` it lets exactly one probe through (half-open);
the probe's success closes it, its failure re-opens it for another cool-down.

Only failures that say something about the provider's health count (transient
errors and unknown outcomes); a provider that answers "this user is
unreachable" is healthy.

Gateway processes share one breaker per provider through a :class:`BreakerStore` (a
port: the gateway implements it in Redis); :class:`ProviderBreaker` asks the store and
falls back to this process's :class:`CircuitBreaker` while the store is unreachable.
"""

from __future__ import annotations

import enum
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from providers.errors import CircuitOpen

log = logging.getLogger(__name__)


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

    @property
    def provider(self) -> str:
        return self._provider

    @property
    def failure_threshold(self) -> int:
        return self._threshold

    @property
    def cool_down_s(self) -> float:
        return self._cool_down_s

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


@dataclass(frozen=True, slots=True)
class SharedView:
    """The shared breaker of one provider as a store saw it.

    ``retry_in``: seconds until an open breaker half-opens, or until a half-open breaker's
    probe token lapses; ``probe``: the call asking was admitted as the one probe."""

    state: BreakerState
    retry_in: float = 0.0
    failures: int = 0
    probe: bool = False


class BreakerStoreUnavailable(Exception):
    """The shared store did not answer; the process's own breaker decides meanwhile."""


class BreakerStore(Protocol):
    """Where the breakers of all gateway processes keep one state per provider (Redis in
    the gateway). Each operation is atomic in the store; ``token`` names a probe."""

    async def allow(self, provider: str, token: str, probe_ttl_s: float) -> SharedView:
        """Closed: admit. Open: refuse. Half-open: admit as the probe if no other holds it."""
        ...

    async def failure(
        self, provider: str, token: str | None, threshold: int, cool_down_s: float
    ) -> SharedView:
        """Count a consecutive failure (opening at ``threshold``), or re-open after a failed probe."""
        ...

    async def success(self, provider: str, token: str | None) -> SharedView:
        """Close the breaker unless it is open and this was not its probe."""
        ...

    async def release(self, provider: str, token: str) -> None:
        """Give the probe token back (the probe ended without a verdict)."""
        ...

    async def read(self, provider: str) -> SharedView: ...


@dataclass(frozen=True, slots=True)
class Admission:
    """One admitted call: who admitted it (the shared store or this process's breaker) and
    whether it holds the shared probe token."""

    shared: bool
    token: str | None = None


class ProviderBreaker:
    """The breaker an adapter's transport asks: the shared one of all gateway processes when
    a :class:`BreakerStore` is given and answers, else this process's :class:`CircuitBreaker`.

    A call's verdict goes to whichever breaker admitted it. :attr:`state` is synchronous
    (metrics, the planner): the shared state as last seen, kept fresh by every call and by
    :meth:`refresh`; while the store is unreachable, the local breaker's.
    """

    def __init__(
        self,
        local: CircuitBreaker,
        store: BreakerStore | None = None,
        *,
        probe_ttl_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local = local
        self._store = store
        self._probe_ttl_s = probe_ttl_s
        self._clock = clock
        self._shared_ok = store is not None
        self._seen = SharedView(BreakerState.CLOSED)
        self._seen_at = clock()

    @property
    def provider(self) -> str:
        return self.local.provider

    def share(self, store: BreakerStore) -> None:
        """Share this provider's breaker with every gateway process through ``store`` (the
        composition root's choice); the local breaker stays the fallback."""
        self._store = store
        self._shared_ok = True

    @property
    def shared(self) -> bool:
        """Whether the shared store answered last time it was asked."""
        return self._shared_ok

    @property
    def state(self) -> BreakerState:
        if not self._shared_ok:
            return self.local.state
        seen = self._seen
        if seen.state is BreakerState.OPEN and self._clock() - self._seen_at >= seen.retry_in:
            return BreakerState.HALF_OPEN
        return seen.state

    async def allow(self) -> Admission:
        """Admit one call or raise :class:`CircuitOpen` (``retry_in`` from the shared state).

        Every admission must be followed by exactly one of :meth:`record_success`,
        :meth:`record_failure` or :meth:`release`."""
        if self._store is not None:
            token = uuid.uuid4().hex
            view = await self._shared(self._store.allow(self.provider, token, self._probe_ttl_s))
            if view is not None:
                if view.state is BreakerState.OPEN:
                    raise CircuitOpen("circuit open", provider=self.provider, retry_in=view.retry_in)
                if view.state is BreakerState.HALF_OPEN and not view.probe:
                    raise CircuitOpen(
                        "circuit half-open, probe in flight", provider=self.provider, retry_in=view.retry_in
                    )
                return Admission(shared=True, token=token if view.probe else None)
        self.local.allow()
        return Admission(shared=False)

    async def record_success(self, admission: Admission) -> None:
        """The provider answered (even with a permanent error): it is healthy."""
        if not admission.shared:
            self.local.record_success()
        elif self._store is not None:
            # Every success goes to the store, though most change nothing: the view of the count
            # this process holds may be older than another call's failure (replies of
            # concurrent calls arrive out of order), and a skipped reset lets failures that were
            # never consecutive add up until they open the breaker.
            await self._shared(self._store.success(self.provider, admission.token))

    async def record_failure(self, admission: Admission) -> None:
        """The provider failed in a way that says it is unhealthy."""
        if not admission.shared:
            self.local.record_failure()
        elif self._store is not None:
            failure = self._store.failure(
                self.provider, admission.token, self.local.failure_threshold, self.local.cool_down_s
            )
            await self._shared(failure)

    async def release(self, admission: Admission) -> None:
        """The call ended without a verdict (cancelled, deadline): free the probe slot."""
        if not admission.shared:
            self.local.release()
        elif self._store is not None and admission.token is not None:
            await self._shared(self._release(admission.token))

    async def refresh(self) -> None:
        """Read the shared state (the metrics' view in a process that makes no calls)."""
        if self._store is not None:
            await self._shared(self._store.read(self.provider))

    async def _release(self, token: str) -> SharedView:
        assert self._store is not None
        await self._store.release(self.provider, token)
        return self._seen

    async def _shared(self, operation: Awaitable[SharedView]) -> SharedView | None:
        try:
            view = await operation
        except BreakerStoreUnavailable as exc:
            if self._shared_ok:
                log.warning(
                    "%s: shared breaker unreachable, this process's breaker decides: %s", self.provider, exc
                )
            self._shared_ok = False
            return None
        if not self._shared_ok:
            log.info("%s: shared breaker reachable again", self.provider)
        self._shared_ok = True
        self._seen, self._seen_at = view, self._clock()
        return view
