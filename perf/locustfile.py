"""Locust load for Kaskad's ``NotificationService`` through real gRPC stubs.

Locust's documented pattern for non-HTTP systems: sync gRPC made gevent-friendly with
``grpc.experimental.gevent.init_gevent()``, a channel per user, and every call timed and
reported with ``environment.events.request.fire`` (failures carry the gRPC status code).

    locust -f perf/locustfile.py --headless -u 64 -r 16 -t 30s --csv perf/results/raw/run

Configuration, all from the environment:

==================================  =======================================================
``KASKAD_TARGET``                   ``host:port`` of the gateway; a comma list spreads the
                                    users round-robin over several gateways
                                    (default ``127.0.0.1:50051``)
``KASKAD_API_KEY``                  sent as ``authorization: Bearer <key>``
``KASKAD_BENCH_PROFILE``            ``mix`` (default): sends, duplicates, batches, reads;
                                    ``send``: unique ``SendNotification`` only
``KASKAD_BENCH_MIX``                task weights over the profile's, e.g.
                                    ``send=75,get=24,batch=1``
``KASKAD_BENCH_DUPLICATE_SHARE``    share of sends that repeat an earlier key with the same
                                    content (default 0.1 in ``mix``, 0 in ``send``)
``KASKAD_BENCH_BATCH_SIZE``         items per ``SendNotificationBatch`` (default 100)
``KASKAD_BENCH_TIMEOUT``            seconds per call (default 10)
``KASKAD_BENCH_WAIT``               seconds each user waits between calls (default 0: a
                                    closed loop, as fast as the server answers)
``KASKAD_BENCH_RATE``               calls per second per user (an open-ish loop at a fixed
                                    offered rate; overrides the wait; default 0: unpaced)
==================================  =======================================================

Request names in the stats: ``SendNotification``, ``SendNotification (duplicate)``,
``SendNotificationBatch[100]``, ``GetNotification``. A call is a failure when it ends with
a non-OK status or when the answer contradicts the contract (a unique key reported as a
duplicate, a duplicate with another id, a batch item error, another notification read).
"""

from __future__ import annotations

import csv
import itertools
import os
import random
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, constant, constant_throughput, events
from locust.stats import PERCENTILES_TO_REPORT, StatsCSV
from workload import send_request

from kaskad.v1 import notification_pb2, notification_pb2_grpc

# Before any channel exists: make gRPC's sync stack cooperate with locust's gevent loop.
grpc_gevent.init_gevent()

TASK_NAMES = ("send", "get", "batch")


@dataclass(frozen=True)
class Config:
    targets: tuple[str, ...]
    api_key: str
    profile: str
    weights: dict[str, int]
    duplicate_share: float
    batch_size: int
    timeout: float
    wait: float
    rate: float

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] = os.environ) -> Config:
        profile = env.get("KASKAD_BENCH_PROFILE", "mix")
        if profile == "send":
            weights, duplicate_share = {"send": 1}, 0.0
        elif profile == "mix":
            weights, duplicate_share = {"send": 75, "get": 24, "batch": 1}, 0.1
        else:
            raise ValueError(f"KASKAD_BENCH_PROFILE must be 'send' or 'mix', not {profile!r}")
        if env.get("KASKAD_BENCH_MIX"):
            weights = {}
            for part in env["KASKAD_BENCH_MIX"].split(","):
                name, _, weight = part.partition("=")
                if name.strip() not in TASK_NAMES:
                    raise ValueError(f"KASKAD_BENCH_MIX: unknown task {name!r}; tasks are {TASK_NAMES}")
                weights[name.strip()] = int(weight)
        duplicate_share = float(env.get("KASKAD_BENCH_DUPLICATE_SHARE", duplicate_share))
        targets = tuple(t.strip() for t in env.get("KASKAD_TARGET", "127.0.0.1:50051").split(",") if t)
        return cls(
            targets=targets,
            api_key=env.get("KASKAD_API_KEY", ""),
            profile=profile,
            weights={k: v for k, v in weights.items() if v > 0},
            duplicate_share=duplicate_share,
            batch_size=int(env.get("KASKAD_BENCH_BATCH_SIZE", "100")),
            timeout=float(env.get("KASKAD_BENCH_TIMEOUT", "10")),
            wait=float(env.get("KASKAD_BENCH_WAIT", "0")),
            rate=float(env.get("KASKAD_BENCH_RATE", "0")),
        )


class ContractViolation(Exception):
    """The call succeeded, but the answer is not what the contract promises."""


class GrpcFailure(Exception):
    """A call that ended with a non-OK status; the message starts with the code's name."""


@events.init.add_listener
def on_init(environment: Any, **_kwargs: Any) -> None:
    environment.events.quit.add_listener(lambda **_: write_final_csv(environment))


