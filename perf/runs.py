"""Load and what it measured: locust runs (per-call figures from locust's CSVs, the CPU each
part of the machine used meanwhile, py-spy samples) and bulk sends through the batch call."""

from __future__ import annotations

import contextlib
import csv
import os
import random
import re
import shutil
import subprocess
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import psutil
from cluster import BIN, PERF, Child, Cluster, cpu_seconds, env_int, log

OTHERS = "everything else on the machine"
CONTENDED = 0.25  # of one core used by processes that are not part of the bench
CLI = r"gateway/(runtime/)?cli\.py"  # start-up, not the path under test


def met(ok: bool) -> str:
    return "met" if ok else "not met"


@dataclass
class Stat:
    name: str
    requests: int
    failures: int
    rps: float
    p50: float
    p95: float
    p99: float

    @property
    def ok_rps(self) -> float:
        """Calls per second that succeeded: a fast refusal is not an accepted call."""
        return self.rps * (self.requests - self.failures) / self.requests if self.requests else 0.0


def read_stats(path: Path) -> list[Stat]:
    stats = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            stats.append(
                Stat(
                    name=row["Name"],
                    requests=int(row["Request Count"]),
                    failures=int(row["Failure Count"]),
                    rps=float(row["Requests/s"]),
                    p50=float(row["50%"]),
                    p95=float(row["95%"]),
                    p99=float(row["99%"]),
                )
            )
    return stats


def read_failures(path: Path, top: int = 3) -> list[str]:
    """The most frequent errors in a locust ``_failures.csv``, for the summary to quote."""
    with contextlib.suppress(OSError), path.open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: -int(r["Occurrences"]))
        return [f"{r['Occurrences']}× `{r['Name']}`: {r['Error']}" for r in rows[:top]]
    return []


@dataclass
class Run:
    name: str
    profile: str
    gateways: int
    users: int
    duration: int
    locust_processes: int
    stats: list[Stat]
    cpu: dict[str, float]
    wall: float
    paced: float = 0.0  # total offered calls/s; 0: closed loop
    rss_mib: dict[str, float] = field(default_factory=dict)
    hot: list[tuple[float, str]] = field(default_factory=list)  # py-spy: share of samples, frame
    errors: list[str] = field(default_factory=list)  # the most frequent failures, if any

    def stat(self, name: str) -> Stat | None:
        return next((s for s in self.stats if s.name == name), None)

    def others(self) -> float:
        """Share of one core used by processes outside the bench during the run."""
        return self.cpu.get(OTHERS, 0.0) / self.wall if self.wall else 0.0


def hot_frames(path: Path, top: int = 25) -> list[tuple[float, str]]:
    """Kaskad's own functions by inclusive share of py-spy samples (all threads), highest first."""
    total = 0
    inclusive: Counter[str] = Counter()
    with contextlib.suppress(OSError), path.open() as f:
        for line in f:
            stack, _, count = line.rstrip().rpartition(" ")
            total += int(count)
            frames = {re.sub(r":\d+\)$", ")", frame) for frame in stack.split(";")}
            for frame in frames:
                if re.search(r"\((gateway|router|providers)/", frame) and not re.search(CLI, frame):
                    inclusive[frame] += int(count)
    return [(n / total, frame) for frame, n in inclusive.most_common(top)] if total else []


# -- locust ------------------------------------------------------------------------------


def _locust_args(csv_prefix: Path, users: int, duration: int, processes: int) -> list[str]:
    args = [
        *(str(BIN / "locust"), "-f", str(PERF / "locustfile.py"), "--headless"),
        # All users within a second: the run measures the steady state.
        *("-u", str(users), "-r", str(users), "-t", f"{duration}s", "--stop-timeout", "5"),
        *("--csv", str(csv_prefix), "--only-summary", "--exit-code-on-error", "0"),
    ]
    return [*args, "--processes", str(processes)] if processes > 1 else args


def _start_profiler(cluster: Cluster, name: str, duration: int) -> Child | None:
    """py-spy on the server under test, if this run is to be sampled (collapsed stacks)."""
    if name not in cluster.profile:
        return None
    flags = os.environ.get("BENCH_PYSPY_FLAGS", "").split()
    return cluster.spawn(
        f"py-spy-{name}",
        [
            *(str(BIN / "py-spy"), "record", "--pid", str(cluster.profile[name]), *flags),
            *("--duration", str(duration), "--rate", "200", "--format", "raw"),
            *("--output", str(cluster.raw / f"{name}.pyspy.txt")),
        ],
    )


def _part_cpu(cluster: Cluster, watch: dict[str, list[Child]]) -> dict[str, float]:
    """Cumulative CPU seconds of each watched part, then PostgreSQL and Redis if embedded."""
    parts = {part: cpu_seconds([p for c in kids for p in c.tree()]) for part, kids in watch.items()}
    if cluster.postgres is not None:
        parts["postgres"] = cluster.postgres_cpu()
    if cluster.redis is not None:
        parts["redis"] = cluster.redis_cpu()
    return parts


