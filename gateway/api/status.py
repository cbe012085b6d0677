"""Gateway errors as rich gRPC statuses (``google.rpc.Status`` with details, via grpcio-status)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.core.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    KaskadError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    StoreUnavailable,
    Unauthenticated,
)
from kaskad.v1 import notification_pb2


def _code(error: KaskadError) -> int:
    code: int
    match error:
        case InvalidArgument():
            code = code_pb2.INVALID_ARGUMENT
        case NotFound():
            code = code_pb2.NOT_FOUND
        case AlreadyExists():
            code = code_pb2.ALREADY_EXISTS
        case Unauthenticated():
            code = code_pb2.UNAUTHENTICATED
        case PermissionDenied():
            code = code_pb2.PERMISSION_DENIED
        case FailedPrecondition():
            code = code_pb2.FAILED_PRECONDITION
        case ResourceExhausted():
            code = code_pb2.RESOURCE_EXHAUSTED
        case StoreUnavailable():
            code = code_pb2.UNAVAILABLE
        case _:
            code = code_pb2.INTERNAL
    return code


# A status travels in trailing metadata, which a client refuses past a few kilobytes (the
# call would then fail with a status Kaskad never sent): the message, field names and the
# violations reported are bounded in UTF-8 bytes; the first ones are enough to fix a request.
_MAX_MESSAGE = 400
_MAX_FIELD = 96
_MAX_DESCRIPTION = 160
_MAX_VIOLATIONS = 20
_MAX_VIOLATION_BYTES = 2048


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (with an ellipsis when cut)."""
    if len(text.encode()) <= limit:
        return text
    return text.encode()[: limit - 3].decode(errors="ignore") + "…"


def _violations(error: InvalidArgument) -> list[tuple[str, str]]:
    shown: list[tuple[str, str]] = []
    size = 0
    for v in error.violations[:_MAX_VIOLATIONS]:
        field, description = _clip(v.field, _MAX_FIELD), _clip(v.description, _MAX_DESCRIPTION)
        size += len(field.encode()) + len(description.encode())
        if shown and size > _MAX_VIOLATION_BYTES:
            break
        shown.append((field, description))
    return shown


def _message(error: KaskadError) -> str:
    if isinstance(error, InvalidArgument):
        reported = _violations(error)
        shown = ", ".join(field for field, _ in reported)
        more = len(error.violations) - len(reported)
        return _clip(f"invalid request: {shown}" + (f" and {more} more" if more > 0 else ""), _MAX_MESSAGE)
    return _clip(str(error), _MAX_MESSAGE)


def to_rpc_status(error: KaskadError) -> status_pb2.Status:
    status = status_pb2.Status(code=_code(error), message=_message(error))
    if isinstance(error, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
                    for field, description in _violations(error)
                ]
            )
        )
        status.details.append(detail)
    if isinstance(error, ResourceExhausted):
        delay = duration_pb2.Duration()
        delay.FromTimedelta(error.retry_after)
        retry = any_pb2.Any()
        retry.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(retry)
    return status


def to_grpc_status(error: KaskadError) -> grpc.Status:
    return rpc_status.to_status(to_rpc_status(error))


def to_item_error(error: KaskadError) -> notification_pb2.ItemError:
    item = notification_pb2.ItemError(code=_code(error), message=_message(error))
    if isinstance(error, InvalidArgument):
        item.field_violations.extend(
            notification_pb2.FieldViolation(field=field, description=description)
            for field, description in _violations(error)
        )
    return item
