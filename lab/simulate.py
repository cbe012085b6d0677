"""``kaskad simulate``: a seeded population through the real gateway, four ways, in simulated time.

Each strategy is a real :class:`~gateway.runtime.app.KaskadApp` (gRPC accept, the engine over
durable work items, the cost ledger) in a database of its own, against a provider
simulator of its own in virtual time; all of them see the same seeded population and
the same sends at the same simulated times:

- ``sms_only``: the real planner with SMS as the only allowed channel;
- ``fixed_cascade``: VK, Viber, SMS in that order, each step waiting a fixed time
  (:class:`lab.baselines.FixedOrderPlanner`);
- ``router``: Kaskad's own :class:`gateway.accept.planning.CostPlanner`, learning reachability
  as it goes (every person gets several notifications);
- ``oracle``: knows each person's cheapest reachable channel from the seeded population
  (:class:`lab.baselines.OraclePlanner`).

The driver owns time: one :class:`~gateway.core.clock.ManualClock` for the gateway, the
simulator's virtual clock moved with it. It jumps to the next thing that happens (a
send, a delivery report due in the simulator, a due work item; rounded up to ``tick``
when one is set), then lets the simulator post what is due and runs the work until nothing is due. Costs
come from the cost ledger (:class:`gateway.store.ledger.CostLedger`, grouped by client,
as finance reads them); time to delivery is the first delivering report of a
notification (its attempt's ``outcome_at``) minus its ``created_at``, in simulated time.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import enum
import io
import json
import logging
import math
import random
import socket
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import grpc

from gateway.core.auth import KEY_PREFIX, hash_api_key, new_api_key
from gateway.core.clock import ManualClock
from gateway.core.config import ConfigError, Settings
from gateway.runtime.app import Backends, KaskadApp, RoutePlannerFactory
from gateway.store.ledger import CostReportQuery, Grouping
from gateway.store.queries import Queries
from gateway.store.work_queue import WorkQueue
from kaskad.v1 import common_pb2, notification_pb2, notification_pb2_grpc
from lab.baselines import FixedOrderPlanner, OraclePlanner
from lab.simulator import PopulationSettings, RunningSimulator, SimulatorSettings, run_simulator
from lab.simulator.population import Population

log = logging.getLogger(__name__)

MONEY = Decimal("0.01")
SHARE = Decimal("0.0001")
FLUSH_EVERY = timedelta(minutes=1)
"""How often (simulated) the channel-wide stats the router learns from are flushed."""


class Strategy(enum.StrEnum):
    SMS_ONLY = "sms_only"
    FIXED_CASCADE = "fixed_cascade"
    ROUTER = "router"
    ORACLE = "oracle"


@dataclass(frozen=True, slots=True)
class SimulationSettings:
    # 500 x 5 per strategy runs in about four minutes on two cores (the real gateway
    # spends ~15 ms of CPU per notification); raise --recipients for tighter numbers.
    recipients: int = 500
    notifications_per_recipient: int = 5
    seed: int = 1
    span: timedelta = timedelta(days=1)
    """Sends are spread uniformly (seeded) over this much simulated time."""
    fixed_wait: timedelta = timedelta(minutes=5)
    tick: timedelta = timedelta(0)
    """Time resolution: the clock moves in whole ticks; 0 (the default): exactly to each next event."""
    population: PopulationSettings = field(default_factory=PopulationSettings)
    strategies: tuple[Strategy, ...] = tuple(Strategy)
    text: str = "Your parcel {n} is on its way"

    def __post_init__(self) -> None:
        if self.recipients < 1 or self.notifications_per_recipient < 1:
            raise ValueError("need at least one recipient and one notification each")
        if self.span <= timedelta(0) or self.fixed_wait <= timedelta(0) or self.tick < timedelta(0):
            raise ValueError("span and fixed wait must be positive, tick not negative")


@dataclass(frozen=True, slots=True)
class Send:
    at: datetime
    number: int
    phone: str


@dataclass(frozen=True, slots=True)
class StrategyResult:
    strategy: Strategy
    notifications: int
    delivered: int
    attempts_by: dict[str, int]
    paid_failed_attempts: int
    """Attempts that were billed but did not reach the person."""
    total_cost: Decimal
    """From the cost ledger, this strategy's client."""
    sms_only_baseline: Decimal
    """The ledger's baseline: the delivered notifications by SMS alone."""
    provider_billed: Decimal
    """What the simulated providers billed (their own books): the ledger must agree."""
    currency: str
    delivered_by: dict[str, int]
    times_to_delivery: tuple[float, ...]
    """Seconds of simulated time from accept to the first delivering report, per delivered one."""
    runtime_s: float

    @property
    def attempts(self) -> int:
        return sum(self.attempts_by.values())

    @property
    def cost_per_delivered(self) -> Decimal:
        if not self.delivered:
            return Decimal(0)
        return (self.total_cost / self.delivered).quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)

    @property
    def share_delivered(self) -> Decimal:
        if not self.notifications:
            return Decimal(0)
        return (Decimal(self.delivered) / self.notifications).quantize(SHARE, rounding=ROUND_HALF_EVEN)

    @property
    def median_s(self) -> float | None:
        return statistics.median(self.times_to_delivery) if self.times_to_delivery else None

    @property
    def p95_s(self) -> float | None:
        if not self.times_to_delivery:
            return None
        ordered = sorted(self.times_to_delivery)
        return ordered[math.ceil(0.95 * len(ordered)) - 1]  # nearest rank


