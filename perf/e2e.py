"""Cascades end to end: gateways that accept and run cascades against the provider simulator,
in several deployment shapes, measured from the database's own timestamps; and the
realistic mix against a gateway that runs the cascade. Target: 1,000 finished cascades/s."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cluster import Child, Cluster, EngineShape, env_int, log, query, rss
from runs import Run, met, run_locust

TARGET_FINISHED_PER_S = 1000
# The parts of an end-to-end run's CPU broken out per cascade (Redis and others: "the rest").
CPU_PARTS = ("gateway", "postgres", "simulator", "locust")


@dataclass(frozen=True)
class E2EShape:
    """One way to deploy gateways for the end-to-end run (``BENCH_E2E_SHAPES``)."""

    run: str  # the locust run's name
    title: str  # the summary's column; {n} is the number of gateway processes
    where: str  # the run's description; {n} as above


E2E_SHAPES = {
    "one": E2EShape(
        "kaskad-e2e",
        "one gateway",
        "1 Kaskad gateway running the cascade against the provider simulator (see End to end)",
    ),
    "split": E2EShape(
        "kaskad-e2e-split",
        "front + worker gateway",
        "1 accept-only Kaskad gateway in front of 1 running the cascade against the provider "
        "simulator (see End to end)",
    ),
    "scaled": E2EShape(
        "kaskad-e2e-scaled",
        "{n} gateways, each both",
        "{n} Kaskad gateways, each accepting and running the cascade against the provider "
        "simulator, the users spread over them (see End to end)",
    ),
}


def e2e_shapes(gateways: int) -> list[str]:
    """The end-to-end shapes to run: ``BENCH_E2E_SHAPES`` (comma-separated keys of
    :data:`E2E_SHAPES`), by default all of them (``scaled`` only with ``BENCH_GATEWAYS`` > 1)."""
    default = ",".join(k for k in E2E_SHAPES if k != "scaled" or gateways > 1)
    shapes = [s.strip() for s in os.environ.get("BENCH_E2E_SHAPES", default).split(",") if s.strip()]
    unknown = [s for s in shapes if s not in E2E_SHAPES]
    if unknown:
        raise SystemExit(f"BENCH_E2E_SHAPES: unknown shape(s) {unknown}; known: {', '.join(E2E_SHAPES)}")
    return shapes


@dataclass
class EndToEnd:
    """Cascades of the end-to-end run, from the database's timestamps (seconds)."""

    offered_per_s: float
    accepted: int
    accepted_per_s: float
    finished: int
    finished_per_s: float  # steady state: finishes in the last two thirds of the load window
    finished_overall_per_s: float  # every finish, over first accept to last finish
    lag_p50: float  # accept -> first provider submit answered
    lag_p95: float
    final_p50: float  # accept -> final state
    final_p95: float
    states: dict[str, int]
    workers: int = 0
    batch: int = 0
    pool: int = 0
    pending_after_drain: int = 0
    drain_s: int = 0
    shape: str = "one"  # a key of E2E_SHAPES
    gateways: int = 1  # gateway processes in the shape
    cpu_cores: float = float("nan")  # every process on the machine during the load, in cores
    cpu_parts: dict[str, float] = field(default_factory=dict)  # the same by part (see Run.cpu)
    accept_p50_ms: float = float("nan")  # SendNotification as locust timed it
    accept_p99_ms: float = float("nan")

    @property
    def cpu_ms_per_finished(self) -> float:
        """The whole machine's CPU (gateways, PostgreSQL, Redis, simulator, locust) during the
        load per cascade finished during it: what a cascade costs here end to end."""
        return self.cpu_cores * 1000 / self.finished_per_s if self.finished_per_s else float("nan")

    def cpu_ms_by_part(self) -> list[float]:
        """:attr:`cpu_ms_per_finished` split by :data:`CPU_PARTS`, then the rest (Redis, others)."""
        if not self.finished_per_s:
            return [float("nan")] * (len(CPU_PARTS) + 1)
        parts = [self.cpu_parts.get(part, 0.0) * 1000 / self.finished_per_s for part in CPU_PARTS]
        return [*parts, self.cpu_ms_per_finished - sum(parts)]


