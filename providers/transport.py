"""HTTP plumbing shared by the adapters: one pooled session, error conversion, retries, breaker.

Each adapter owns one :class:`ProviderTransport`. The transport turns aiohttp
failures into :mod:`providers.errors` classes where they enter, and runs an
adapter's single-attempt coroutine under the circuit breaker and a tenacity
retry policy (exponential backoff with full jitter, ``Retry-After`` honoured,
bounded by attempts, a small budget of waiting and the message deadline; a longer wait
is left to the caller's durable retry).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import aiohttp
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from providers.base import CallbackReply
from providers.breaker import BreakerState, BreakerStore, CircuitBreaker, ProviderBreaker
from providers.errors import DeadlineExceeded, OutcomeUnknown, ProviderError, Rejected, Transient

T = TypeVar("T")

log = logging.getLogger(__name__)

# What a provider call is attempted again after (the first attempt and tenacity agree on it).
_RETRYABLE = (Transient, OutcomeUnknown)


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """Timeouts, retry and breaker policy for one adapter's HTTP client."""

    connect_timeout_s: float = 3.0
    read_timeout_s: float = 10.0
    max_attempts: int = 4
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 8.0
    retry_after_max_s: float = 60.0
    # In-process retries are for blips: their waits together stay within this budget. A
    # longer Retry-After or backoff raises Transient at once (with its retry_after), and the
    # gateway retries from a durable timer instead of holding a worker in a sleep.
    retry_budget_s: float = 1.0
    breaker_failure_threshold: int = 5
    breaker_cool_down_s: float = 30.0
    pool_size: int = 100

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
        if self.retry_budget_s < 0:
            raise ValueError("retry_budget_s must not be negative")


@dataclass(frozen=True, slots=True)
class HttpReply:
    """A provider's HTTP response, read in full."""

    status: int
    headers: Mapping[str, str]
    body: bytes


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def parse_json_body(reply: HttpReply, provider: str) -> Any:
    """Decode a JSON body (decimals as Decimal); an unreadable 2xx body means the outcome is unknown."""
    try:
        return json.loads(reply.body, parse_float=Decimal)
    except (ValueError, UnicodeDecodeError) as exc:
        if 200 <= reply.status < 300:
            raise OutcomeUnknown(
                "unreadable response body", provider=provider, code=str(reply.status)
            ) from exc
        # 5xx never gets here (request() raises Transient first): an unreadable 4xx is a refusal.
        raise Rejected("unreadable error body", provider=provider, code=str(reply.status)) from exc


def json_object_reply(reply: HttpReply, provider: str) -> dict[str, Any]:
    """The JSON object of a method-style API's 200 answer (VK's and Viber's): any other status
    is a refusal, any other body an unknown outcome."""
    if reply.status != 200:
        raise Rejected("unexpected HTTP status", provider=provider, code=str(reply.status))
    body = parse_json_body(reply, provider)
    if not isinstance(body, dict):
        raise OutcomeUnknown("response is not a JSON object", provider=provider)
    return body


