"""Memory: a gateway's RSS with many notifications accepted and pending (workers paused),
the figure that tells whether pending work is held in the process. Target: < 300 MB."""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil
from cluster import Cluster, log, pending
from runs import accept_many, met

TARGET_MEMORY_MB = 300


@dataclass(frozen=True)
class PendingMemory:
    mb: float  # the gateway's RSS, MB
    pending: int  # notifications not final when it was read
    took: float  # seconds to accept them


def pending_memory(cluster: Cluster, count: int) -> PendingMemory:
    """An accept-only gateway (``KASKAD_WORKERS=0``, so nothing moves the notifications on) on a
    database of its own takes ``count`` notifications in batches of 1,000; then its RSS is read.
    The other gateways are stopped first: their CPU and connections stay out of this run."""
    cluster.retire(*[c for c in cluster.children if c.name.startswith("gateway-")])
    url, api_key = cluster.own_database("kaskad_bench_memory")
    # 100,000 due start items are the point here, not a backlog to refuse.
    gateway, target = cluster.start_gateway(
        "gateway-memory", 0, 0, {"KASKAD_DATABASE_URL": url, "KASKAD_MAX_BACKLOG": "0"}
    )
    try:
        started = time.monotonic()
        accept_many(target, api_key, count)
        took = time.monotonic() - started
        waiting = pending(url)
        found = PendingMemory(psutil.Process(gateway.proc.pid).memory_info().rss / 1e6, waiting, took)
    finally:
        cluster.retire(gateway)
    log(
        f"memory: gateway RSS {found.mb:.0f} MB with {found.pending} notifications pending "
        f"({took:.0f} s to accept)"
    )
    return found


def memory_section(memory: PendingMemory | None) -> list[str]:
    if memory is None:
        return []
    return [
        f"Memory: an accept-only gateway (workers paused: `KASKAD_WORKERS=0`) on a database of its "
        f"own took {memory.pending:,} notifications through `SendNotificationBatch` in {memory.took:.0f} s; "
        f"with all of them pending its RSS was **{memory.mb:.0f} MB** (target < {TARGET_MEMORY_MB} MB: "
        f"{met(memory.mb < TARGET_MEMORY_MB)}).",
        "",
    ]
