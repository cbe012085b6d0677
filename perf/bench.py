"""``make bench``: Kaskad's accept path against Python gRPC's own limit, on this machine.

Starts everything it needs, runs locust headless several times, writes ``summary.md`` to
``perf/results/`` (the raw CSVs, logs and profiles to ``perf/results/raw/``, untracked) and
stops everything it started (also on Ctrl-C and errors). In the order they run:

1. the bare server's half of the accept pair (``accept.py``): warm-up, closed loop, paced,
   and the ``grpc.aio`` probe;
2. cascades end to end (``e2e.py``), each shape on a database of its own, then the backlog
   drain (``backlog.py``) and the realistic mix against a gateway running the cascade;
3. Kaskad's half of the accept pair, the alternated repeats, paced, probe, mix, and the
   scale-out over ``BENCH_GATEWAYS`` processes (``accept.py``);
4. a gateway's memory with 100,000 notifications pending (``memory.py``).

``summary.py`` writes the summary; ``cluster.py`` and ``runs.py`` start the processes and
run the load. Every gateway's providers point at the local simulator: nothing leaves
127.0.0.1. PostgreSQL and Redis are embedded (under a temporary folder) unless
``KASKAD_DATABASE_URL`` / ``KASKAD_REDIS_URL`` name servers to use; other ``KASKAD_*``
settings pass to the gateways.

Environment (defaults in brackets; 0 skips a part): ``BENCH_USERS`` (64),
``BENCH_DURATION`` (30 s), ``BENCH_WARMUP`` (15 s), ``BENCH_PACED_RATE`` (250 calls/s),
``BENCH_REPEAT`` (2), ``BENCH_MIX`` (1), ``BENCH_GATEWAYS`` (2; 1 skips scale-out),
``BENCH_CASCADE`` (1), ``BENCH_E2E`` (1), ``BENCH_E2E_SHAPES`` (``one,split,scaled``),
``BENCH_E2E_RATE`` (1000), ``BENCH_E2E_WORKERS`` (2), ``BENCH_E2E_BATCH`` (200),
``BENCH_E2E_DRAIN`` (60 s), ``BENCH_BACKLOG`` (6000), ``BENCH_BACKLOG_WINDOW`` (60 s),
``BENCH_MEMORY_PENDING`` (100000), ``BENCH_LOCUST_PROCESSES`` (1), ``BENCH_RESULTS``
(``perf/results``), ``BENCH_SOURCE`` (``HEAD``: the gateway runs from a ``git archive`` of
that commit; ``worktree``: the working tree as it is), ``BENCH_PYSPY=1`` (one more run,
``kaskad-send-pyspy``, sampled by py-spy; its hottest frames go in the summary),
``BENCH_PYSPY_E2E=1`` (sample the end-to-end gateway too), ``BENCH_PYSPY_FLAGS`` (more
py-spy flags, e.g. ``--gil``).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

from accept import AcceptBench
from backlog import drain_backlog
from cluster import PERF, Child, Cluster, enabled, env_int, free_port, log, workdir
from e2e import e2e_shapes, mix_with_cascade, run_end_to_end
from memory import pending_memory
from summary import Findings, render, run_notes


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def cascade_runs(cluster: Cluster, found: Findings, api_key: str, http_port: int, simulator: Child) -> None:
    """The runs with workers, before the accept-only ones: on fresh databases, so that no
    backlog of the accept runs' notifications is in their way."""
    if enabled("BENCH_E2E"):
        for shape in e2e_shapes(env_int("BENCH_GATEWAYS", 2)):
            run, figures = run_end_to_end(cluster, http_port, simulator, shape)
            found.runs.append(run)
            found.e2es.append(figures)
    if enabled("BENCH_BACKLOG", "6000"):
        found.backlog = drain_backlog(cluster, http_port, simulator)
    if enabled("BENCH_CASCADE"):
        found.runs.append(mix_with_cascade(cluster, http_port, simulator, api_key))


def measure(cluster: Cluster, found: Findings) -> None:
    """Every part of the bench, in order (see the module's docstring)."""
    api_key = cluster.create_api_key()
    accept = AcceptBench(cluster, api_key, found.runs, found.probes, found.notes)
    accept.bare_runs()
    cascade_http = free_port()
    simulator = cluster.start_simulator(cascade_http)
    if simulator is not None:
        cascade_runs(cluster, found, api_key, cascade_http, simulator)
    gateway, target = accept.kaskad_runs()
    gateways = env_int("BENCH_GATEWAYS", 2)
    if gateways > 1:
        accept.scale_out(gateway, target, gateways)
    memory_pending = env_int("BENCH_MEMORY_PENDING", 100_000)
    if memory_pending:
        found.memory = pending_memory(cluster, memory_pending)
    found.notes += run_notes(found.runs)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    # Absolute: locust runs in the exported source tree, not in this working directory.
    results = Path(os.environ.get("BENCH_RESULTS", PERF / "results")).resolve()
    raw = results / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    found = Findings()
    with workdir() as work:
        cluster = Cluster(work, raw)
        try:
            source = cluster.prepare_source()
            backends = cluster.start_backends()
            measure(cluster, found)
        except KeyboardInterrupt:
            log("interrupted; stopping everything")
            return 130
        finally:
            cluster.stop_all()
            for server_log in [
                *work.glob("gateway-*.log"),
                *work.glob("bare-server.log"),
                *work.glob("provider-*.log"),
            ]:
                shutil.copy(server_log, raw / server_log.name)
    if found.runs:
        (results / "summary.md").write_text(render(found, backends, source))
        log(f"wrote {results / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