@dataclass(frozen=True, slots=True)
class SimulationReport:
    settings: SimulationSettings
    results: tuple[StrategyResult, ...]
    runtime_s: float

    def result(self, strategy: Strategy) -> StrategyResult | None:
        return next((r for r in self.results if r.strategy is strategy), None)


# -- the population and its sends -------------------------------------------------------------


def plan_sends(settings: SimulationSettings, start: datetime) -> list[Send]:
    """Who gets what when: seeded phones, each with its notifications at seeded times."""
    rng = random.Random(f"kaskad-simulate:{settings.seed}")
    numbers = rng.sample(range(10_000_000), settings.recipients)
    span = settings.span.total_seconds()
    sends = [
        (rng.uniform(0, span), f"+7900{number:07d}")
        for number in numbers
        for _ in range(settings.notifications_per_recipient)
    ]
    sends.sort()
    return [Send(start + timedelta(seconds=at), n, phone) for n, (at, phone) in enumerate(sends)]


def _planner_for(strategy: Strategy, settings: SimulationSettings) -> RoutePlannerFactory | None:
    match strategy:
        case Strategy.FIXED_CASCADE:
            return lambda own, adapters: FixedOrderPlanner(adapters, own, settings.fixed_wait)
        case Strategy.ORACLE:
            population = Population(settings.seed, settings.population)
            return lambda own, adapters: OraclePlanner(adapters, own, population)
        case _:
            return None  # the gateway's own planner (SMS only: the request allows only SMS)


# -- one strategy ------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, parts.fragment))


