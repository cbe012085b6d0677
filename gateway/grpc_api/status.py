"""Gateway errors as rich gRPC statuses (``google.rpc.Status`` with details, via grpcio-status)."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.errors import (
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


def to_rpc_status(error: KaskadError) -> status_pb2.Status:
    status = status_pb2.Status(code=_code(error), message=str(error))
    if isinstance(error, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in error.violations
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
    item = notification_pb2.ItemError(code=_code(error), message=str(error))
    if isinstance(error, InvalidArgument):
        item.field_violations.extend(
            notification_pb2.FieldViolation(field=v.field, description=v.description)
            for v in error.violations
        )
    return item
