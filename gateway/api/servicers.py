"""Thin gRPC servicers: convert from proto, call the desk, convert back.

The caller was authenticated by :class:`gateway.api.authentication.Authentication`.

Every :class:`KaskadError` becomes a rich status; anything else is logged and becomes
INTERNAL without internals, never UNKNOWN with a stack trace.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from gateway.accept.desk import NotificationDesk
from gateway.api import convert
from gateway.api.authentication import current_caller
from gateway.api.status import to_grpc_status, to_item_error
from gateway.core.errors import KaskadError
from gateway.store.ledger import CostLedger
from kaskad.v1 import cost_report_pb2, cost_report_pb2_grpc, notification_pb2, notification_pb2_grpc

log = logging.getLogger(__name__)

Response = TypeVar("Response")


def rpc_errors(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]:
    """Turn gateway errors into rich statuses at the edge of every RPC."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await method(self, request, context)
        except KaskadError as exc:
            await context.abort_with_status(to_grpc_status(exc))
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error in %s", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the gateway log")
        raise AssertionError("unreachable: abort raises")

    return wrapper


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(self, desk: NotificationDesk) -> None:
        self._desk = desk
        self._route_message = convert.RouteMessages()

    @rpc_errors
    async def SendNotification(
        self,
        request: notification_pb2.SendNotificationRequest,
        context: grpc.aio.ServicerContext,
    ) -> notification_pb2.SendNotificationResponse:
        client_id = current_caller().client_id
        result = await self._desk.send(client_id, convert.send_request_from_proto(request))
        return convert.accept_result_to_proto(result, self._route_message)

    @rpc_errors
    async def SendNotificationBatch(
        self,
        request: notification_pb2.SendNotificationBatchRequest,
        context: grpc.aio.ServicerContext,
    ) -> notification_pb2.SendNotificationBatchResponse:
        client_id = current_caller().client_id
        response = notification_pb2.SendNotificationBatchResponse()
        results = await self._desk.send_batch(client_id, request.requests, convert.send_request_from_proto)
        for item in results:
            if item.result is not None:
                response.results.append(
                    notification_pb2.SendNotificationBatchResult(
                        index=item.index,
                        response=convert.accept_result_to_proto(item.result, self._route_message),
                    )
                )
            else:
                assert item.error is not None
                response.results.append(
                    notification_pb2.SendNotificationBatchResult(
                        index=item.index, error=to_item_error(item.error)
                    )
                )
        return response

    @rpc_errors
    async def GetNotification(
        self,
        request: notification_pb2.GetNotificationRequest,
        context: grpc.aio.ServicerContext,
    ) -> notification_pb2.GetNotificationResponse:
        client_id = current_caller().client_id
        notification_id = convert.notification_id_from_proto(request.notification_id)
        record = await self._desk.get(client_id, notification_id)
        return notification_pb2.GetNotificationResponse(notification=convert.notification_to_proto(record))

    @rpc_errors
    async def CancelNotification(
        self,
        request: notification_pb2.CancelNotificationRequest,
        context: grpc.aio.ServicerContext,
    ) -> notification_pb2.CancelNotificationResponse:
        client_id = current_caller().client_id
        notification_id = convert.notification_id_from_proto(request.notification_id)
        record = await self._desk.cancel(client_id, notification_id)
        return notification_pb2.CancelNotificationResponse(notification=convert.notification_to_proto(record))


class CostReportServicer(cost_report_pb2_grpc.CostReportServiceServicer):
    """The cost ledger: a ``finance`` client reads every client's costs, any other client
    only its own (a report filtered to other clients is refused)."""

    def __init__(self, ledger: CostLedger) -> None:
        self._ledger = ledger

    @rpc_errors
    async def GetCostReport(
        self,
        request: cost_report_pb2.GetCostReportRequest,
        context: grpc.aio.ServicerContext,
    ) -> cost_report_pb2.GetCostReportResponse:
        caller = current_caller()
        report = await self._ledger.report(convert.cost_query_from_proto(request).for_caller(caller))
        return convert.cost_report_to_proto(report)