_E2E_SQL = """
WITH run AS (
    SELECT notification_id, created_at, finished_at, state FROM kaskad_notifications
    WHERE created_at >= $1 AND created_at < $2
), first_submit AS (
    SELECT extract(epoch FROM coalesce(a.submitted_at, a.outcome_at) - r.created_at) AS lag
    FROM run r JOIN kaskad_attempts a
      ON a.notification_id = r.notification_id AND a.step_index = 0 AND a.try_number = 1
    WHERE coalesce(a.submitted_at, a.outcome_at) IS NOT NULL
)
SELECT (SELECT count(*) FROM run) AS accepted,
       (SELECT count(*) FROM run WHERE finished_at IS NOT NULL) AS finished,
       (SELECT count(*) FROM kaskad_notifications WHERE finished_at >= $3 AND finished_at < $2) AS steady,
       (SELECT extract(epoch FROM max(finished_at) - min(created_at)) FROM run) AS span,
       (SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (ORDER BY lag) FROM first_submit) AS lag,
       (SELECT percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (
            ORDER BY extract(epoch FROM finished_at - created_at))
        FROM run WHERE finished_at IS NOT NULL) AS final,
       (SELECT coalesce(jsonb_object_agg(state, n), '{}') FROM (
            SELECT state, count(*) AS n FROM run GROUP BY state) s) AS states
"""


def end_to_end_figures(url: str, started: datetime, ended: datetime, **more: Any) -> EndToEnd:
    """The run's cascades from the database; ``more`` sets the other fields of the result."""
    window = (ended - started).total_seconds()
    steady_from = started + (ended - started) / 3  # past the first cascades' report latencies
    row = query(url, _E2E_SQL, started, ended, steady_from)[0]
    lag = row["lag"] or [float("nan")] * 2
    final = row["final"] or [float("nan")] * 2
    return EndToEnd(
        offered_per_s=float(env_int("BENCH_E2E_RATE", 1000)),
        accepted=row["accepted"],
        accepted_per_s=row["accepted"] / window if window else 0.0,
        finished=row["finished"],
        finished_per_s=row["steady"] / (window * 2 / 3) if window else 0.0,
        finished_overall_per_s=row["finished"] / float(row["span"]) if row["span"] else 0.0,
        lag_p50=lag[0],
        lag_p95=lag[1],
        final_p50=final[0],
        final_p95=final[1],
        states=json.loads(row["states"]) if isinstance(row["states"], str) else dict(row["states"]),
        **more,
    )


def drain_cascades(url: str, started: datetime, ended: datetime, limit_s: int) -> int:
    """Wait until the run's notifications are final (or ``limit_s`` passed); how many are not."""
    deadline = time.monotonic() + limit_s
    while True:
        pending = int(
            query(
                url,
                "SELECT count(*) FROM kaskad_notifications "
                "WHERE created_at >= $1 AND created_at < $2 AND finished_at IS NULL",
                started,
                ended,
            )[0][0]
        )
        if pending == 0 or time.monotonic() > deadline:
            return pending
        time.sleep(2)


def start_shape(
    cluster: Cluster, shape: str, http_port: int, database: dict[str, str], engine: EngineShape
) -> tuple[Child, list[Child], list[str]]:
    """The gateways of ``shape``: the one running the cascade (callbacks go to it), the
    others, and the targets locust calls."""
    workers, env = engine.workers, {**database, **engine.env()}
    gateway, target = cluster.start_gateway("gateway-e2e", workers, http_port, env)
    if shape == "split":
        # Locust calls an accept-only gateway; the one above only runs the cascade.
        front, front_target = cluster.start_gateway("gateway-e2e-accept", 0, 0, database)
        return gateway, [front], [front_target]
    others, targets = [], [target]
    if shape == "scaled":
        # More gateways like the first, each accepting and running cascades: scale-out.
        for i in range(1, env_int("BENCH_GATEWAYS", 2)):
            more, more_target = cluster.start_gateway(f"gateway-e2e-{i}", workers, 0, env)
            targets.append(more_target)
            others.append(more)
    return gateway, others, targets


