"""``kaskad``: the command line for people.

    kaskad serve                       run the gateway (embedded PostgreSQL and Redis by default)
    kaskad send PHONE --text TEXT      send a notification (or --template ID --param k=v)
    kaskad get ID                      show a notification, its route and attempts
    kaskad cancel ID                   stop a notification's pending steps
    kaskad simulate                    SMS only vs fixed cascade vs router vs oracle, simulated
    kaskad client create NAME          create a calling service and print its API key once
                                       (--role finance: it may read every client's costs)
    kaskad client role NAME ROLE       service (its own costs only) or finance (every client's)
    kaskad client revoke NAME          revoke every key of a calling service
    kaskad client list                 list calling services

``send``, ``get`` and ``cancel`` talk to a running gateway over gRPC with the key in
``KASKAD_API_KEY`` (or ``--api-key``); the ``client`` commands work on the database.
Beside a ``kaskad serve`` on the embedded default, ``client`` and ``report`` use its
embedded PostgreSQL (never stopping it) and never touch its Redis.
Every command prints for people and takes ``--json`` for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import logging
import os
import signal
import sys
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import grpc
from google.protobuf import json_format

from gateway.api.convert import money_from_proto
from gateway.api.report_format import to_csv, to_json, to_table
from gateway.core.auth import KEY_PREFIX, ClientRole, hash_api_key, new_api_key
from gateway.core.clock import SystemClock
from gateway.core.config import ConfigError, Settings, load_settings
from gateway.core.errors import KaskadError
from gateway.runtime.app import KaskadApp, open_store
from gateway.runtime.embedded import EmbeddedPostgres
from gateway.store.ledger import CostLedger, CostReportQuery, Grouping
from gateway.store.queries import Queries
from kaskad.v1 import common_pb2, notification_pb2, notification_pb2_grpc
from router.domain import Channel

log = logging.getLogger("kaskad")

# Commands the lab serves (lab.commands): given whatever follows the command's name.
LAB_COMMANDS = ("simulator", "simulate")


def _lab() -> ModuleType:
    # The lab is a development tool beside the product: loaded by name, only when asked for.
    return importlib.import_module("lab.commands")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_file=args.config)


async def _demo_key(app: KaskadApp) -> str:
    """The demo client's key, kept in the data dir so every `make run` can print it."""
    key_file = app.settings.data_dir / "demo-api-key"
    if key_file.exists():
        key = key_file.read_text().strip()
        if await app.store.authenticate(hash_api_key(key)) is not None:
            # A demo made before client roles existed: it reads the whole cost report too.
            await app.store.set_client_role("demo", ClientRole.FINANCE)
            return key
    key = new_api_key()
    try:
        # The demo client also reads the cost report for everyone (kaskad report costs).
        await app.store.create_client(
            "demo", hash_api_key(key), key[: len(KEY_PREFIX) + 6], app.clock.now(), ClientRole.FINANCE
        )
    except KaskadError:
        await app.store.add_key("demo", hash_api_key(key), key[: len(KEY_PREFIX) + 6], app.clock.now())
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key


async def _serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.simulator or args.demo:
        # Asking for the simulator or the demo asks for its public credentials too.
        settings = settings.with_overrides(allow_simulator_credentials=True)
    stop = asyncio.Event()
    hurried = False
    app: KaskadApp | None = None

    def on_signal() -> None:
        nonlocal hurried
        if stop.is_set():  # a second signal: the operator will not wait for the drain
            print("Second signal: stopping now, cancelling what is still in flight...", flush=True)
            hurried = True
            if app is not None:
                app.hurry()
        stop.set()

    # Before anything listens: a signal that comes while Kaskad starts (its port may already
    # take calls) drains it once started, instead of killing it with the default action.
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    simulator = None
    if args.simulator:
        # The provider simulator in this process, wired both ways: adapters submit to it,
        # and it posts signed delivery callbacks to this gateway's HTTP port.
        simulator = await _lab().start_simulator(f"http://{settings.http_address}", args.simulator_port)
        settings = settings.with_overrides(provider_base_url=simulator.base_url)
        print(
            f"Provider simulator on {simulator.base_url} (deliveries: {simulator.base_url}/_sim/deliveries)"
        )
    app = await KaskadApp.start(settings)
    if hurried:
        app.hurry()
    # What start built (modules, settings, the app) lives as long as the process: frozen, the
    # garbage collector stops scanning it in every full collection (measured: ~10% less CPU per send).
    gc.collect()
    gc.freeze()
    host = settings.grpc_address.rpartition(":")[0]
    print(f"Kaskad is serving gRPC on {host}:{app.grpc_port} and HTTP on port {app.http_port}.")
    if args.demo:
        key = await _demo_key(app)
        print(
            "Send a first notification from another terminal:\n"
            f"  export KASKAD_API_KEY={key}\n"
            "  .venv/bin/kaskad send +79161234567 --text 'Your parcel is on its way'\n"
            "  .venv/bin/kaskad get <notification id>\n"
            f"Costs: http://{host}:{app.http_port}/reports/costs (any user name, the key as the password)",
            flush=True,
        )
    else:
        print(
            "Create a key with `kaskad client create NAME`, then\n"
            "  KASKAD_API_KEY=<key> kaskad send +79161234567 --text 'Hello'",
            flush=True,
        )
    await stop.wait()
    print("Shutting down: health NOT_SERVING, finishing in-flight calls and work...", flush=True)
    await app.stop(delay=settings.shutdown_delay)
    if simulator is not None:
        await simulator.close()
    return 1 if hurried else 0


