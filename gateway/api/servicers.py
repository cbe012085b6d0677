"""Thin gRPC servicers: authenticate, convert from proto, call the desk, convert back.

Every :class:`KaskadError` becomes a rich status; anything else is logged and becomes
INTERNAL without internals, never UNKNOWN with a stack trace.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from gateway.accept.desk import NotificationDesk
from gateway.api import convert
from gateway.api.status import to_grpc_status, to_item_error
from gateway.core.auth import Caller, hash_api_key, key_from_metadata
from gateway.core.errors import KaskadError, Unauthenticated
from gateway.store.ledger import CostLedger
from gateway.store.postgres import NotificationStore
from kaskad.v1 import cost_report_pb2, cost_report_pb2_grpc, notification_pb2, notification_pb2_grpc
from router.domain import ClientId

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


class ClientAuthenticator:
    """Resolves the calling client from ``authorization: Bearer`` metadata.

    Known keys are remembered for ``cache_ttl`` seconds, so a busy client costs one
    database lookup per key and period instead of one per call; a revoked key therefore
    stops working within ``cache_ttl``. Unknown keys are never cached.
    """

    def __init__(
        self,
        store: NotificationStore,
        cache_ttl: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._ttl = cache_ttl
        self._clock = clock
        self._known: dict[bytes, tuple[Caller, float]] = {}

    async def client_id(self, context: grpc.aio.ServicerContext) -> ClientId:
        return (await self.caller(context)).client_id

    async def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        return await self.authenticate(key_from_metadata(context.invocation_metadata()))

    async def authenticate(self, key: str) -> Caller:
        key_hash = hash_api_key(key)
        now = self._clock()
        cached = self._known.get(key_hash)
        if cached is not None and cached[1] > now:
            return cached[0]
        found = await self._store.authenticate(key_hash)
        if found is None:
            self._known.pop(key_hash, None)
            raise Unauthenticated("unknown or revoked API key")
        if self._ttl > 0:
            if len(self._known) > 10_000:  # bounded: keys are few; this only guards memory
                self._known.clear()
            self._known[key_hash] = (found, now + self._ttl)
        return found


class NotificationServicer(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(self, desk: NotificationDesk, auth: ClientAuthenticator) -> None:
        self._desk = desk
        self._auth = auth
        self._route_message = convert.RouteMessages()

    @rpc_errors
    async def SendNotification(
        self,
        request: notification_pb2.SendNotificationRequest,
        context: grpc.aio.ServicerContext,
    ) -> notification_pb2.SendNotificationResponse:
        client_id = await self._auth.client_id(context)
        result = await self._desk.send(client_id, convert.send_request_from_proto(request))
        return convert.accept_result_to_proto(result, self._route_message)

    @rpc_errors
    async def SendNotificationBatch(
        self,
        request: notification_pb2.SendNotificationBatchRequest,
        context: grpc.aio.ServicerContext,
    ) -> notification_pb2.SendNotificationBatchResponse:
        client_id = await self._auth.client_id(context)
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
        client_id = await self._auth.client_id(context)
        notification_id = convert.notification_id_from_proto(request.notification_id)
        record = await self._desk.get(client_id, notification_id)
        return notification_pb2.GetNotificationResponse(notification=convert.notification_to_proto(record))

    @rpc_errors
    async def CancelNotification(
        self,
        request: notification_pb2.CancelNotificationRequest,
        context: grpc.aio.ServicerContext,
    ) -> notification_pb2.CancelNotificationResponse:
        client_id = await self._auth.client_id(context)
        notification_id = convert.notification_id_from_proto(request.notification_id)
        record = await self._desk.cancel(client_id, notification_id)
        return notification_pb2.CancelNotificationResponse(notification=convert.notification_to_proto(record))


class CostReportServicer(cost_report_pb2_grpc.CostReportServiceServicer):
    """The cost ledger: a ``finance`` client reads every client's costs, any other client
    only its own (a report filtered to other clients is refused)."""

    def __init__(self, ledger: CostLedger, auth: ClientAuthenticator) -> None:
        self._ledger = ledger
        self._auth = auth

    @rpc_errors
    async def GetCostReport(
        self,
        request: cost_report_pb2.GetCostReportRequest,
        context: grpc.aio.ServicerContext,
    ) -> cost_report_pb2.GetCostReportResponse:
        caller = await self._auth.caller(context)
        report = await self._ledger.report(convert.cost_query_from_proto(request).for_caller(caller))
        return convert.cost_report_to_proto(report)