def write_final_csv(environment: Any) -> None:
    """Rewrite ``--csv``'s stats with the final numbers.

    Locust refreshes its CSV files once a second while running, but not after the last
    calls of a headless run, so they can miss the run's last second; this writes them from
    the final stats, in locust's own format (the history file is left as locust wrote it).
    """
    prefix = getattr(environment.parsed_options, "csv_prefix", None)
    if not prefix:  # also None in --processes workers: the master writes
        return
    writer = StatsCSV(environment, PERCENTILES_TO_REPORT)
    for suffix, write in (
        ("stats", writer.requests_csv),
        ("failures", writer.failures_csv),
        ("exceptions", writer.exceptions_csv),
    ):
        with open(f"{prefix}_{suffix}.csv", "w", newline="") as f:
            write(csv.writer(f))


_user_numbers = itertools.count()
_RUN = uuid.uuid4().hex[:8]


class KaskadUser(User):
    """One calling service instance: its own channel, keys, and memory of what it sent."""

    abstract = True
    config = Config.from_env()
    wait_time = constant_throughput(config.rate) if config.rate > 0 else constant(config.wait)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        number = next(_user_numbers)
        # The pid is read here, not at import: --processes forks after importing this file.
        run = f"{_RUN}-{os.getpid()}-{number}"
        self._rng = random.Random(run)
        self._key_prefix = f"bench-{run}-"
        self._counter = itertools.count()
        target = self.config.targets[number % len(self.config.targets)]
        self._channel = grpc.insecure_channel(target)
        self._stub = notification_pb2_grpc.NotificationServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {self.config.api_key}"),)
        # Recent sends: requests to repeat as duplicates, ids to read back.
        self._sent: deque[tuple[notification_pb2.SendNotificationRequest, str]] = deque(maxlen=500)

    def on_stop(self) -> None:
        self._channel.close()

    # -- the calls -------------------------------------------------------------------------

    def _call(self, name: str, method: Callable[..., Any], request: Any, check: Callable[[Any], None]) -> Any:
        """Make one call, time it, check the answer and report it to locust."""
        start = time.perf_counter()
        response = None
        exception: Exception | None = None
        try:
            response = method(request, metadata=self._metadata, timeout=self.config.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            exception = GrpcFailure(f"{code.name}: {details}")
        elapsed_ms = (time.perf_counter() - start) * 1000
        if response is not None:
            try:
                check(response)
            except ContractViolation as exc:
                exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=elapsed_ms,
            response_length=response.ByteSize() if response is not None else 0,
            exception=exception,
            context={},
        )
        return response if exception is None else None

    def new_request(self) -> notification_pb2.SendNotificationRequest:
        return send_request(self._rng, f"{self._key_prefix}{next(self._counter)}")

    def send(self) -> None:
        if self._sent and self._rng.random() < self.config.duplicate_share:
            self.send_duplicate()
            return
        request = self.new_request()

        def check(response: notification_pb2.SendNotificationResponse) -> None:
            if response.duplicate or not response.notification_id or not response.route.steps:
                raise ContractViolation("a new key answered as a duplicate or without an id and route")

        response = self._call("SendNotification", self._stub.SendNotification, request, check)
        if response is not None:
            self._sent.append((request, response.notification_id))

    def send_duplicate(self) -> None:
        request, original_id = self._rng.choice(self._sent)

        def check(response: notification_pb2.SendNotificationResponse) -> None:
            if not response.duplicate or response.notification_id != original_id:
                raise ContractViolation("a repeated key did not return the original notification")

        self._call("SendNotification (duplicate)", self._stub.SendNotification, request, check)

    def batch(self) -> None:
        requests = [self.new_request() for _ in range(self.config.batch_size)]

        def check(response: notification_pb2.SendNotificationBatchResponse) -> None:
            errors = [r.error.message for r in response.results if r.HasField("error")]
            if errors or len(response.results) != len(requests):
                raise ContractViolation(f"{len(errors)} batch item error(s), first: {errors[:1]}")

        response = self._call(
            f"SendNotificationBatch[{len(requests)}]",
            self._stub.SendNotificationBatch,
            notification_pb2.SendNotificationBatchRequest(requests=requests),
            check,
        )
        if response is not None:
            for result in response.results[:10]:  # remember a few for reads and duplicates
                self._sent.append((requests[result.index], result.response.notification_id))

    def get(self) -> None:
        if not self._sent:
            self.send()  # nothing to read yet
            return
        _, notification_id = self._rng.choice(self._sent)

        def check(response: notification_pb2.GetNotificationResponse) -> None:
            if response.notification.notification_id != notification_id:
                raise ContractViolation("read back another notification than the one asked for")

        self._call(
            "GetNotification",
            self._stub.GetNotification,
            notification_pb2.GetNotificationRequest(notification_id=notification_id),
            check,
        )


TASKS: dict[str, Callable[[KaskadUser], None]] = {
    "send": KaskadUser.send,
    "get": KaskadUser.get,
    "batch": KaskadUser.batch,
}


class NotificationCaller(KaskadUser):
    """The user locust runs: the configured profile's tasks with their weights."""

    tasks = {TASKS[name]: weight for name, weight in KaskadUser.config.weights.items()}  # noqa: RUF012