class _Driver:
    """Moves simulated time for one strategy and feeds its gateway the sends."""

    def __init__(
        self,
        app: KaskadApp,
        simulator: RunningSimulator,
        clock: ManualClock,
        stub: notification_pb2_grpc.NotificationServiceStub,
        auth: list[tuple[str, str]],
        strategy: Strategy,
        settings: SimulationSettings,
    ) -> None:
        self._app = app
        self._sim = simulator.state
        self._clock = clock
        self._stub = stub
        self._auth = auth
        self._strategy = strategy
        self._settings = settings
        self._queue = WorkQueue(app.pool, Queries())
        self._start = clock.now()

    async def run(self, sends: Sequence[Send]) -> None:
        clock = self._clock
        far = self._start + self._settings.span + timedelta(days=400)
        next_flush = self._start + FLUSH_EVERY
        index = 0
        while True:
            now = clock.now()
            due = []
            while index < len(sends) and sends[index].at <= now:
                due.append(sends[index])
                index += 1
            if due:
                await asyncio.gather(*(self._send(send) for send in due))
            await self._quiesce()
            if now >= next_flush:
                await self._app.reachability.flush(now)
                next_flush = now + FLUSH_EVERY
            upcoming = []
            if index < len(sends):
                upcoming.append(sends[index].at)
            sim_due = self._sim.next_due()
            if sim_due is not None:
                upcoming.append(sim_due)
            oldest = (await self._queue.backlog(far)).oldest_due
            if oldest is not None:
                # Due now yet unclaimed means leased by a failed handler: wait for its lease.
                upcoming.append(max(oldest, now + timedelta(seconds=1)))
            if not upcoming:
                return
            target = self._on_tick(max(min(upcoming), now))
            if target <= now:
                target = now + (self._settings.tick or timedelta(milliseconds=1))
            clock.advance(target - now)
            self._sim.advance_to(target)

    def _on_tick(self, at: datetime) -> datetime:
        tick = self._settings.tick
        if not tick:
            return at
        ticks = math.ceil((at - self._start) / tick)
        return self._start + tick * ticks

    async def _quiesce(self) -> None:
        """Let the simulator post what is due, run the work it causes, until nothing moves."""
        for _ in range(10_000):
            await self._sim.settle()
            if await self._app.runner.run_until_idle() == 0:
                return
        raise RuntimeError("the simulation did not settle")

    async def _send(self, send: Send) -> None:
        channels = [common_pb2.CHANNEL_SMS] if self._strategy is Strategy.SMS_ONLY else []
        request = notification_pb2.SendNotificationRequest(
            idempotency_key=f"simulate-{send.number}",
            recipient=notification_pb2.Recipient(phone=send.phone),
            text=self._settings.text.format(n=send.number + 1000),
            channels=channels,
        )
        try:
            await self._stub.SendNotification(request, metadata=self._auth, timeout=30)
        except grpc.aio.AioRpcError as exc:
            log.warning("send %d was refused: %s %s", send.number, exc.code(), exc.details())


async def _run_strategy(
    strategy: Strategy,
    settings: SimulationSettings,
    base: Settings,
    server_url: str,
    redis_url: str,
    start: datetime,
    sends: Sequence[Send],
) -> StrategyResult:
    began = time.perf_counter()
    tag = uuid.uuid4().hex[:8]
    database = f"kaskad_sim_{strategy.value}_{tag}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    database_url = _with_database(server_url, database)
    try:
        clock = ManualClock(start)
        http_port = _free_port()
        simulator = await run_simulator(
            SimulatorSettings(
                seed=settings.seed,
                callback_base_url=f"http://127.0.0.1:{http_port}",
                population=settings.population,
                virtual_time=True,
                virtual_start=start.timestamp(),
            ),
            port=0,
        )
        try:
            app_settings = base.with_overrides(
                grpc_address="127.0.0.1:0",
                http_address=f"127.0.0.1:{http_port}",
                provider_base_url=simulator.base_url,
                workers=0,
                database_url=database_url,
                redis_url=redis_url,
                redis_key_prefix=f"{base.redis_key_prefix}simulate:{tag}:",
            )
            app = await KaskadApp.start(
                app_settings,
                clock=clock,
                backends=Backends(database_url, redis_url),
                route_planner=_planner_for(strategy, settings),
            )
            try:
                result = await _drive(app, simulator, clock, strategy, settings, sends, start)
            finally:
                await app.stop(timedelta(0))
        finally:
            await simulator.close()
    finally:
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            await admin.close()
    return replace(result, runtime_s=time.perf_counter() - began)


