"""The accept pair: Kaskad's accept path against the bare gRPC server (``bare_server.py``)
under the same load, closed loop and paced, locust and the ``grpc.aio`` probe. The figure to
track is Kaskad's rate and p99 as a ratio of the bare server's in the same run: a ratio
holds on a shared machine where absolute figures do not."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field

from cluster import BIN, PERF, ROOT, Child, Cluster, enabled, env_int, free_port, log, rss, wait_serving
from probe import ProbeResult
from runs import Run, Stat, accept_many, hot_frames, met, run_locust

SEND = "SendNotification"
TARGET_RATE_RATIO = 0.5
TARGET_P99_MS = 25.0
BARE_LATENCY_NOTE = (
    "The bare server's latency is mostly the load generator's own: locust's sync gRPC "
    "under gevent, 64 greenlets in one process, takes longer to notice an answer the more "
    "calls it has in flight (1 user: about 1 ms). Compare Kaskad with the bare server "
    "of the same run, not with zero."
)
Watch = dict[str, list[Child]]
# No worker drains an accept-only gateway's backlog: the bound is off, these runs measure
# accepting, not refusing.
UNBOUNDED = {"KASKAD_MAX_BACKLOG": "0"}


@dataclass(frozen=True)
class ProbeRun:
    """What ``perf/probe.py`` measured (see its docstring), and against what."""

    name: str
    users: int
    rate: float
    result: ProbeResult


def start_bare(cluster: Cluster) -> tuple[Child, str]:
    port = free_port()
    args = [sys.executable, str(PERF / "bare_server.py"), "--address", f"127.0.0.1:{port}"]
    child = cluster.spawn("bare-server", args)
    target = f"127.0.0.1:{port}"
    wait_serving(child, target, health=False)
    return child, target


def run_probe(cluster: Cluster, name: str, target: str, api_key: str, rate: float) -> ProbeRun:
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
        env={**os.environ, **cluster.env},
        capture_output=True,
        timeout=duration + 120,
        check=True,
    )
    figures = json.loads(out.stdout.decode().strip().splitlines()[-1])
    run = ProbeRun(name, users, rate, ProbeResult(**figures))
    got = run.result
    log(f"probe {name}: {got.rps:.0f}/s p50 {got.p50_ms:.1f} ms p99 {got.p99_ms:.1f} ms")
    return run


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


# -- the runs ----------------------------------------------------------------------------


@dataclass
class AcceptBench:
    """The accept runs: the bare server's first, later Kaskad's accept-only gateway(s)."""

    cluster: Cluster
    api_key: str
    runs: list[Run]  # appended to in the order the runs ran
    probes: list[ProbeRun]
    notes: list[str]
    warmup: int = field(default_factory=lambda: env_int("BENCH_WARMUP", 15))
    paced: float = field(default_factory=lambda: float(env_int("BENCH_PACED_RATE", 250)))
    servers: dict[str, tuple[list[str], Watch]] = field(default_factory=dict)  # bare, kaskad
    bare: Child | None = None

    def locust(
        self,
        name: str,
        targets: list[str],
        watch: Watch,
        paced: float = 0.0,
        duration: int | None = None,
        profile: str = "send",
    ) -> Run:
        run = run_locust(self.cluster, name, targets, profile, self.api_key, watch, paced, duration)
        self.runs.append(run)
        return run

    def warm(self, name: str, targets: list[str], watch: Watch) -> bool:
        """The same load, not counted: a server is measured as it runs after a while
        (connections open, caches filled). False when ``BENCH_WARMUP=0``."""
        if self.warmup:
            self.locust(f"{name}-warmup", targets, watch, duration=self.warmup)
        return bool(self.warmup)

    def paced_runs(self, server: str) -> None:
        """Latency below saturation: locust at a fixed offered rate, then the probe."""
        if not self.paced:
            return
        targets, watch = self.servers[server]
        self.locust(f"{server}-send-paced", targets, watch, self.paced)
        self.probes.append(run_probe(self.cluster, f"{server}-probe", targets[0], self.api_key, self.paced))

    def bare_runs(self) -> None:
        """The bare server's runs; it stays up (idle) for the alternated pairs after Kaskad's first."""
        self.bare, target = start_bare(self.cluster)
        self.servers["bare"] = ([target], {"bare": [self.bare]})
        self.warm("bare-send", *self.servers["bare"])
        self.locust("bare-send", *self.servers["bare"])
        self.paced_runs("bare")

    def kaskad_runs(self) -> tuple[Child, str]:
        """Kaskad's accept-only gateway: the first pair's half, the repeats, paced, mix, py-spy."""
        gateway, target = self.cluster.start_gateway("gateway-0", env=UNBOUNDED)
        self.servers["kaskad"] = ([target], {"gateway": [gateway]})
        if self.warm("kaskad-send", *self.servers["kaskad"]):
            people, took = see_population([target], self.api_key)
            self.notes.append(
                f"After its warm-up, each Kaskad gateway of the accept runs took one notification for "
                f"each of the load's {people} people (`SendNotificationBatch`, {took:.0f} s for the "
                "first): the measured runs find every person known, as a gateway that has run a "
                "while does (the validity of each number remembered in the process, each person's "
                "reachability in Redis). Without it the first pairs measured a gateway still "
                "meeting people for the first time, and each pair came out faster than the last."
            )
        self.locust("kaskad-send", *self.servers["kaskad"]).rss_mib = rss({"gateway-0": gateway})
        self.repeats()
        if self.bare is not None:
            self.cluster.retire(self.bare)
        self.paced_runs("kaskad")
        if enabled("BENCH_MIX"):
            mix = self.locust("kaskad-mix", *self.servers["kaskad"], profile="mix")
            mix.rss_mib = rss({"gateway-0": gateway})
        if os.environ.get("BENCH_PYSPY") and shutil.which("py-spy", path=str(BIN)):
            # Its own run: sampling costs CPU, which the tracked runs must not pay.
            self.cluster.profile["kaskad-send-pyspy"] = gateway.proc.pid
            run = self.locust("kaskad-send-pyspy", *self.servers["kaskad"])
            run.hot = hot_frames(self.cluster.raw / "kaskad-send-pyspy.pyspy.txt")
        return gateway, target

    def repeats(self) -> None:
        """The pair again ``BENCH_REPEAT`` times, the order turned each time (ABBA: a drift of
        the machine cancels out); how far the ratio moves between pairs is this machine's noise."""
        for index in range(1, 1 + env_int("BENCH_REPEAT", 2)):
            for server in ("bare", "kaskad") if index % 2 else ("kaskad", "bare"):
                self.locust(f"{server}-send{pair_label(index)}", *self.servers[server])

    def scale_out(self, gateway: Child, target: str, gateways: int) -> None:
        """The same load spread over ``gateways`` accept-only processes on one database."""
        more = [self.cluster.start_gateway(f"gateway-{i}", env=UNBOUNDED) for i in range(1, gateways)]
        fresh, fresh_targets = [c for c, _ in more], [t for _, t in more]
        # The first is warm already; the others are not.
        if self.warm(f"kaskad-send-{gateways}gw", fresh_targets, {"gateway": fresh}):
            see_population(fresh_targets, self.api_key)
        everyone = [gateway, *fresh]
        run = self.locust(f"kaskad-send-{gateways}gw", [target, *fresh_targets], {"gateway": everyone})
        run.rss_mib = rss({c.name: c for c in everyone})


