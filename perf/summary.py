"""The summary writer: ``summary.md`` from what one bench measured. Each part's section comes
from its own module; this one adds the machine, every run's table and the notes, so the
summary stands alone (the raw CSVs are not kept in git)."""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil
from accept import BARE_LATENCY_NOTE, ProbeRun, figure_section
from backlog import BacklogDrain, backlog_section
from cluster import env_int
from e2e import E2E_SHAPES, EndToEnd, end_to_end_section
from memory import PendingMemory, memory_section
from runs import CONTENDED, Run


@dataclass
class Findings:
    """Everything one bench run measured, in the order it ran."""

    runs: list[Run] = field(default_factory=list)
    probes: list[ProbeRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    e2es: list[EndToEnd] = field(default_factory=list)
    backlog: BacklogDrain | None = None
    memory: PendingMemory | None = None


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


def run_notes(runs: list[Run]) -> list[str]:
    """The notes every summary ends with: how locust ran, reading the bare server, failures."""
    processes = env_int("BENCH_LOCUST_PROCESSES", 1)
    more = " (`BENCH_LOCUST_PROCESSES`)." if processes > 1 else "; `BENCH_LOCUST_PROCESSES=N` forks N."
    notes = [f"locust ran as {processes} process(es){more}", BARE_LATENCY_NOTE]
    for run in runs:
        failed = sum(s.failures for s in run.stats if s.name != "Aggregated")
        if failed:
            errors = f"; the most frequent: {', '.join(run.errors)}" if run.errors else ""
            notes.append(f"**{run.name}: {failed} failed calls**{errors}.")
    return notes


def _where(run: Run) -> str:
    """What a run was against, in words."""
    if run.name.startswith("bare"):
        return "bare server"
    if run.name.endswith("cascade"):
        return "1 Kaskad gateway running the cascade (1 worker) against the provider simulator"
    if shape := next((e for e in E2E_SHAPES.values() if e.run == run.name), None):
        return shape.where.format(n=run.gateways)
    return f"{run.gateways} accept-only Kaskad gateway(s) (`KASKAD_WORKERS=0`)"


def run_section(run: Run) -> list[str]:
    """One run's table of calls, its CPU by part, and py-spy's hottest frames and RSS if any."""
    lines = [
        f"### {run.name}",
        "",
        f"{_where(run)}, profile `{run.profile}`, {run.users} users, {run.duration} s, "
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
            f"Where the gateway's time goes (py-spy, `raw/{run.name}.pyspy.txt`, not in git): Kaskad's",
            "functions by share of all samples of the gateway process (every thread; inclusive of callees):",
            "",
            *(f"- {share * 100:.1f}% `{frame}`" for share, frame in run.hot),
            "",
        ]
    if run.rss_mib:
        rss = ", ".join(f"{name} {mib:.0f} MiB" for name, mib in run.rss_mib.items())
        lines.append(f"Gateway RSS at the end: {rss}.")
    return [*lines, ""]


def _contended(runs: list[Run]) -> list[str]:
    contended = [r for r in runs if r.others() > CONTENDED]
    if not contended:
        return []
    return [
        "**Warning: other processes competed for the CPU** during "
        + ", ".join(f"`{r.name}` ({r.others() * 100:.0f}% of a core)" for r in contended)
        + "; their figures understate what this machine can do. Run again on a quiet machine.",
        "",
    ]


def render(found: Findings, backends: str, source: str) -> str:
    """The whole ``summary.md``."""
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
        *figure_section(found.runs, found.probes),
    ]
    cascades = [
        *end_to_end_section(found.e2es),
        *backlog_section(found.backlog),
        *memory_section(found.memory),
    ]
    if cascades:
        lines += ["## End to end", "", *cascades]
    lines += [*_contended(found.runs), "## Runs", ""]
    for run in found.runs:
        lines += run_section(run)
    if found.notes:
        lines += ["## Notes", "", *[f"- {n}" for n in found.notes], ""]
    return "\n".join(lines)
