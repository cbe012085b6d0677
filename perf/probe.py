"""Latency as a ``grpc.aio`` client sees it: a second opinion on locust's figures.

Locust times sync gRPC calls made cooperative under gevent; a call that is not answered
at once comes back to its greenlet late, so locust's latencies carry tens of
milliseconds of its own (see the bench summary: the bare server, which answers at once,
shows the least of it). This client offers unique ``SendNotification`` calls at a fixed
total rate from ``--users`` concurrent callers on one asyncio loop, times each call from
just before it is sent to its answer, and prints the figures as one JSON object:

    python perf/probe.py --target 127.0.0.1:50051 --api-key KEY --users 64 --rate 250 --duration 20

Each caller sends on a fixed schedule (an open loop): a call that is late does not push
the next one back, so a slow server cannot lower the rate it is offered and hide its
latency (no coordinated omission beyond the ``--users`` calls in flight).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
import uuid
from dataclasses import asdict, dataclass

import grpc
from workload import send_request

from kaskad.v1 import notification_pb2_grpc


@dataclass(frozen=True)
class ProbeResult:
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


def percentile(ordered: list[float], share: float) -> float:
    """The nearest-rank percentile of an ascending list (0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


async def probe(target: str, api_key: str, users: int, rate: float, duration: float) -> ProbeResult:
    metadata = (("authorization", f"Bearer {api_key}"),)
    latencies: list[float] = []
    failures = 0
    prefix = f"probe-{uuid.uuid4().hex[:12]}-"
    interval = users / rate
    async with grpc.aio.insecure_channel(target) as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        stub = notification_pb2_grpc.NotificationServiceStub(channel)
        started = time.monotonic()
        end = started + duration

        async def caller(index: int) -> None:
            nonlocal failures
            rng = random.Random(index)
            due = started + interval * index / users  # callers spread evenly over one interval
            sent = 0
            while due < end:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                request = send_request(rng, f"{prefix}{index}-{sent}")
                sent += 1
                began = time.perf_counter()
                try:
                    await stub.SendNotification(request, metadata=metadata, timeout=10)
                except grpc.aio.AioRpcError:
                    failures += 1
                else:
                    latencies.append(time.perf_counter() - began)
                due += interval

        await asyncio.gather(*(caller(i) for i in range(users)))
        elapsed = time.monotonic() - started
    latencies.sort()
    ms = [value * 1000 for value in latencies]
    return ProbeResult(
        requests=len(ms) + failures,
        failures=failures,
        rps=len(ms) / elapsed if elapsed else 0.0,
        p50_ms=percentile(ms, 0.50),
        p95_ms=percentile(ms, 0.95),
        p99_ms=percentile(ms, 0.99),
        max_ms=ms[-1] if ms else 0.0,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--rate", type=float, default=250, help="calls per second, all users together")
    parser.add_argument("--duration", type=float, default=20, help="seconds")
    args = parser.parse_args(argv)
    if args.users < 1 or args.rate <= 0 or args.duration <= 0:
        parser.error("--users, --rate and --duration must be positive")
    result = asyncio.run(probe(args.target, args.api_key, args.users, args.rate, args.duration))
    print(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
