"""Errors raised by provider adapters, classified once where they enter.

Every failure that crosses an adapter boundary is one of these; foreign
exceptions (aiohttp, JSON decoding, ...) are converted at the point where they
enter with ``raise X(...) from exc``, so callers never see library exceptions::

    ProviderError                 anything an adapter raises
     ├── Unreachable              this recipient cannot be reached on this channel
     ├── Rejected                 this message can never go through this provider
     ├── Transient                worth retrying: timeout before sending, connection
     │                            refused, 5xx, 429, the provider's "try later" codes
     ├── OutcomeUnknown           the request may have been sent and acted upon
     │                            (read timeout, connection lost mid-request); resolve
     │                            it from the callback or a retry with the same dedupe key
     ├── CircuitOpen              the provider's breaker is open; move on at once
     ├── DeadlineExceeded         the message deadline passed before it could be sent
     └── CallbackRejected         an inbound callback that is not recorded (nothing is written)
          ├── CallbackUnauthenticated  missing or wrong signature/secret, or a body that cannot be
          │                            authenticated (VK's secret sits in an unreadable body): HTTP 401
          └── CallbackMalformed        authenticated, but unreadable or holding impossible values
                                       (a timestamp in 1e30, a negative price, a day-long call): HTTP 400

``OutcomeUnknown`` is deliberately *not* a ``Transient``: a caller that treats
transient failures as "not sent, try the next channel" would otherwise send the
person a second copy.

Messages never contain an unmasked phone number.
"""

from __future__ import annotations


class ProviderError(Exception):
    """Base class of everything a provider adapter raises.

    ``provider`` names the adapter (``"vk"``, ``"viber"``, ...); ``code`` is the
    provider's own error code or HTTP status when there is one, kept for metrics
    and operators.
    """

    def __init__(self, message: str, *, provider: str, code: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.code = code

    def __str__(self) -> str:
        base = super().__str__()
        suffix = f" (code {self.code})" if self.code is not None else ""
        return f"{self.provider}: {base}{suffix}"


class Unreachable(ProviderError):
    """This recipient cannot be reached on this channel (not a user, privacy, blocked)."""


class Rejected(ProviderError):
    """This message can never go through this provider (too long, bad content, bad credentials)."""


class Transient(ProviderError):
    """A failure that is worth retrying; ``retry_after`` is the provider's hint in seconds."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, provider=provider, code=code)
        self.retry_after = retry_after


class OutcomeUnknown(ProviderError):
    """The request may have reached the provider; whether it was accepted is not known."""


class CircuitOpen(ProviderError):
    """The provider's circuit breaker is open; no request was made."""

    def __init__(self, message: str, *, provider: str, retry_in: float) -> None:
        super().__init__(message, provider=provider)
        self.retry_in = retry_in


class DeadlineExceeded(ProviderError):
    """The message deadline passed before it could be (re)submitted."""


class CallbackRejected(ProviderError):
    """An inbound callback that is not recorded; raised as one of the two subclasses below.

    A plain ``CallbackRejected`` is answered as an unauthenticated one (401).
    """


class CallbackUnauthenticated(CallbackRejected):
    """The callback's signature or secret is missing or wrong, or the body cannot be authenticated."""


class CallbackMalformed(CallbackRejected):
    """An authenticated callback whose body is unreadable or holds values no provider sends.

    Its message is a short reason of our own (never provider text), safe to answer with.
    """