def _simulator(args: argparse.Namespace) -> int:
    return cast(int, _lab().simulator(args.lab_args))


def _database_url(settings: Settings) -> str:
    """The configured database, or the embedded one of the data dir: the running server's
    when ``kaskad serve`` runs there (it stops with the last process using it)."""
    if settings.database_url is not None:
        return settings.database_url
    return EmbeddedPostgres.start(settings.data_dir).url


async def _client(args: argparse.Namespace) -> int:
    # Only PostgreSQL: Redis, embedded or not, is the running gateways' and is left alone.
    settings = _settings(args)
    clock = SystemClock()
    pool, store = await open_store(settings, await asyncio.to_thread(_database_url, settings), clock)
    try:
        if args.client_command == "create":
            key = new_api_key()
            role = ClientRole(args.role)
            prefix = key[: len(KEY_PREFIX) + 6]
            await store.create_client(args.name, hash_api_key(key), prefix, clock.now(), role)
            if args.json:
                print(json.dumps({"client": args.name, "role": role.value, "api_key": key}))
            else:
                print(f"Created {role} client {args.name!r}. Its API key (shown only now, store it safely):")
                print(key)
        elif args.client_command == "role":
            await store.set_client_role(args.name, ClientRole(args.role))
            if args.json:
                print(json.dumps({"client": args.name, "role": args.role}))
            else:
                print(f"Client {args.name!r} is now {args.role}.")
        elif args.client_command == "revoke":
            count = await store.revoke_client(args.name, clock.now())
            if args.json:
                print(json.dumps({"client": args.name, "revoked_keys": count}))
            else:
                print(f"Revoked {count} key(s) of client {args.name!r}.")
        else:
            clients = await store.list_clients()
            if args.json:
                print(json.dumps([{**c, "created_at": c["created_at"].isoformat()} for c in clients]))
            else:
                for c in clients:
                    print(
                        f"{c['name']:<32} {c['role']:<8} active keys: {c['active_keys']}  "
                        f"created {c['created_at']:%Y-%m-%d}"
                    )
    finally:
        await pool.close()
    return 0


def _period_bound(value: str, option: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            f"{option} takes a date or time like 2026-11-01 or 2026-11-01T09:00, got {value!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def cost_query_from_args(args: argparse.Namespace, now: datetime) -> CostReportQuery:
    """The report period and grouping from ``kaskad report costs`` options."""
    end = _period_bound(args.end, "--to") if args.end else now
    start = _period_bound(args.start, "--from") if args.start else end - timedelta(days=30)
    groups = []
    for name in filter(None, (part.strip() for part in args.group_by.split(","))):
        try:
            groups.append(Grouping(name))
        except ValueError:
            known = ", ".join(g.value for g in Grouping)
            raise ConfigError(f"--group-by knows {known}; got {name!r}") from None
    if end <= start:
        raise ConfigError("--to must be after --from")
    return CostReportQuery(
        start=start,
        end=end,
        group_by=tuple(dict.fromkeys(groups)),
        channels=tuple(args.channel),
        providers=tuple(args.provider),
        clients=tuple(args.client),
        template_ids=tuple(args.template),
    )


async def _report(args: argparse.Namespace) -> int:
    settings = _settings(args)
    clock = SystemClock()
    pool, _ = await open_store(settings, await asyncio.to_thread(_database_url, settings), clock)
    try:
        report = await CostLedger(pool, Queries(), settings.currency).report(
            cost_query_from_args(args, clock.now())
        )
    finally:
        await pool.close()
    fmt = "json" if args.json else args.format
    if fmt == "csv":
        sys.stdout.buffer.write(to_csv(report).encode("utf-8"))
    elif fmt == "json":
        print(to_json(report))
    else:
        print(to_table(report))
    return 0


async def _simulate(args: argparse.Namespace) -> int:
    return cast(int, await _lab().simulate(args.lab_args, _settings(args), json_output=args.json))


def _stub(args: argparse.Namespace) -> tuple[grpc.aio.Channel, Any, list[tuple[str, str]]]:
    settings = _settings(args)
    key = args.api_key or os.environ.get("KASKAD_API_KEY", "")
    if not key:
        raise ConfigError("no API key: set KASKAD_API_KEY or pass --api-key (kaskad client create NAME)")
    channel = grpc.aio.insecure_channel(args.address or settings.grpc_address)
    return (
        channel,
        notification_pb2_grpc.NotificationServiceStub(channel),
        [("authorization", f"Bearer {key}")],
    )


def _print_message(message: Any, as_json: bool) -> None:
    if as_json:
        print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=None))
    else:
        print(json_format.MessageToJson(message, preserving_proto_field_name=True, indent=2))


