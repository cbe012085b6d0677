"""Who is calling: one gRPC interceptor authenticates every call to Kaskad's services.

The interceptor resolves the ``authorization: Bearer`` key to a :class:`Caller` before the
servicer runs and hands it over in a context variable (:func:`current_caller`); a call
without a valid key never reaches a servicer. Health and reflection stay open.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any

import grpc

from gateway.api.interceptors import UnaryWrapping
from gateway.api.status import to_grpc_status
from gateway.core.auth import Caller, hash_api_key, key_from_metadata
from gateway.core.errors import KaskadError, Unauthenticated
from gateway.store.postgres import NotificationStore

log = logging.getLogger(__name__)

_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("kaskad_caller", default=None)


def current_caller() -> Caller:
    """The caller the interceptor authenticated for this call; refused if there is none."""
    caller = _CALLER.get()
    if caller is None:  # a servicer mounted without the interceptor fails closed
        raise Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
    return caller


class ClientAuthenticator:
    """Resolves an API key to its calling client.

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


class Authentication(UnaryWrapping):
    """Authenticates each unary call to the services named in ``services``."""

    def __init__(self, authenticator: ClientAuthenticator, services: tuple[str, ...]) -> None:
        super().__init__()
        self._authenticator = authenticator
        self._prefixes = tuple(f"/{name}/" for name in services)

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if not method.startswith(self._prefixes):
            return handler  # health and reflection stay open
        return grpc.unary_unary_rpc_method_handler(
            self._authenticating(handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _authenticating(self, behaviour: Callable[..., Any]) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                key = key_from_metadata(context.invocation_metadata())
                caller = await self._authenticator.authenticate(key)
            except KaskadError as exc:  # Unauthenticated, or the store unavailable
                await context.abort_with_status(to_grpc_status(exc))
            except Exception:
                log.exception("unexpected error while authenticating a call")
                await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the gateway log")
            token = _CALLER.set(caller)
            try:
                return await behaviour(request, context)
            finally:
                _CALLER.reset(token)

        return call