async def _drive(
    app: KaskadApp,
    simulator: RunningSimulator,
    clock: ManualClock,
    strategy: Strategy,
    settings: SimulationSettings,
    sends: Sequence[Send],
    start: datetime,
) -> StrategyResult:
    key = new_api_key()
    client_id = await app.store.create_client(
        strategy.value, hash_api_key(key), key[: len(KEY_PREFIX) + 6], clock.now()
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}")
    try:
        stub = notification_pb2_grpc.NotificationServiceStub(channel)
        driver = _Driver(
            app, simulator, clock, stub, [("authorization", f"Bearer {key}")], strategy, settings
        )
        await driver.run(sends)
    finally:
        await channel.close()
    await app.reachability.flush(clock.now())

    # Costs as finance reads them: the ledger, this strategy's client.
    report = await app.ledger.report(
        CostReportQuery(
            start=start - timedelta(seconds=1),
            end=clock.now() + timedelta(seconds=1),
            group_by=(Grouping.CLIENT,),
            clients=(strategy.value,),
        )
    )
    queries = Queries()
    async with app.pool.acquire() as conn:
        outcomes = await conn.fetch(queries.simulate_outcomes, client_id)
        attempts = await conn.fetch(queries.simulate_attempts, client_id)
    times = tuple(
        (r["reached_at"] - r["created_at"]).total_seconds() for r in outcomes if r["reached_at"] is not None
    )
    delivered_by: dict[str, int] = {}
    for r in outcomes:
        if r["channel"] is not None:
            delivered_by[r["channel"]] = delivered_by.get(r["channel"], 0) + 1
    delivered = len(times)
    if delivered != report.total.delivered:
        raise RuntimeError(
            f"{strategy}: {delivered} notifications reached people, the ledger says {report.total.delivered}"
        )
    return StrategyResult(
        strategy=strategy,
        notifications=len(outcomes),
        delivered=delivered,
        attempts_by={r["channel"]: int(r["attempts"]) for r in attempts},
        paid_failed_attempts=sum(int(r["paid_failed"]) for r in attempts),
        provider_billed=_provider_billed(simulator, report.currency),
        total_cost=report.total.total_cost,
        sms_only_baseline=report.sms_only_baseline,
        currency=report.currency,
        delivered_by=dict(sorted(delivered_by.items())),
        times_to_delivery=times,
        runtime_s=0.0,
    )


def _provider_billed(simulator: RunningSimulator, currency: str) -> Decimal:
    entries = simulator.state.billing
    if any(entry.currency != currency for entry in entries):
        raise RuntimeError("the simulated providers billed in another currency than the ledger's")
    return sum((entry.amount for entry in entries), Decimal(0))


async def simulate(
    settings: SimulationSettings,
    base: Settings,
    *,
    server_url: str | None = None,
    redis_url: str | None = None,
) -> SimulationReport:
    """Run every strategy (concurrently, each on its own) and return their results.

    ``server_url``/``redis_url``: a PostgreSQL server where databases may be created,
    and Redis; by default ``base``'s URLs, else embedded servers under
    ``base.data_dir / "simulate"``.
    """
    began = time.perf_counter()
    backends = None
    if server_url is None or redis_url is None:
        backends = await asyncio.to_thread(
            Backends.resolve, base.with_overrides(data_dir=base.data_dir / "simulate")
        )
        server_url = server_url or backends.database_url
        redis_url = redis_url or backends.redis_url
    try:
        # Whole seconds, so tick boundaries fall on whole simulated seconds.
        start = datetime.now(UTC).replace(microsecond=0)
        sends = plan_sends(settings, start)
        # The strategies share nothing but the servers: run them side by side, so one's
        # database round trips overlap another's work.
        results = await asyncio.gather(
            *(
                _run_strategy(strategy, settings, base, server_url, redis_url, start, sends)
                for strategy in settings.strategies
            )
        )
    finally:
        if backends is not None:
            await asyncio.to_thread(backends.stop)
    return SimulationReport(settings, tuple(results), time.perf_counter() - began)


# -- output ------------------------------------------------------------------------------------

LABELS = {
    Strategy.SMS_ONLY: "SMS only",
    Strategy.FIXED_CASCADE: "fixed VK>Viber>SMS",
    Strategy.ROUTER: "Kaskad router",
    Strategy.ORACLE: "oracle",
}

COLUMNS = (
    "strategy",
    "notifications",
    "delivered",
    "share_delivered",
    "total_cost",
    "cost_per_delivered",
    "currency",
    "median_time_to_delivery_s",
    "p95_time_to_delivery_s",
    "attempts",
    "paid_failed_attempts",
    "provider_billed",
    "delivered_vk",
    "delivered_viber",
    "delivered_sms",
    "delivered_voice",
    "cost_vs_sms_only_percent",
    "cost_vs_oracle_percent",
)


def _relative(amount: Decimal, reference: StrategyResult | None) -> Decimal | None:
    """``amount`` as a percentage change against the reference's total cost."""
    if reference is None or not reference.total_cost:
        return None
    return ((amount - reference.total_cost) * 100 / reference.total_cost).quantize(MONEY, ROUND_HALF_EVEN)