async def _send(args: argparse.Namespace) -> int:
    request = notification_pb2.SendNotificationRequest(
        idempotency_key=args.idempotency_key or str(uuid.uuid4()),
        recipient=notification_pb2.Recipient(phone=args.phone),
        metadata=dict(_pairs(args.metadata, "--metadata")),
    )
    if args.template:
        request.template.template_id = args.template
        request.template.params.update(dict(_pairs(args.param, "--param")))
    else:
        request.text = args.text
    for name in args.channel:
        request.channels.append(common_pb2.Channel.Value(f"CHANNEL_{name.upper()}"))
    if args.read:
        request.ack_policy = notification_pb2.ACK_POLICY_READ
    channel, stub, metadata = _stub(args)
    async with channel:
        response = await stub.SendNotification(request, metadata=metadata, timeout=args.timeout)
    if args.json:
        _print_message(response, True)
    else:
        route = " -> ".join(
            f"{common_pb2.Channel.Name(s.channel).removeprefix('CHANNEL_').lower()}"
            for s in response.route.steps
        )
        note = " (duplicate: already accepted with this key)" if response.duplicate else ""
        print(f"Accepted {response.notification_id}{note}\nRoute: {route}")
    return 0


async def _get_or_cancel(args: argparse.Namespace) -> int:
    channel, stub, metadata = _stub(args)
    async with channel:
        if args.command == "get":
            response = await stub.GetNotification(
                notification_pb2.GetNotificationRequest(notification_id=args.id),
                metadata=metadata,
                timeout=args.timeout,
            )
        else:
            response = await stub.CancelNotification(
                notification_pb2.CancelNotificationRequest(notification_id=args.id),
                metadata=metadata,
                timeout=args.timeout,
            )
    if args.json:
        _print_message(response.notification, True)
    else:
        print(describe_notification(response.notification))
    return 0


def _channel_name(value: int) -> str:
    return common_pb2.Channel.Name(value).removeprefix("CHANNEL_").lower()  # type: ignore[arg-type]


def _money(value: common_pb2.Money) -> str:
    money = money_from_proto(value)
    return f"{money.amount.quantize(Decimal('0.01'))} {money.currency}"


def describe_notification(n: notification_pb2.Notification) -> str:
    """A notification as a person reads it: state, route with costs, attempts."""
    state = notification_pb2.NotificationState.Name(n.state).removeprefix("NOTIFICATION_STATE_")
    lines = [
        f"Notification {n.notification_id}  ({n.idempotency_key})",
        f"  state:      {state.lower()}",
        f"  recipient:  {n.recipient.phone}",
        f"  total cost: {_money(n.total_cost)}",
        f"  route (expected {_money(n.route.expected_cost)}):",
    ]
    for number, step in enumerate(n.route.steps, 1):
        lines.append(
            f"    {number}. {_channel_name(step.channel):<6} p={step.delivery_probability:.2f} "
            f"expected {_money(step.expected_cost)}, wait {step.wait.ToTimedelta()}"
        )
    for skipped in n.route.skipped:
        lines.append(f"    -  {_channel_name(skipped.channel):<6} skipped: {skipped.reason}")
    lines.append("  attempts:" if n.attempts else "  attempts:   none yet")
    for attempt in n.attempts:
        outcome = notification_pb2.AttemptOutcome.Name(attempt.outcome).removeprefix("ATTEMPT_OUTCOME_")
        extra = f" ({attempt.detail})" if attempt.detail else ""
        billed = _money(attempt.billed_cost)
        lines.append(f"    {_channel_name(attempt.channel):<6} {outcome.lower():<12} billed {billed}{extra}")
    return "\n".join(lines)


