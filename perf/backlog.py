"""The engine's own pace without gRPC load: a gateway with workers starts on a backlog of
accepted notifications, and the bench counts what the database says it finished."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cluster import Child, Cluster, EngineShape, cpu_seconds, env_int, log, pending, query
from runs import accept_many


def _per_second_sql(table: str, column: str) -> str:
    """Rows of ``table`` per second of ``column`` in [$1, $2), one entry per second, zeros included."""
    return f"""(SELECT array_agg(coalesce(f.n, 0) ORDER BY s.second)
        FROM generate_series(0, floor(extract(epoch FROM $2::timestamptz - $1))::int) AS s(second)
        LEFT JOIN (
            SELECT floor(extract(epoch FROM {column} - $1))::int AS second, count(*) AS n
            FROM {table} WHERE {column} >= $1 AND {column} < $2
            GROUP BY 1) f ON f.second = s.second)"""


_BACKLOG_SQL = f"""
SELECT (SELECT count(*) FROM kaskad_notifications WHERE finished_at >= $1 AND finished_at < $2) AS finished,
       (SELECT count(*) FROM kaskad_work_items WHERE done_at >= $1 AND done_at < $2) AS items,
       (SELECT extract(epoch FROM max(done_at) - $1) FROM kaskad_work_items
        WHERE kind = 'start' AND done_at >= $1) AS starts_done_s,
       {_per_second_sql("kaskad_notifications", "finished_at")} AS per_second,
       {_per_second_sql("kaskad_work_items", "done_at")} AS items_per_second,
       (SELECT percentile_cont(ARRAY[0.5, 0.9]) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - $1))
        FROM kaskad_notifications WHERE finished_at >= $1 AND finished_at < $2) AS finish_times
"""

Sample = tuple[float, float, float, float]  # monotonic time, cumulative CPU s: gateway, postgres, simulator


@dataclass
class BacklogDrain:
    """The backlog run: a worker gateway started on ``count`` accepted notifications."""

    count: int
    workers: int
    batch: int
    pool: int
    seconds: float  # from the worker gateway serving until all were final or the window closed
    finished: int  # cascades that reached a final state in that time
    items: int  # work items applied in that time
    starts_done_s: float  # when the last start item was applied
    best_10s: float  # finished cascades/s in the best 10 seconds
    items_best_10s: float  # work items done per second in the best 10 seconds
    finish_p50: float  # seconds from the start until half of the finished ones were final
    finish_p90: float
    # CPU (1.0 = one core) of the worker gateway, PostgreSQL and the simulator from the
    # start until 90% of the finished cascades were final: the busy part of the window.
    busy_cpu: tuple[float, float, float]


def best_window(counts: list[int], width: int) -> float:
    """The highest mean of ``width`` consecutive entries (all of them when there are fewer)."""
    if not counts:
        return 0.0
    width = min(width, len(counts))
    return max(sum(counts[i : i + width]) for i in range(len(counts) - width + 1)) / width


def busy_cpu(samples: list[Sample], until_s: float) -> tuple[float, float, float]:
    """Mean CPU of each process group from the first sample to the first one at least
    ``until_s`` seconds later; samples are (monotonic time, cumulative CPU seconds...)."""
    first = samples[0]
    last = next((s for s in samples if s[0] - first[0] >= until_s), samples[-1])
    elapsed = last[0] - first[0]
    if elapsed <= 0:
        return (0.0, 0.0, 0.0)
    gateway, postgres, simulator = ((last[i] - first[i]) / elapsed for i in (1, 2, 3))
    return gateway, postgres, simulator


def _watch(cluster: Cluster, url: str, gateway: Child, simulator: Child, window: int) -> list[Sample]:
    """Cumulative CPU once a second until all are final or ``window`` s passed: most cascades
    finish early in the window and the rest wait out step timers, so the CPU that matters is
    the busy part's."""

    def sample() -> Sample:
        return (
            time.monotonic(),
            cpu_seconds(gateway.tree()),
            cluster.postgres_cpu(),
            cpu_seconds(simulator.tree()),
        )

    samples = [sample()]
    deadline = time.monotonic() + window
    while time.monotonic() < deadline and pending(url) > 0:
        time.sleep(1)
        samples.append(sample())
    return samples


