"""The kill -9 test at a bigger scale than ``tests/test_crash.py``: prints its figures.

    PYTHONPATH=.:gen KASKAD_DATABASE_URL=... KASKAD_REDIS_URL=... \\
        python perf/kill_test.py --total 3000 --batch 100 --kills 5
        python perf/kill_test.py --fault db_outage --kills 1    # or --fault sigterm

Makes its own database on the server of ``KASKAD_DATABASE_URL`` and drops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import asyncpg

from gateway.store.postgres import migrate
from tests.conftest import create_key
from tests.kill_harness import Fault, run_kill_test


async def main(total: int, batch: int, kills: int, finish_within_s: float, fault: Fault) -> None:
    server = os.environ["KASKAD_DATABASE_URL"]
    name = f"kaskad_kill_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(server)
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = server.rsplit("/", 1)[0] + "/" + name
    try:
        conn = await asyncpg.connect(url)
        await migrate(conn, datetime.now(UTC))
        await conn.close()
        key = await create_key(url, "courier")
        db = await asyncpg.connect(url)
        with tempfile.TemporaryDirectory() as work:
            figures = await run_kill_test(
                url, os.environ["KASKAD_REDIS_URL"], db, key, Path(work),
                total=total, batch=batch, kills=kills, finish_within_s=finish_within_s, fault=fault,
            )  # fmt: skip
        await db.close()
        print(figures)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--finish-within", type=float, default=300)
    parser.add_argument("--fault", choices=get_args(Fault), default="kill")
    args = parser.parse_args()
    asyncio.run(main(args.total, args.batch, args.kills, args.finish_within, args.fault))
