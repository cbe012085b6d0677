"""The gRPC server: Kaskad's services plus standard health checking and reflection."""

from __future__ import annotations

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


def create_server(
    address: str,
    notifications: NotificationServicer,
    cost_reports: CostReportServicer,
    health_servicer: health.aio.HealthServicer,
) -> tuple[grpc.aio.Server, int]:
    """Build a server bound to ``address`` (port 0 picks a free one); returns it and the port."""
    server = grpc.aio.server()
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