def rows(report: SimulationReport) -> list[dict[str, Any]]:
    """One row per strategy, values as strings or numbers fit for CSV and JSON."""
    sms = report.result(Strategy.SMS_ONLY)
    oracle = report.result(Strategy.ORACLE)
    out = []
    for r in report.results:
        vs_sms = _relative(r.total_cost, sms)
        vs_oracle = _relative(r.total_cost, oracle)
        out.append(
            {
                "strategy": r.strategy.value,
                "notifications": r.notifications,
                "delivered": r.delivered,
                "share_delivered": str(r.share_delivered),
                "total_cost": str(r.total_cost.quantize(MONEY, ROUND_HALF_EVEN)),
                "cost_per_delivered": str(r.cost_per_delivered),
                "currency": r.currency,
                "median_time_to_delivery_s": None if r.median_s is None else round(r.median_s, 3),
                "p95_time_to_delivery_s": None if r.p95_s is None else round(r.p95_s, 3),
                "attempts": r.attempts,
                "paid_failed_attempts": r.paid_failed_attempts,
                "provider_billed": str(r.provider_billed.quantize(MONEY, ROUND_HALF_EVEN)),
                "delivered_vk": r.delivered_by.get("vk", 0),
                "delivered_viber": r.delivered_by.get("viber", 0),
                "delivered_sms": r.delivered_by.get("sms", 0),
                "delivered_voice": r.delivered_by.get("voice", 0),
                "cost_vs_sms_only_percent": None if vs_sms is None else str(vs_sms),
                "cost_vs_oracle_percent": None if vs_oracle is None else str(vs_oracle),
            }
        )
    return out


def to_csv(report: SimulationReport) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows(report):
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    return out.getvalue()


def to_json(report: SimulationReport) -> str:
    s = report.settings
    return json.dumps(
        {
            "settings": {
                "recipients": s.recipients,
                "notifications_per_recipient": s.notifications_per_recipient,
                "seed": s.seed,
                "span_s": s.span.total_seconds(),
                "fixed_wait_s": s.fixed_wait.total_seconds(),
                "tick_s": s.tick.total_seconds(),
                "population": {
                    "vk_reachable": s.population.vk_reachable,
                    "viber_reachable": s.population.viber_reachable,
                    "sms_reachable": s.population.sms_reachable,
                    "vk_slow": s.population.vk_slow,
                    "vk_dormant": s.population.vk_dormant,
                    "viber_slow": s.population.viber_slow,
                    "viber_dormant": s.population.viber_dormant,
                },
            },
            "runtime_s": round(report.runtime_s, 1),
            "strategies": rows(report),
        },
        indent=2,
    )


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.1f} min"
    return f"{value / 3600:g} h"