def run_end_to_end(cluster: Cluster, http_port: int, simulator: Child, shape: str) -> tuple[Run, EndToEnd]:
    """Cascades from accept to a final state against the simulator at its default latencies.

    The gateways of ``shape`` (see :data:`E2E_SHAPES`), on a database of their own, get
    unique sends at ``BENCH_E2E_RATE`` calls/s (1000) for ``BENCH_DURATION``; then the
    bench waits up to ``BENCH_E2E_DRAIN`` s (60) until every accepted notification is final.
    """
    name = E2E_SHAPES[shape].run
    database_url, api_key = cluster.own_database(name.replace("-", "_").replace("kaskad", "kaskad_bench"))
    engine = EngineShape.from_env()
    rate = float(env_int("BENCH_E2E_RATE", 1000))
    database = {"KASKAD_DATABASE_URL": database_url, "KASKAD_CONFIG": str(cluster.vk_uncapped("e2e"))}
    gateway, others, targets = start_shape(cluster, shape, http_port, database, engine)
    if os.environ.get("BENCH_PYSPY_E2E"):
        cluster.profile[name] = gateway.proc.pid  # a debugging aid: sampling costs CPU
    try:
        watch = {"gateway": [gateway, *others], "simulator": [simulator]}
        started = datetime.now(UTC)
        run = run_locust(cluster, name, targets, "send", api_key, watch, rate)
        ended = datetime.now(UTC)
        run.rss_mib = rss({"gateway-e2e": gateway})
        drain = env_int("BENCH_E2E_DRAIN", 60)
        sends = run.stat("SendNotification")
        figures = end_to_end_figures(
            database_url,
            started,
            ended,
            workers=engine.workers,
            batch=engine.batch,
            pool=engine.pool,
            pending_after_drain=drain_cascades(database_url, started, ended, drain),
            drain_s=drain,
            shape=shape,
            gateways=1 + len(others),
            cpu_cores=sum(run.cpu.values()) / run.wall if run.wall else float("nan"),
            cpu_parts={part: cpu / run.wall for part, cpu in run.cpu.items()} if run.wall else {},
            **({"accept_p50_ms": sends.p50, "accept_p99_ms": sends.p99} if sends else {}),
        )
    finally:
        cluster.retire(gateway, *others)
    log(
        f"{name}: {figures.finished_per_s:.0f} finished cascades/s, "
        f"first submit p50 {figures.lag_p50:.3f} s p95 {figures.lag_p95:.3f} s"
    )
    return run, figures


def mix_with_cascade(cluster: Cluster, http_port: int, simulator: Child, api_key: str) -> Run:
    """``kaskad-mix-cascade``: the realistic mix against a gateway running the cascade (1 worker)."""
    cascade, target = cluster.start_gateway("gateway-cascade", 1, http_port)
    watch = {"gateway": [cascade], "simulator": [simulator]}
    run = run_locust(cluster, "kaskad-mix-cascade", [target], "mix", api_key, watch)
    run.rss_mib = rss({"gateway-cascade": cascade})
    cluster.retire(cascade)
    return run


# -- the summary ---------------------------------------------------------------------------


def capacity_lines(e2es: list[EndToEnd]) -> list[str]:
    """What the end-to-end target would take at the cheapest cost per cascade measured."""
    measured = [e for e in e2es if e.cpu_ms_per_finished == e.cpu_ms_per_finished]  # not NaN
    if not measured:
        return []
    best = min(measured, key=lambda e: e.cpu_ms_per_finished)
    cores = best.cpu_ms_per_finished * TARGET_FINISHED_PER_S / 1000
    return [
        f"Everything on this machine together (gateways, PostgreSQL, Redis, the simulator, locust) "
        f"spent **{best.cpu_ms_per_finished:.1f} ms of CPU per finished cascade** at best "
        f"({E2E_SHAPES[best.shape].title.format(n=best.gateways)}: the cores busy during the load "
        f"divided by the cascades finished per second; accepts of cascades that finished later "
        f"count too, so this errs high under overload). At that cost, {TARGET_FINISHED_PER_S:,} finished "
        f"cascades/s take about **{cores:.1f} cores**; this machine has {os.cpu_count()}.",
        "",
    ]


