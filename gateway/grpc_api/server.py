"""The gRPC server: Kaskad's services plus standard health checking and reflection."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.grpc_api.servicers import CostReportServicer, NotificationServicer
from kaskad.v1 import cost_report_pb2, cost_report_pb2_grpc, notification_pb2, notification_pb2_grpc

SERVICE_NAMES = (
    notification_pb2.DESCRIPTOR.services_by_name["NotificationService"].full_name,
    cost_report_pb2.DESCRIPTOR.services_by_name["CostReportService"].full_name,
)
# Reported NOT_SERVING while Redis is unreachable: Kaskad still accepts (PostgreSQL is the
# truth), and this tells operators and generic tools that it runs degraded.
REDIS_HEALTH_NAME = "kaskad.dependency.redis"


class _Undecodable:
    """What a request deserializer returns for bytes that are not a valid message."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


class RequestDecoding(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Garbage request bytes get INVALID_ARGUMENT with a plain message.

    Left to grpc, a deserializer's exception becomes UNKNOWN with the parser's internals.
    Each unary handler's deserializer is wrapped to return a marker instead of
    raising, and its behaviour answers the marker before the servicer sees it.
    """

    def __init__(self) -> None:
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None or handler.request_streaming:
            return handler
        if handler.response_streaming or handler.unary_unary is None:
            return handler  # Kaskad's methods are unary; health's Watch keeps grpc's handling
        wrapped = grpc.unary_unary_rpc_method_handler(
            _refusing_undecodable(handler.unary_unary),
            request_deserializer=_safe(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = wrapped  # one per registered method: bounded
        return wrapped


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
    health_servicer: health.aio.HealthServicer,
) -> tuple[grpc.aio.Server, int]:
    """Build a server bound to ``address`` (port 0 picks a free one); returns it and the port."""
    server = grpc.aio.server(interceptors=[RequestDecoding()])
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


async def mark_serving(health_servicer: health.aio.HealthServicer) -> None:
    for name in ("", *SERVICE_NAMES):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