def _busy(before: Any, after: Any) -> float:
    """CPU seconds the whole machine was busy between two readings."""
    busy = sum(after) - sum(before)
    return busy - (after.idle - before.idle) - (after.iowait - before.iowait)


def _wait_locust(cluster: Cluster, child: Child, name: str, deadline: float) -> float:
    """Wait for locust to end; the CPU seconds it used (read while it runs)."""
    locust_cpu = 0.0
    try:
        while child.proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"locust run {name} did not end; see {child.log_path}")
            locust_cpu = max(locust_cpu, cpu_seconds(child.tree()))
            time.sleep(0.5)
    finally:
        cluster.retire(child)
    return locust_cpu


def run_locust(
    cluster: Cluster,
    name: str,
    targets: list[str],
    profile: str,
    api_key: str,
    watch: dict[str, list[Child]],
    paced: float = 0.0,
    duration: int | None = None,
) -> Run:
    """One headless locust run against ``targets``; CPU of ``watch``'s parts measured too."""
    users = env_int("BENCH_USERS", 64)
    duration = duration or env_int("BENCH_DURATION", 30)
    processes = env_int("BENCH_LOCUST_PROCESSES", 1)
    csv_prefix = cluster.raw / name
    for stale in cluster.raw.glob(f"{name}_*.csv"):  # nothing written must not read as old figures
        stale.unlink()
    log(f"run {name}: {users} users, {duration} s, profile {profile}, against {', '.join(targets)}")
    before, machine_before = _part_cpu(cluster, watch), psutil.cpu_times()
    started = time.monotonic()
    profiler = _start_profiler(cluster, name, duration)
    child = cluster.spawn(
        f"locust-{name}",
        _locust_args(csv_prefix, users, duration, processes),
        {
            "KASKAD_TARGET": ",".join(targets),
            "KASKAD_API_KEY": api_key,
            "KASKAD_BENCH_PROFILE": profile,
            "KASKAD_BENCH_RATE": str(paced / users),
        },
    )
    try:
        locust_cpu = _wait_locust(cluster, child, name, started + duration + 90)
    finally:
        if profiler is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                profiler.proc.wait(30)
            cluster.retire(profiler)
    wall = time.monotonic() - started
    after = _part_cpu(cluster, watch)
    cpu = {part: after[part] - before[part] for part in watch}
    cpu["locust"] = locust_cpu
    cpu.update({part: after[part] - before[part] for part in after if part not in watch})
    cpu[OTHERS] = max(0.0, _busy(machine_before, psutil.cpu_times()) - sum(cpu.values()))
    if child.proc.returncode != 0:
        raise RuntimeError(f"locust run {name} failed ({child.proc.returncode}); see {child.log_path}")
    shutil.copy(child.log_path, cluster.raw / f"{name}.log")
    stats = read_stats(Path(f"{csv_prefix}_stats.csv"))
    run = Run(name, profile, len(targets), users, duration, processes, stats, cpu, wall, paced)
    run.errors = read_failures(Path(f"{csv_prefix}_failures.csv"))
    log(f"run {name}: " + "; ".join(f"{s.name} {s.rps:.0f}/s p99 {s.p99:.0f} ms" for s in stats))
    return run


# -- bulk sends --------------------------------------------------------------------------


def accept_many(
    target: str,
    api_key: str,
    count: int,
    batch: int = 1000,
    threads: int = 4,
    phones: list[str] | None = None,
) -> None:
    """Send ``count`` unique notifications through ``SendNotificationBatch`` (sync gRPC, a few
    threads), to random numbers, or with ``phones`` one to each of them (``count`` of them)."""
    from kaskad.v1 import notification_pb2, notification_pb2_grpc

    metadata = (("authorization", f"Bearer {api_key}"),)
    run = uuid.uuid4().hex[:8]
    rng = random.Random(run)
    numbers = phones or [f"+7916{rng.randrange(10_000_000):07d}" for _ in range(count)]

    def one(number: int) -> None:
        size = min(batch, count - number * batch)
        requests = [
            notification_pb2.SendNotificationRequest(
                idempotency_key=f"memory-{run}-{number}-{i}",
                recipient=notification_pb2.Recipient(phone=numbers[number * batch + i]),
                text=f"Заказ №{number * batch + i} собран и передан в доставку.",
            )
            for i in range(size)
        ]
        with grpc.insecure_channel(target) as channel:
            response = notification_pb2_grpc.NotificationServiceStub(channel).SendNotificationBatch(
                notification_pb2.SendNotificationBatchRequest(requests=requests),
                metadata=metadata,
                timeout=300,
            )
        errors = [r.error.message for r in response.results if r.HasField("error")]
        if errors:
            raise RuntimeError(f"{len(errors)} of {size} notifications refused, first: {errors[0]}")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range((count + batch - 1) // batch)))