# -- the pairs ---------------------------------------------------------------------------


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


# -- the summary's figure to track ---------------------------------------------------------


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def ratio(part: float, whole: float) -> str:
    return fmt_ratio(part / whole if whole else None)


@dataclass(frozen=True)
class Latency:
    """One server's side of a latency table (locust's stats or the probe's)."""

    rps: float
    p50: float
    p95: float
    p99: float
    failures: int
    max: float | None = None

    @classmethod
    def of(cls, figures: Stat | ProbeResult) -> Latency:
        if isinstance(figures, Stat):
            return cls(figures.rps, figures.p50, figures.p95, figures.p99, figures.failures)
        f = figures
        return cls(f.rps, f.p50_ms, f.p95_ms, f.p99_ms, f.failures, f.max_ms)


def latency_table(b: Latency, k: Latency, digits: int) -> list[str]:
    """Bare server and Kaskad side by side at the same offered rate, with the p99 target."""

    def ms(label: str, x: float, y: float, bold: bool = False, target: str = "") -> str:
        r = f"**{ratio(y, x)}**" if bold else ratio(y, x)
        return f"| {label} ms | {x:.{digits}f} | {y:.{digits}f} | {r} |" + (
            f" {target} |" if target else " |"
        )

    target = f"Kaskad p99 ≤ {TARGET_P99_MS:.0f} ms: {met(k.p99 <= TARGET_P99_MS)}"
    lines = [
        "| | bare server | Kaskad | Kaskad / bare | target |",
        "|---|---:|---:|---:|---|",
        f"| requests/s | {b.rps:.0f} | {k.rps:.0f} | {ratio(k.rps, b.rps)} | |",
        ms("p50", b.p50, k.p50),
        ms("p95", b.p95, k.p95),
        ms("p99", b.p99, k.p99, bold=True, target=target),
    ]
    if b.max is not None and k.max is not None:
        lines.append(f"| max ms | {b.max:.{digits}f} | {k.max:.{digits}f} | | |")
    return [*lines, f"| failures | {b.failures} | {k.failures} | | |", ""]