def _pairs(items: Sequence[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{option} takes KEY=VALUE, got {item!r}")
        pairs.append((key, value))
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kaskad", description="Kaskad notification gateway")
    parser.add_argument("--config", type=Path, help="TOML settings file (or KASKAD_CONFIG)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument(
        "--demo", action="store_true", help="create a 'demo' client and print its key (make run)"
    )
    serve.add_argument(
        "--simulator", action="store_true", help="run the provider simulator in-process and use it"
    )
    serve.add_argument("--simulator-port", type=int, default=8790)
    # The lab's commands parse their own options (``kaskad simulate --help``).
    commands.add_parser(
        "simulator",
        add_help=False,
        help="run the provider simulator (all four provider APIs on one port; --help for options)",
    )

    def with_remote(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--address", help="gateway gRPC address (default: KASKAD_GRPC_ADDRESS)")
        sub.add_argument("--api-key", help="API key (default: KASKAD_API_KEY)")
        sub.add_argument("--timeout", type=float, default=10.0, help="seconds")
        sub.add_argument("--json", action="store_true", help="print JSON for scripts")

    send = commands.add_parser("send", help="send a notification to a phone")
    send.add_argument("phone", help="E.164, for example +79161234567")
    content = send.add_mutually_exclusive_group(required=True)
    content.add_argument("--text")
    content.add_argument("--template", help="a template id from the configuration")
    send.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    send.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    send.add_argument("--channel", action="append", default=[], choices=[c.value for c in Channel])
    send.add_argument("--read", action="store_true", help="ack only when read (voice robot fallback)")
    send.add_argument("--idempotency-key", help="default: a new random key")
    with_remote(send)
    for name in ("get", "cancel"):
        sub = commands.add_parser(name, help=f"{name} a notification by id")
        sub.add_argument("id")
        with_remote(sub)

    report = commands.add_parser("report", help="reports for finance")
    report_commands = report.add_subparsers(dest="report_command", required=True)
    costs = report_commands.add_parser(
        "costs", help="what notifications cost, and the saving against SMS only"
    )
    costs.add_argument("--from", dest="start", help="start of the period (default: 30 days before --to)")
    costs.add_argument("--to", dest="end", help="end of the period, exclusive (default: now)")
    costs.add_argument(
        "--group-by", default="channel", help="comma-separated: channel,provider,client,template,day"
    )
    costs.add_argument("--channel", action="append", default=[], choices=[c.value for c in Channel])
    costs.add_argument("--provider", action="append", default=[])
    costs.add_argument("--client", action="append", default=[])
    costs.add_argument("--template", action="append", default=[])
    costs.add_argument("--format", choices=["table", "csv", "json"], default="table")
    costs.add_argument("--json", action="store_true", help="same as --format json")

    commands.add_parser(
        "simulate",
        add_help=False,
        help="compare SMS only, a fixed cascade, the router and an oracle in simulated time",
    )

    client = commands.add_parser("client", help="manage calling services and their API keys")
    client_commands = client.add_subparsers(dest="client_command", required=True)
    roles = [r.value for r in ClientRole]
    for name in ("create", "role", "revoke"):
        sub = client_commands.add_parser(name)
        sub.add_argument("name")
        if name == "create":
            sub.add_argument(
                "--role",
                choices=roles,
                default=ClientRole.SERVICE.value,
                help="finance: reads every client's costs",
            )
        elif name == "role":
            sub.add_argument("role", choices=roles)
        sub.add_argument("--json", action="store_true", help="print JSON for scripts")
    client_list = client_commands.add_parser("list")
    client_list.add_argument("--json", action="store_true", help="print JSON for scripts")
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The parsed command line; a lab command keeps the rest of its line in ``lab_args``."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command in LAB_COMMANDS:
        args.lab_args = rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("KASKAD_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "simulator":
        return _simulator(args)
    runners = {
        "serve": _serve,
        "client": _client,
        "report": _report,
        "simulate": _simulate,
        "send": _send,
        "get": _get_or_cancel,
        "cancel": _get_or_cancel,
    }
    try:
        return asyncio.run(runners[args.command](args))
    except ConfigError as exc:
        print(f"kaskad: configuration error: {exc}", file=sys.stderr)
        return 2
    except KaskadError as exc:
        print(f"kaskad: {exc}", file=sys.stderr)
        return 1
    except grpc.aio.AioRpcError as exc:
        print(f"kaskad: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