def to_table(report: SimulationReport) -> str:
    s = report.settings
    p = s.population
    lines = [
        f"{s.recipients:,} recipients x {s.notifications_per_recipient} notifications "
        f"over {_seconds(s.span.total_seconds())} simulated, seed {s.seed}; "
        f"reachable: VK {p.vk_reachable:.0%}, Viber {p.viber_reachable:.0%}, SMS {p.sms_reachable:.0%}; "
        f"slow/dormant: VK {p.vk_slow:.0%}/{p.vk_dormant:.0%}, "
        f"Viber {p.viber_slow:.0%}/{p.viber_dormant:.0%}; "
        f"fixed wait {_seconds(s.fixed_wait.total_seconds())}",
        "",
    ]
    header = (
        "strategy",
        "total cost",
        "per delivered",
        "delivered",
        "median",
        "p95",
        "vs SMS only",
        "vs oracle",
    )
    table = [header]
    for row, r in zip(rows(report), report.results, strict=True):
        table.append(
            (
                LABELS[r.strategy],
                f"{r.total_cost.quantize(MONEY, ROUND_HALF_EVEN):,} {r.currency}",
                f"{r.cost_per_delivered.quantize(MONEY, ROUND_HALF_EVEN)} {r.currency}",
                f"{r.share_delivered * 100:.2f}%",
                _seconds(r.median_s),
                _seconds(r.p95_s),
                "-" if row["cost_vs_sms_only_percent"] is None else f"{row['cost_vs_sms_only_percent']}%",
                "-" if row["cost_vs_oracle_percent"] is None else f"{row['cost_vs_oracle_percent']}%",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        cells = [line[0].ljust(widths[0])] + [
            cell.rjust(w) for cell, w in zip(line[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells))
    lines += ["", f"simulated in {report.runtime_s:.0f} s"]
    return "\n".join(lines)


# -- the command line --------------------------------------------------------------------------


def _positive_seconds(value: str) -> timedelta:
    seconds = float(value)
    if seconds < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return timedelta(seconds=seconds)


def _share(value: str) -> float:
    try:
        share = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from exc
    if not 0 <= share <= 1:
        raise argparse.ArgumentTypeError("must be a share between 0 and 1")
    return share


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SimulationSettings()
    parser.add_argument("--recipients", type=int, default=defaults.recipients)
    parser.add_argument(
        "--notifications-per-recipient", type=int, default=defaults.notifications_per_recipient
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="population, send times, latencies")
    parser.add_argument(
        "--span",
        type=_positive_seconds,
        default=defaults.span,
        help="seconds of simulated time the sends spread over",
    )
    parser.add_argument(
        "--fixed-wait",
        type=_positive_seconds,
        default=defaults.fixed_wait,
        help="seconds each step of the fixed cascade waits for its report",
    )
    parser.add_argument(
        "--tick", type=_positive_seconds, default=defaults.tick, help="time resolution in seconds (0: exact)"
    )
    population = defaults.population
    parser.add_argument("--vk-reachable", type=_share, default=population.vk_reachable)
    parser.add_argument("--viber-reachable", type=_share, default=population.viber_reachable)
    parser.add_argument("--sms-reachable", type=_share, default=population.sms_reachable)
    for channel in ("vk", "viber"):
        parser.add_argument(
            f"--{channel}-slow",
            type=_share,
            default=getattr(population, f"{channel}_slow"),
            help=f"share of {channel} users whose messages take minutes to arrive",
        )
        parser.add_argument(
            f"--{channel}-dormant",
            type=_share,
            default=getattr(population, f"{channel}_dormant"),
            help=f"share of {channel} users not active lately: their messages never arrive",
        )
    parser.add_argument(
        "--strategy",
        action="append",
        choices=[s.value for s in Strategy],
        help="run only these (repeatable; default: all four)",
    )
    parser.add_argument("--format", choices=["table", "csv", "json"], default="table")
    parser.add_argument("--output", type=Path, help="also write the CSV here")


def settings_from_args(args: argparse.Namespace) -> SimulationSettings:
    """The simulation the options describe; :class:`ConfigError` for values that do not fit together."""
    defaults = SimulationSettings()
    try:
        return _settings_from_args(args, defaults)
    except ValueError as exc:
        raise ConfigError(f"kaskad simulate: {exc}") from exc


def _settings_from_args(args: argparse.Namespace, defaults: SimulationSettings) -> SimulationSettings:
    return SimulationSettings(
        recipients=args.recipients,
        notifications_per_recipient=args.notifications_per_recipient,
        seed=args.seed,
        span=args.span,
        fixed_wait=args.fixed_wait,
        tick=args.tick,
        population=PopulationSettings(
            vk_reachable=args.vk_reachable,
            viber_reachable=args.viber_reachable,
            sms_reachable=args.sms_reachable,
            voice_answer_rate=defaults.population.voice_answer_rate,
            read_rate=defaults.population.read_rate,
            vk_slow=args.vk_slow,
            vk_dormant=args.vk_dormant,
            viber_slow=args.viber_slow,
            viber_dormant=args.viber_dormant,
        ),
        strategies=tuple(Strategy(s) for s in args.strategy) if args.strategy else defaults.strategies,
    )


async def run_command(args: argparse.Namespace, base: Settings) -> int:
    """``kaskad simulate``: run, print the table (or CSV, JSON), optionally write the CSV."""
    settings = settings_from_args(args)
    for name in ("gateway", "providers", "lab", "aiohttp"):
        # A line per notification would drown the table and slow the run.
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).getEffectiveLevel()))
    report = await simulate(settings, base, server_url=base.database_url, redis_url=base.redis_url)
    fmt = "json" if getattr(args, "json", False) else args.format
    if fmt == "csv":
        sys.stdout.write(to_csv(report))
    elif fmt == "json":
        print(to_json(report))
    else:
        print(to_table(report))
    if args.output is not None:
        args.output.write_text(to_csv(report), encoding="utf-8")
    return 0