def _scale_out_columns(runs: list[Run], b: Stat, rate_ok: bool) -> tuple[str, str, dict[str, str], str]:
    """The headline table's header, rule, extra cells and verdict, with the scale-out run if any."""
    several = next((r for r in runs if re.fullmatch(r"kaskad-send-\d+gw", r.name)), None)
    n = several.stat(SEND) if several else None
    if not (several and n):
        cols = dict.fromkeys(("rps", "p50", "p99", "failures"), "")
        return (
            "| | bare server | Kaskad | Kaskad / bare | target |",
            "|---|---:|---:|---:|---|",
            cols,
            met(rate_ok),
        )
    count = several.name.removeprefix("kaskad-send-").removesuffix("gw")
    n_ratio = n.ok_rps / b.ok_rps if b.ok_rps else None
    head = f"| | bare server | Kaskad | Kaskad / bare | Kaskad, {count} processes | / bare | target |"
    cols = {
        "rps": f" {n.ok_rps:.0f} | **{fmt_ratio(n_ratio)}** |",
        "p50": f" {n.p50:.0f} | {ratio(n.p50, b.p50)} |",
        "p99": f" {n.p99:.0f} | {ratio(n.p99, b.p99)} |",
        "failures": f" {n.failures} | |",
    }
    n_ok = n_ratio is not None and n_ratio >= TARGET_RATE_RATIO
    return head, "|---|---:|---:|---:|---:|---:|---|", cols, f"1 process {met(rate_ok)}, {count}: {met(n_ok)}"


def headline_table(pair: AcceptPair, runs: list[Run]) -> list[str]:
    """The figure to track: the median pair's rate and p99 ratios, and the scale-out run."""
    kaskad, b, k = pair.kaskad, pair.b, pair.k
    rate_ratio = k.ok_rps / b.ok_rps if b.ok_rps else None
    p99_ratio = k.p99 / b.p99 if b.p99 else None
    rate_ok = rate_ratio is not None and rate_ratio >= TARGET_RATE_RATIO
    head, rule, cols, verdict = _scale_out_columns(runs, b, rate_ok)
    return [
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
        f" Kaskad p99 ≤ {TARGET_P99_MS:.0f} ms: {met(k.p99 <= TARGET_P99_MS)} |",
        f"| failures | {b.failures} | {k.failures} | |{cols['failures']} |",
        "",
        f"In a closed loop of {kaskad.users} users a p99 of {TARGET_P99_MS:.0f} ms needs more than "
        f"{kaskad.users / TARGET_P99_MS * 1000:.0f} calls/s (Little's law), more than the bare server",
        "reaches here; so latency is also measured at a fixed offered rate, below both servers' limits:",
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


def paced_section(runs: list[Run]) -> list[str]:
    """The paced runs as locust timed them."""
    bare = next((r.stat(SEND) for r in runs if r.name == "bare-send-paced"), None)
    kaskad_run = next((r for r in runs if r.name == "kaskad-send-paced"), None)
    kaskad = kaskad_run.stat(SEND) if kaskad_run else None
    if not (bare and kaskad and kaskad_run):
        return []
    return [
        f"SendNotification offered at {kaskad_run.paced:.0f} calls/s by {kaskad_run.users} users:",
        "",
        *latency_table(Latency.of(bare), Latency.of(kaskad), 0),
    ]


def probe_section(probes: list[ProbeRun]) -> list[str]:
    """The paced latency again, as a grpc.aio client sees it (``perf/probe.py``)."""
    bare_run = next((p for p in probes if p.name == "bare-probe"), None)
    kaskad_run = next((p for p in probes if p.name == "kaskad-probe"), None)
    if not (bare_run and kaskad_run):
        return []
    return [
        f"The same offered rate ({kaskad_run.rate:.0f} calls/s from {kaskad_run.users} concurrent callers)",
        "from a `grpc.aio` client (`perf/probe.py`, one asyncio loop, each call timed from just before",
        "it is sent). Locust's gevent-wrapped sync gRPC adds its own delay to every call that is not",
        "answered at once, so these are the server's latencies more nearly:",
        "",
        *latency_table(Latency.of(bare_run.result), Latency.of(kaskad_run.result), 1),
    ]


def figure_section(runs: list[Run], probes: list[ProbeRun]) -> list[str]:
    """The body of the summary's "The figure to track"."""
    pairs = accept_pairs(runs)
    headline = headline_pair(pairs) if pairs else None
    lines = headline_table(headline, runs) if headline else []
    lines += warmup_line(runs)
    if headline is not None:
        lines += pairs_line(pairs, headline)
    return [*lines, *paced_section(runs), *probe_section(probes)]
