"""The shape every Kaskad server interceptor shares: wrap each unary handler once."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc


class UnaryWrapping(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio has no stubs
    """Replaces each unary-unary handler by :meth:`wrap`'s, built once per method."""

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
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler  # not found, or streaming (health's Watch): grpc's own handling
        wrapped = self.wrap(method, handler)
        if wrapped is not handler:
            self._wrapped[method] = wrapped  # one per registered method: bounded
        return wrapped

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """The handler to serve ``method`` with; ``handler`` itself to leave it alone."""
        raise NotImplementedError