class ProviderTransport:
    """One adapter's pooled HTTP session plus its breaker and retry policy.

    ``clock`` (monotonic seconds) drives the breaker, ``now`` (aware UTC)
    compares against message deadlines, and ``sleep`` is the backoff sleep;
    all three are injectable so tests neither sleep nor depend on wall time.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        settings: TransportSettings,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        breaker_store: BreakerStore | None = None,
    ) -> None:
        self._provider = provider
        self._base_url = base_url.rstrip("/")
        self._settings = settings
        self._now = now
        self._sleep = sleep
        self._session: aiohttp.ClientSession | None = None
        self._default_timeout = aiohttp.ClientTimeout(
            total=None,
            connect=settings.connect_timeout_s,
            sock_connect=settings.connect_timeout_s,
            sock_read=settings.read_timeout_s,
        )
        local = CircuitBreaker(
            provider,
            failure_threshold=settings.breaker_failure_threshold,
            cool_down_s=settings.breaker_cool_down_s,
            clock=clock,
        )
        # A probe token outlives one HTTP attempt, so a probe is never given to two calls;
        # it expires if its process dies, so another process may probe then.
        probe_ttl_s = settings.connect_timeout_s + settings.read_timeout_s + 1.0
        self.breaker = ProviderBreaker(local, breaker_store, probe_ttl_s=probe_ttl_s, clock=clock)

    def _client(self) -> aiohttp.ClientSession:
        # Created lazily: a ClientSession must be born inside the running event loop.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._settings.pool_size),
                timeout=self._default_timeout,
                raise_for_status=False,
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        data: Mapping[str, str] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        deadline: datetime | None = None,
    ) -> HttpReply:
        """Make one HTTP request; 429 and 5xx become :class:`Transient`, network errors are classified."""
        # Without a deadline the session's timeouts apply; passing timeout=None would disable them.
        timeout = self._default_timeout
        if deadline is not None:
            remaining = (deadline - self._now()).total_seconds()
            if remaining <= 0:
                raise DeadlineExceeded("deadline passed before the request", provider=self._provider)
            if remaining < self._settings.read_timeout_s:
                timeout = aiohttp.ClientTimeout(
                    total=None,
                    connect=min(self._settings.connect_timeout_s, remaining),
                    sock_connect=min(self._settings.connect_timeout_s, remaining),
                    sock_read=remaining,
                )
        url = self._base_url + path
        form: bytes | None = None
        if data is not None:
            # Encoded here rather than by aiohttp's FormData, which costs several times more
            # per request for the same bytes.
            form = urllib.parse.urlencode(data).encode()
            headers = {**(headers or {}), "Content-Type": "application/x-www-form-urlencoded"}
        try:
            async with self._client().request(
                method, url, data=form, json=json_body, headers=headers, timeout=timeout
            ) as resp:
                body = await resp.read()
                reply = HttpReply(status=resp.status, headers=dict(resp.headers), body=body)
        except aiohttp.ConnectionTimeoutError as exc:
            # Connecting (or waiting for a pooled connection) timed out: nothing was sent.
            raise Transient("connect timeout", provider=self._provider) from exc
        except aiohttp.ClientConnectorError as exc:
            raise Transient("connection failed", provider=self._provider) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            # The request was written; the provider may have acted on it.
            raise OutcomeUnknown("read timeout after the request was sent", provider=self._provider) from exc
        except aiohttp.ClientError as exc:
            raise OutcomeUnknown(
                f"connection lost mid-request ({type(exc).__name__})", provider=self._provider
            ) from exc
        if reply.status == 429:
            raise Transient(
                "rate limited",
                provider=self._provider,
                code="429",
                retry_after=parse_retry_after(reply.headers.get("Retry-After"), self._now()),
            )
        if reply.status == 408 or reply.status >= 500:
            raise Transient(
                "provider server error",
                provider=self._provider,
                code=str(reply.status),
                retry_after=parse_retry_after(reply.headers.get("Retry-After"), self._now()),
            )
        return reply

    async def call_with_retries(self, attempt: Callable[[], Awaitable[T]], *, deadline: datetime | None) -> T:
        """Run ``attempt`` under the breaker, retrying :class:`Transient` and :class:`OutcomeUnknown`.

        ``attempt`` must resend with the same dedupe key, which is what makes
        retrying an unknown outcome safe. If any attempt's outcome was unknown
        and the last one failed, :class:`OutcomeUnknown` is raised: an earlier
        attempt may still have been delivered.
        """
        if deadline is not None and deadline <= self._now():
            raise DeadlineExceeded("deadline passed before submit", provider=self._provider)
        outcome_unknown = False

        async def guarded() -> T:
            nonlocal outcome_unknown
            admitted = await self.breaker.allow()
            try:
                result = await attempt()
            except (Transient, OutcomeUnknown) as exc:
                await self.breaker.record_failure(admitted)
                if isinstance(exc, OutcomeUnknown):
                    outcome_unknown = True
                raise
            except DeadlineExceeded:
                # Says nothing about the provider's health.
                await self.breaker.release(admitted)
                raise
            except ProviderError:
                # Unreachable/Rejected: the provider answered, so it is healthy.
                await self.breaker.record_success(admitted)
                raise
            except BaseException:
                await self.breaker.release(admitted)
                raise
            await self.breaker.record_success(admitted)
            return result

        # The first attempt runs without tenacity's machinery (most succeed or fail for good);
        # a retryable failure is then replayed to tenacity as its first attempt, so the
        # stop, wait and logging of every later attempt are tenacity's, as if it ran them all.
        try:
            return await guarded()
        except _RETRYABLE as exc:
            first_failure: BaseException | None = exc

        async def replayed_then_guarded() -> T:
            nonlocal first_failure
            if first_failure is not None:
                failure, first_failure = first_failure, None
                raise failure
            return await guarded()

        retrying = AsyncRetrying(
            stop=self._make_stop(deadline),
            wait=self._make_wait(),
            retry=retry_if_exception_type(_RETRYABLE),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return await retrying(replayed_then_guarded)
        except Transient as exc:
            if outcome_unknown:
                raise OutcomeUnknown(
                    f"gave up after retries; an earlier attempt may have been accepted ({exc})",
                    provider=self._provider,
                ) from exc
            raise

    def _make_stop(self, deadline: datetime | None) -> Callable[[RetryCallState], bool]:
        max_attempts = self._settings.max_attempts
        budget = self._settings.retry_budget_s

        def stop(state: RetryCallState) -> bool:
            if state.attempt_number >= max_attempts:
                return True
            if state.idle_for + state.upcoming_sleep > budget:
                return True
            if deadline is None:
                return False
            # Wait runs before stop in tenacity, so upcoming_sleep is the planned backoff.
            return self._now() + timedelta(seconds=state.upcoming_sleep) >= deadline

        return stop

    def _make_wait(self) -> Callable[[RetryCallState], float]:
        backoff = wait_random_exponential(
            multiplier=self._settings.backoff_initial_s, max=self._settings.backoff_max_s
        )
        cap = self._settings.retry_after_max_s

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome is not None else None
            if isinstance(exc, Transient) and exc.retry_after is not None:
                return min(exc.retry_after, cap)
            return float(backoff(state))

        return wait

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.info(
            "%s: attempt %d failed (%s), retrying in %.2fs",
            self._provider,
            state.attempt_number,
            exc,
            state.upcoming_sleep,
        )


class _HttpAdapterSettings(Protocol):
    @property
    def base_url(self) -> str: ...

    @property
    def transport(self) -> TransportSettings: ...


SettingsT = TypeVar("SettingsT", bound=_HttpAdapterSettings)


class HttpAdapter(Generic[SettingsT]):
    """What every HTTP provider adapter shares: its settings, one pooled transport
    (timeouts, retries, the circuit breaker), the breaker's state and closing."""

    name: ClassVar[str]
    # The settings class; an adapter made without settings uses its defaults (the simulator).
    settings_type: ClassVar[type[Any]]

    def __init__(
        self,
        settings: SettingsT | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        breaker_store: BreakerStore | None = None,
    ) -> None:
        self.settings: SettingsT = settings if settings is not None else type(self).settings_type()
        self._now = now
        self._transport = ProviderTransport(
            self.name,
            self.settings.base_url,
            self.settings.transport,
            clock=clock,
            now=now,
            sleep=sleep,
            breaker_store=breaker_store,
        )

    @property
    def breaker_state(self) -> BreakerState:
        return self._transport.breaker.state

    @property
    def breaker(self) -> ProviderBreaker:
        return self._transport.breaker

    def callback_reply(self, body: bytes) -> CallbackReply | None:
        """The gateway's JSON acknowledgement, unless the provider wants something else."""
        del body
        return None

    async def aclose(self) -> None:
        await self._transport.aclose()