def _figures(
    row: Any, count: int, engine: EngineShape, seconds: float, samples: list[Sample]
) -> BacklogDrain:
    finish_times = row["finish_times"]
    return BacklogDrain(
        count=count,
        workers=engine.workers,
        batch=engine.batch,
        pool=engine.pool,
        seconds=seconds,
        finished=row["finished"],
        items=row["items"],
        starts_done_s=float(row["starts_done_s"] or float("nan")),
        best_10s=best_window(list(row["per_second"]), 10),
        items_best_10s=best_window(list(row["items_per_second"]), 10),
        finish_p50=float((finish_times or [float("nan")] * 2)[0]),
        finish_p90=float((finish_times or [float("nan")] * 2)[1]),
        busy_cpu=busy_cpu(samples, float((finish_times or [0, 0])[1])),
    )


def drain_backlog(cluster: Cluster, http_port: int, simulator: Child) -> BacklogDrain:
    """An accept-only gateway on a database of its own takes ``BENCH_BACKLOG`` notifications
    (6,000) and stops; a gateway with ``BENCH_E2E_WORKERS`` workers starts on them, watched
    for ``BENCH_BACKLOG_WINDOW`` s (60) or until all are final."""
    count = env_int("BENCH_BACKLOG", 6000)
    window = env_int("BENCH_BACKLOG_WINDOW", 60)
    engine = EngineShape.from_env()
    url, api_key = cluster.own_database("kaskad_bench_backlog")
    config = cluster.vk_uncapped("backlog")
    env = {"KASKAD_DATABASE_URL": url, "KASKAD_CONFIG": str(config), "KASKAD_MAX_BACKLOG": "0"}
    front, target = cluster.start_gateway("gateway-backlog-accept", 0, 0, env)
    try:
        accept_many(target, api_key, count)
    finally:
        cluster.retire(front)
    gateway, _ = cluster.start_gateway("gateway-backlog", engine.workers, http_port, {**env, **engine.env()})
    try:
        started = datetime.now(UTC)
        samples = _watch(cluster, url, gateway, simulator, window)
        ended = datetime.now(UTC)
    finally:
        cluster.retire(gateway)
    seconds = (ended - started).total_seconds()
    drain = _figures(query(url, _BACKLOG_SQL, started, ended)[0], count, engine, seconds, samples)
    log(
        f"backlog: {drain.finished} of {count} cascades finished in {seconds:.0f} s "
        f"({drain.finished / seconds:.0f}/s), {drain.items / seconds:.0f} work items/s"
    )
    return drain


def backlog_section(b: BacklogDrain | None) -> list[str]:
    if b is None:
        return []
    return [
        f"The engine's own pace, without gRPC load: {b.count:,} notifications were accepted first "
        "(an accept-only gateway, then stopped); then one gateway with "
        f"`KASKAD_WORKERS={b.workers}` and `KASKAD_WORKER_BATCH_SIZE={b.batch}` started on that backlog "
        "against the simulator:",
        "",
        "| | value |",
        "|---|---:|",
        f"| **finished cascades/s**, best 10 s | **{b.best_10s:.0f}** |",
        f"| finished cascades | {b.finished:,} in {b.seconds:.0f} s ({b.finished / b.seconds:.0f}/s) |",
        f"| half / 90% of those final after | {b.finish_p50:.1f} s / {b.finish_p90:.1f} s |",
        f"| work items done/s, best 10 s (closed ones included) | {b.items_best_10s:.0f} |",
        f"| last start item applied after | {b.starts_done_s:.0f} s |",
        "| CPU (100% = one core) until 90% were final: gateway / postgres / simulator "
        f"| {b.busy_cpu[0]:.0%} / {b.busy_cpu[1]:.0%} / {b.busy_cpu[2]:.0%} |",
        "",
        "Items of cascades under way (submits, timers, reports) are claimed before start items, "
        "so a started cascade does not wait behind the backlog's starts. People the simulator "
        "makes slow or dormant on a messenger finish only after a step's wait (minutes), outside "
        "the window.",
        "",
    ]
