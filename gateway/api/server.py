"""The gRPC server: Kaskad's services plus standard health checking and reflection."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.api.authentication import Authentication, ClientAuthenticator
from gateway.api.interceptors import UnaryWrapping
from gateway.api.servicers import CostReportServicer, NotificationServicer
from kaskad.v1 import cost_report_pb2, cost_report_pb2_grpc, notification_pb2, notification_pb2_grpc

SERVICE_NAMES = (
    notification_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name,
    cost_report_pb2.DESCRIPTOR.services_by_name["CostReportService"].full_name,
)
# Reported NOT_SERVING while Redis is unreachable: Kaskad still accepts (PostgreSQL is the
# truth), and this tells operators and generic tools that it runs degraded.
REDIS_HEALTH_NAME = "kaskad.dependency.redis"

_REFUSED = "the gateway is shutting down; nothing was done, retry (another instance will take it)"


class CallGate(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio has no stubs
    """Notes when each call arrives and, once the gateway drains, refuses new ones.

    Stopping a grpc.aio server cancels the calls that have arrived but that no handler has
    taken yet (the server takes them one at a time), and their callers hear CANCELLED,
    which does not say whether anything was done. So before the stop the gateway refuses
    new calls itself, with UNAVAILABLE (nothing done, retry), until none has arrived for a
    while: by then no call waits untaken, and the stop lets the ones in flight finish.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._refusing = False
        self._last_arrival = float("-inf")

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        self._last_arrival = self._clock()
        handler = await continuation(handler_call_details)
        if self._refusing and handler is not None:
            return _refusing(handler)
        return handler

    async def refuse_new_calls(self, quiet: float) -> None:
        """Refuse every call from now on; return once none has arrived for ``quiet`` seconds."""
        if not self._refusing:
            self._refusing = True
            if self._clock() - self._last_arrival < quiet:
                self._last_arrival = self._clock()  # calls may be on their way: wait a full window
        while True:
            left = self._last_arrival + quiet - self._clock()
            if left <= 0:
                return
            await asyncio.sleep(left)  # a shutdown pause for calls already sent, not a business timer


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]  # grpc_health has no stubs
    """The standard health service, whose Watch streams end when the gateway stops taking calls.

    A Watch never ends by itself, so a load balancer watching would hold the stop for the
    whole grace period; it has seen NOT_SERVING by then and reconnects elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self._ending = asyncio.Event()

    def end_watches(self) -> None:
        self._ending.set()

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        watching = asyncio.ensure_future(super().Watch(request, context))
        ending = asyncio.ensure_future(self._ending.wait())
        try:
            await asyncio.wait({watching, ending}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            ending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAVAILABLE, _REFUSED)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers UNAVAILABLE at once."""
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return make(
        _refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class _Undecodable:
    """What a request deserializer returns for bytes that are not a valid message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class RequestDecoding(UnaryWrapping):
    """Garbage request bytes get INVALID_ARGUMENT with a plain message.

    Left to grpc, a deserializer's exception becomes UNKNOWN with the parser's internals.
    Each unary handler's deserializer is wrapped to return a marker instead of
    raising, and its behaviour answers the marker before the servicer sees it.
    """

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            _refusing_undecodable(handler.unary_unary),
            request_deserializer=_safe(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )


def _safe(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    owner = getattr(deserializer, "__self__", None)  # Message.FromString is a class method
    descriptor = getattr(owner, "DESCRIPTOR", None)
    name = getattr(descriptor, "name", "request")
    refusal = f"the request is not a valid {name} message"

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception:  # DecodeError, and whatever else a parser raises on garbage
            return _Undecodable(refusal)

    return deserialize


def _refusing_undecodable(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    async def answer(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behaviour(request, context)

    return answer


def create_server(
    address: str,
    notifications: NotificationServicer,
    cost_reports: CostReportServicer,
    health_servicer: HealthServicer,
    gate: CallGate,
    authenticator: ClientAuthenticator,
) -> tuple[grpc.aio.Server, int]:
    """Build a server bound to ``address`` (port 0 picks a free one); returns it and the port.

    Interceptors, outermost first: the drain gate, undecodable bytes, authentication.
    """
    server = grpc.aio.server(
        interceptors=[gate, RequestDecoding(), Authentication(authenticator, SERVICE_NAMES)]
    )
    notification_pb2_grpc.add_NotificationServiceServicer_to_server(notifications, server)
    cost_report_pb2_grpc.add_CostReportServiceServicer_to_server(cost_reports, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC address {address}")
    return server, port


async def set_serving(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Kaskad's own services (and the server as a whole, ``""``) serve or not, together."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, status)
