"""The notification desk: accept, look up and cancel notifications for a calling client.

It is the application service behind the gRPC servicer: validate and render (intake),
plan the route, store durably; no gRPC types here.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TypeVar

from opentelemetry.trace import SpanKind

from gateway.accept.admission import Admission
from gateway.accept.intake import Intake
from gateway.accept.planning import RoutePlanner
from gateway.cascade.engine import CascadeEngine
from gateway.core.clock import Clock
from gateway.core.errors import FieldViolation, InvalidArgument, KaskadError
from gateway.core.model import AcceptResult, NotificationRecord, SendRequest
from gateway.core.telemetry import Telemetry
from gateway.store.cascade import CascadeStore
from gateway.store.postgres import NotificationStore
from router.domain import ClientId, NotificationId

log = logging.getLogger(__name__)

Item = TypeVar("Item")


class ItemFailed(KaskadError):
    """A batch item failed for a reason of Kaskad's own (INTERNAL); the log has the traceback."""


@dataclass(frozen=True, slots=True)
class BatchItemResult:
    index: int
    result: AcceptResult | None = None
    error: KaskadError | None = None


class NotificationDesk:
    def __init__(
        self,
        store: NotificationStore,
        intake: Intake,
        planner: RoutePlanner,
        cascades: CascadeStore,
        engine: CascadeEngine,
        clock: Clock,
        max_batch_size: int,
        batch_concurrency: int,
        admission: Admission,
        telemetry: Telemetry,
        on_accepted: Callable[[], None] = lambda: None,
        on_accept_time: Callable[[float], None] = lambda seconds: None,
    ) -> None:
        self._admission = admission
        self._telemetry = telemetry
        self._store = store
        self._intake = intake
        self._planner = planner
        self._cascades = cascades
        self._engine = engine
        self._clock = clock
        self._max_batch_size = max_batch_size
        self._batch_concurrency = batch_concurrency
        self._on_accepted = on_accepted
        self._on_accept_time = on_accept_time

    async def send(self, client_id: ClientId, request: SendRequest) -> AcceptResult:
        """Validate, plan and store one notification; returns once it is committed."""
        await self._admission.admit(client_id, 1)
        return await self._accept(client_id, request)

    async def _accept(self, client_id: ClientId, request: SendRequest) -> AcceptResult:
        began = time.perf_counter()
        with self._telemetry.span("kaskad.accept", kind=SpanKind.SERVER) as span:
            now = self._clock.now()
            new = self._intake.validate(client_id, request, now)
            with self._telemetry.span("kaskad.plan"):
                plan = await self._planner.plan(new, now)
            result = await self._store.accept(
                new, plan, self._planner.sms_baseline(new), now, self._telemetry.inject()
            )
            span.set_attribute("kaskad.notification_id", str(result.notification_id))
            span.set_attribute("kaskad.duplicate", result.duplicate)
            span.set_attribute("kaskad.route", ",".join(step.channel.value for step in plan.steps))
        self._on_accept_time(time.perf_counter() - began)
        if not result.duplicate:
            self._telemetry.accepted()
            self._on_accepted()
        if log.isEnabledFor(logging.INFO):  # its arguments cost more than the call when it is off
            log.info(
                "accepted notification %s (duplicate=%s, channels=%s)",
                result.notification_id,
                result.duplicate,
                ",".join(c.value for c in new.channels),
            )
        return result

    async def send_batch(
        self,
        client_id: ClientId,
        requests: Sequence[Item],
        to_request: Callable[[Item], SendRequest],
    ) -> list[BatchItemResult]:
        """Accept each item on its own: one bad item does not fail the others.

        Each item is converted with ``to_request`` on its own too, so whatever goes wrong
        with one item, even an unexpected exception, becomes that item's error.
        """
        if not requests:
            raise InvalidArgument([FieldViolation("requests", "at least one item is required")])
        if len(requests) > self._max_batch_size:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "requests",
                        f"at most {self._max_batch_size} items per batch, got {len(requests)}",
                    )
                ]
            )
        # The whole batch is admitted or refused before anything is written.
        await self._admission.admit(client_id, len(requests))
        limit = asyncio.Semaphore(self._batch_concurrency)

        async def one(index: int, item: Item) -> BatchItemResult:
            async with limit:
                try:
                    return BatchItemResult(index, result=await self._accept(client_id, to_request(item)))
                except KaskadError as exc:
                    return BatchItemResult(index, error=exc)
                except Exception:
                    log.exception("unexpected error in batch item %d", index)
                    return BatchItemResult(index, error=ItemFailed("internal error; see the gateway log"))

        return list(await asyncio.gather(*(one(i, r) for i, r in enumerate(requests))))

    async def get(self, client_id: ClientId, notification_id: NotificationId) -> NotificationRecord:
        """The notification with its plan and every attempt; NotFound for another client's id."""
        record = await self._store.get(notification_id, client_id)
        attempts = await self._cascades.attempts(notification_id)
        return replace(record, attempts=tuple(attempts))

    async def cancel(self, client_id: ClientId, notification_id: NotificationId) -> NotificationRecord:
        """Stop pending steps; a notification already final is returned as it is."""
        await self._store.get(notification_id, client_id)  # NotFound unless it is this client's
        await self._engine.cancel(notification_id)
        return await self.get(client_id, notification_id)
