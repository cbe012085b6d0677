"""The benchmark's locustfile still drives Kaskad: a short headless run, checked by its stats.

Not a timing test: it asserts that every call succeeded and was counted, and that the
notifications it reported are the rows in the database. Locust runs as a subprocess
(it monkey-patches the process with gevent); the gateway runs in the test's event loop.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
from pathlib import Path

import asyncpg

from gateway.runtime.app import KaskadApp

ROOT = Path(__file__).resolve().parents[2]
LOCUSTFILE = ROOT / "perf" / "locustfile.py"
LOCUST = Path(sys.executable).parent / "locust"
BATCH_SIZE = 10


async def run(args: list[str], env: dict[str, str], limit: float) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def read_stats(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


async def test_locust_mix_against_kaskad(
    app: KaskadApp, api_key: str, db: asyncpg.Connection, tmp_path: Path
) -> None:
    env = {
        "KASKAD_TARGET": f"127.0.0.1:{app.grpc_port}",
        "KASKAD_API_KEY": api_key,
        "KASKAD_BENCH_PROFILE": "mix",
        "KASKAD_BENCH_MIX": "send=6,get=3,batch=1",
        "KASKAD_BENCH_DUPLICATE_SHARE": "0.3",
        "KASKAD_BENCH_BATCH_SIZE": str(BATCH_SIZE),
    }
    prefix = tmp_path / "run"
    args = [str(LOCUST), "-f", str(LOCUSTFILE), "--headless", "-u", "4", "-r", "4", "-t", "3s"]
    args += ["--stop-timeout", "5", "--csv", str(prefix), "--only-summary"]
    code, out = await run(args, env, limit=60)
    assert code == 0, out
    assert "Traceback" not in out, out

    stats = read_stats(Path(f"{prefix}_stats.csv"))
    for name in ("SendNotification", "GetNotification", f"SendNotificationBatch[{BATCH_SIZE}]", "Aggregated"):
        assert int(stats[name]["Request Count"]) > 0, (name, out)
    assert {name: int(row["Failure Count"]) for name, row in stats.items()} == dict.fromkeys(stats, 0), out

    # Every unique send and batch item is one row; duplicates and reads add none.
    sends = int(stats["SendNotification"]["Request Count"])
    batched = int(stats[f"SendNotificationBatch[{BATCH_SIZE}]"]["Request Count"]) * BATCH_SIZE
    rows = await db.fetchval("SELECT count(*) FROM kaskad_notifications WHERE idempotency_key LIKE 'bench-%'")
    assert rows == sends + batched, out


async def test_phone_population_is_valid_russian_mobiles() -> None:
    """Every recipient the load draws passes Kaskad's own E.164 validation."""
    script = (
        "import sys; sys.path.insert(0, 'perf'); import workload\n"
        "from gateway.accept.intake import is_valid_e164\n"
        "phones = workload.phone_population()\n"
        "assert phones == workload.phone_population(), 'not deterministic'\n"
        "bad = [p for p in phones if not (p.startswith('+79') and is_valid_e164(p))]\n"
        "print(len(phones), len(set(phones)), bad[:5])\n"
        "sys.exit(1 if bad else 0)\n"
    )
    code, out = await run([sys.executable, "-c", script], {}, limit=60)
    assert code == 0, out


async def test_latency_probe_against_kaskad(app: KaskadApp, api_key: str, db: asyncpg.Connection) -> None:
    """perf/probe.py (the bench's grpc.aio latency client) sends what it counts, and every call lands."""
    args = [sys.executable, str(ROOT / "perf" / "probe.py"), "--target", f"127.0.0.1:{app.grpc_port}"]
    args += ["--api-key", api_key, "--users", "4", "--rate", "20", "--duration", "2"]
    code, out = await run(args, {"PYTHONPATH": str(ROOT / "perf")}, limit=60)
    assert code == 0, out
    result = json.loads(out.strip().splitlines()[-1])
    assert result["failures"] == 0, out
    assert 20 <= result["requests"] <= 44, out  # 20/s for 2 s, give or take the calls in flight
    assert 0 < result["p50_ms"] <= result["p95_ms"] <= result["p99_ms"] <= result["max_ms"], out
    rows = await db.fetchval("SELECT count(*) FROM kaskad_notifications WHERE idempotency_key LIKE 'probe-%'")
    assert rows == result["requests"], out