def _intro(first: EndToEnd) -> str:
    return (
        "Cascades against the provider simulator at its default latencies (VK and Viber report in "
        "0.5-3 s, SMS in 2-10 s), each shape on a database of its own, offered "
        f"{first.offered_per_s:.0f} unique sends/s by locust for the run's duration. The gateway "
        f"running the cascade has `KASKAD_WORKERS={first.workers}`, "
        f"`KASKAD_WORKER_BATCH_SIZE={first.batch}` and `KASKAD_DATABASE_POOL_MAX={first.pool}`. "
        "*One gateway*: locust calls it too (`kaskad-e2e` below). *Front + worker gateway*: locust "
        "calls an accept-only gateway (`KASKAD_WORKERS=0`), which wakes the other through "
        "`NOTIFY` (`kaskad-e2e-split`). *N gateways, each both*: `BENCH_GATEWAYS` gateways like "
        "the first, locust's users spread over them (`kaskad-e2e-scaled`: scale-out). VK's "
        "default budget of 50 submits/s is lifted (`[rate_limits.vk] per_second = 0`), as it "
        "would cap every cascade that starts on VK. Figures from the database's timestamps:"
    )


def end_to_end_section(e2es: list[EndToEnd]) -> list[str]:
    """The shapes side by side, one column each, and what the target would take."""
    if not e2es:
        return []

    def row(label: str, cell: Callable[[EndToEnd], str], target: str = "") -> str:
        return f"| {label} | " + " | ".join(cell(e) for e in e2es) + f" | {target} |"

    best = max(e.finished_per_s for e in e2es)
    return [
        _intro(e2es[0]),
        "",
        "| | " + " | ".join(E2E_SHAPES[e.shape].title.format(n=e.gateways) for e in e2es) + " | target |",
        "|---|" + "---:|" * len(e2es) + "---|",
        row("accepted", lambda e: f"{e.accepted} ({e.accepted_per_s:.0f}/s)"),
        row(
            "SendNotification p50 / p99 (locust)",
            lambda e: f"{e.accept_p50_ms:.0f} / {e.accept_p99_ms:.0f} ms",
        ),
        row(
            "**finished cascades/s** (accepted to a final state; last two thirds of the load)",
            lambda e: f"**{e.finished_per_s:.0f}**",
            f"≥ {TARGET_FINISHED_PER_S}: {met(best >= TARGET_FINISHED_PER_S)}",
        ),
        row("finished cascades/s, first accept to last finish", lambda e: f"{e.finished_overall_per_s:.0f}"),
        row(
            "accept → first provider submit answered, p50 / p95",
            lambda e: f"{e.lag_p50 * 1000:.0f} / {e.lag_p95 * 1000:.0f} ms",
        ),
        row("accept → final state, p50 / p95", lambda e: f"{e.final_p50:.1f} / {e.final_p95:.1f} s"),
        row("final states", lambda e: ", ".join(f"{st} {n}" for st, n in sorted(e.states.items()))),
        row(f"not final {e2es[0].drain_s} s after the load stopped", lambda e: str(e.pending_after_drain)),
        row("**CPU per finished cascade**, all processes", lambda e: f"**{e.cpu_ms_per_finished:.1f} ms**"),
        row(
            "of which gateways / PostgreSQL / simulator / locust / the rest",
            lambda e: " / ".join(f"{ms:.1f}" for ms in e.cpu_ms_by_part()) + " ms",
        ),
        "",
        *capacity_lines(e2es),
        "The simulator makes some people slow or dormant on a messenger; their cascades wait out "
        "step timers (`KASKAD_STEP_WAIT_*`: 5 min until a channel has enough reports), so some are "
        "still under way when the bench stops waiting. The accept to first submit lag includes the "
        "time a start item waited for a worker.",
        "",
    ]
