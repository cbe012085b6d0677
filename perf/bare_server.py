"""A bare ``kaskad.v1.NotificationService``: Python gRPC's own limit on this machine.

One process, ``grpc.aio``, no auth, no database: every call answers at once with a response
of the same shape and size as Kaskad's (a fresh id, the 3-step VK/Viber/SMS route with the
voice step skipped). It remembers idempotency keys in memory (bounded) so the realistic mix
sees duplicates answered as Kaskad would. The benchmark runs the same load against it and
against Kaskad and reports Kaskad as a ratio of it.

    python perf/bare_server.py [--address 127.0.0.1:50061]

Prints ``listening on PORT`` once serving; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import time
import uuid

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from kaskad.v1 import common_pb2, notification_pb2, notification_pb2_grpc

MAX_REMEMBERED_KEYS = 1_000_000
_PRICES = ((common_pb2.CHANNEL_VK, "vk", 0, 350_000_000), (common_pb2.CHANNEL_VIBER, "viber", 1, 200_000_000))
_PRICES += ((common_pb2.CHANNEL_SMS, "sms", 4, 500_000_000),)


def fixed_route() -> notification_pb2.Route:
    """The route Kaskad's fixed-order planner gives a text with no channel restriction."""
    route = notification_pb2.Route(
        expected_cost=common_pb2.Money(currency_code="RUB", units=0, nanos=350_000_000)
    )
    for channel, provider, units, nanos in _PRICES:
        route.steps.append(
            notification_pb2.RouteStep(
                channel=channel,
                provider=provider,
                expected_cost=common_pb2.Money(currency_code="RUB", units=units, nanos=nanos),
                delivery_probability=1.0,
                wait=duration_pb2.Duration(seconds=120),
            )
        )
    route.skipped.append(
        notification_pb2.SkippedChannel(
            channel=common_pb2.CHANNEL_VOICE, reason="voice robot is the no-answer fallback for READ acks"
        )
    )
    return route


class BareNotificationService(notification_pb2_grpc.NotificationServiceServicer):
    def __init__(self) -> None:
        self._route = fixed_route()
        self._keys: dict[str, str] = {}
        self._requests: dict[str, notification_pb2.SendNotificationRequest] = {}

    def _accept(
        self, request: notification_pb2.SendNotificationRequest
    ) -> notification_pb2.SendNotificationResponse:
        known = self._keys.get(request.idempotency_key)
        if known is not None:
            return notification_pb2.SendNotificationResponse(
                notification_id=known, duplicate=True, route=self._route
            )
        if len(self._keys) >= MAX_REMEMBERED_KEYS:
            self._keys.clear()
            self._requests.clear()
        notification_id = str(uuid.uuid4())
        self._keys[request.idempotency_key] = notification_id
        if len(self._requests) < 10_000:  # enough for GetNotification to answer with real fields
            self._requests[notification_id] = request
        return notification_pb2.SendNotificationResponse(notification_id=notification_id, route=self._route)

    async def SendNotification(
        self, request: notification_pb2.SendNotificationRequest, context: grpc.aio.ServicerContext
    ) -> notification_pb2.SendNotificationResponse:
        return self._accept(request)

    async def SendNotificationBatch(
        self, request: notification_pb2.SendNotificationBatchRequest, context: grpc.aio.ServicerContext
    ) -> notification_pb2.SendNotificationBatchResponse:
        return notification_pb2.SendNotificationBatchResponse(
            results=[
                notification_pb2.SendNotificationBatchResult(index=index, response=self._accept(item))
                for index, item in enumerate(request.requests)
            ]
        )

    def _notification(self, notification_id: str) -> notification_pb2.Notification:
        now = timestamp_pb2.Timestamp()
        now.FromNanoseconds(time.time_ns())
        deadline = timestamp_pb2.Timestamp(seconds=now.seconds + 86_400)
        original = self._requests.get(notification_id, notification_pb2.SendNotificationRequest())
        phone = original.recipient.phone or "+79160000000"
        return notification_pb2.Notification(
            notification_id=notification_id,
            idempotency_key=original.idempotency_key,
            state=notification_pb2.NOTIFICATION_STATE_ACCEPTED,
            recipient=notification_pb2.Recipient(phone=f"{phone[:2]}{'*' * (len(phone) - 4)}{phone[-2:]}"),
            ack_policy=notification_pb2.ACK_POLICY_DELIVERED,
            route=self._route,
            create_time=now,
            update_time=now,
            deadline=deadline,
            metadata=dict(original.metadata),
        )

    async def GetNotification(
        self, request: notification_pb2.GetNotificationRequest, context: grpc.aio.ServicerContext
    ) -> notification_pb2.GetNotificationResponse:
        return notification_pb2.GetNotificationResponse(
            notification=self._notification(request.notification_id)
        )

    async def CancelNotification(
        self, request: notification_pb2.CancelNotificationRequest, context: grpc.aio.ServicerContext
    ) -> notification_pb2.CancelNotificationResponse:
        notification = self._notification(request.notification_id)
        notification.state = notification_pb2.NOTIFICATION_STATE_CANCELLED
        return notification_pb2.CancelNotificationResponse(notification=notification)


async def serve(address: str) -> None:
    server = grpc.aio.server()
    notification_pb2_grpc.add_NotificationServiceServicer_to_server(BareNotificationService(), server)
    port = server.add_insecure_port(address)
    await server.start()
    print(f"listening on {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="127.0.0.1:50061", help="listen address (port 0: any free port)")
    asyncio.run(serve(parser.parse_args().address))


if __name__ == "__main__":
    main()
