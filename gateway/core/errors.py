"""Errors the gateway raises, and the gRPC status each one becomes at the edge.

The hierarchy::

    KaskadError                  base; never shown as UNKNOWN to a caller
    ├── InvalidArgument          bad input; carries field violations (INVALID_ARGUMENT)
    ├── NotFound                 no such notification for this client (NOT_FOUND)
    ├── AlreadyExists            idempotency key reused with other content (ALREADY_EXISTS)
    ├── Unauthenticated          missing, malformed, wrong or revoked API key (UNAUTHENTICATED)
    ├── PermissionDenied         a valid key asking for what its client may not read (PERMISSION_DENIED)
    ├── FailedPrecondition       the operation does not fit the current state (FAILED_PRECONDITION)
    ├── ResourceExhausted        backlog or client quota exceeded; retry after a delay (RESOURCE_EXHAUSTED)
    └── StoreUnavailable         PostgreSQL unreachable or briefly unable to serve: no free
                                 connection, shutting down, deadlock victim (UNAVAILABLE; retry)

Messages never contain a phone number: they are shown to callers and written to logs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field, named by its path in the request (``recipient.phone``)."""

    field: str
    description: str


class KaskadError(Exception):
    """Base of every error the gateway reports to a caller."""


class InvalidArgument(KaskadError):
    def __init__(self, violations: list[FieldViolation]) -> None:
        self.violations = violations
        fields = ", ".join(v.field for v in violations)
        super().__init__(f"invalid request: {fields}")


class NotFound(KaskadError):
    pass


class AlreadyExists(KaskadError):
    pass


class Unauthenticated(KaskadError):
    pass


class PermissionDenied(KaskadError):
    pass


class FailedPrecondition(KaskadError):
    pass


class ResourceExhausted(KaskadError):
    def __init__(self, message: str, retry_after: timedelta) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class StoreUnavailable(KaskadError):
    pass
