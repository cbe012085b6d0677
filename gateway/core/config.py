"""Kaskad settings: one typed object, read from ``KASKAD_*`` variables and an optional TOML file.

Precedence, lowest first: built-in defaults, the TOML file (``KASKAD_CONFIG`` or
``--config``), then ``KASKAD_*`` environment variables. Every value is checked when
the settings are built; a bad one raises :class:`ConfigError` naming the variable or
key and what was expected, so ``kaskad serve`` fails at start with a clear message
rather than later with a traceback.

Each field of :class:`Settings` carries a one-line description in its metadata;
:func:`settings_reference` renders them as the README's settings table, and
``make settings-doc`` (``python -m gateway.core.config --update README.md``) rewrites it.

Example TOML::

    grpc_address = "0.0.0.0:50051"
    database_url = "postgresql://kaskad@db/kaskad"

    [templates.delivery_status]
    body = "Parcel {{ order }} is {{ status }}"
    [templates.delivery_status.channels]
    sms = "Posylka {{ order }}: {{ status }}"
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from router.domain import Channel

ENV_PREFIX = "KASKAD_"


class ConfigError(ValueError):
    """A setting is missing or has a bad value; the message names it."""


@dataclass(frozen=True, slots=True)
class TemplateSettings:
    """A notification template: a body with ``{{ placeholders }}`` and optional per-channel bodies."""

    template_id: str
    body: str
    channel_bodies: Mapping[Channel, str] = field(default_factory=dict)


def _doc(text: str, toml: str | None = None) -> dict[str, str]:
    """A field's metadata: its one-line description for the settings reference, and for a
    setting read only from the TOML file, the table it is written as."""
    return {"doc": text} if toml is None else {"doc": text, "toml": toml}


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything Kaskad can be configured with. Build it with :func:`load_settings`.

    Each field's ``metadata["doc"]`` is its one line in the README's settings reference
    (:func:`settings_reference`); a test fails when a field has none or the README is stale.
    """

    grpc_address: str = field(default="127.0.0.1:50051", metadata=_doc("gRPC listen address"))
    http_address: str = field(
        default="127.0.0.1:8080",
        metadata=_doc("HTTP listen address: `/healthz`, `/metrics`, provider callbacks, the costs page"),
    )
    data_dir: Path = field(
        default=Path(".kaskad"), metadata=_doc("data of the embedded PostgreSQL and Redis, and the demo key")
    )
    database_url: str | None = field(
        default=None,
        metadata=_doc(
            "PostgreSQL, like `postgresql://user@host:5432/db`; unset: embedded, under the data dir"
        ),
    )
    redis_url: str | None = field(
        default=None, metadata=_doc("Redis, like `redis://host:6379/0`; unset: embedded, under the data dir")
    )
    redis_key_prefix: str = field(
        default="kaskad:", metadata=_doc("prefix of every Redis key, so deployments can share one Redis")
    )
    database_pool_min: int = field(default=2, metadata=_doc("fewest PostgreSQL connections in the pool"))
    database_pool_max: int = field(default=20, metadata=_doc("most PostgreSQL connections in the pool"))
    accept_batch_size: int = field(
        default=100, metadata=_doc("group commit: most sends in one insert and commit (`1`: one per send)")
    )
    accept_batch_delay: timedelta = field(
        default=timedelta(milliseconds=5),
        metadata=_doc("longest a send waits for company while another batch is being written"),
    )
    accept_batch_idle_delay: timedelta = field(
        default=timedelta(0),
        metadata=_doc("longest a send waits for company when no batch is being written"),
    )
    # Only its provider waits on a callback's answer, so callbacks wait longer for company.
    callback_batch_size: int = field(
        default=100, metadata=_doc("group commit of delivery callbacks: most in one insert and commit")
    )
    callback_batch_delay: timedelta = field(
        default=timedelta(milliseconds=10),
        metadata=_doc("longest a callback waits for company while another batch is being written"),
    )
    callback_batch_idle_delay: timedelta = field(
        default=timedelta(milliseconds=5),
        metadata=_doc("longest a callback waits for company when no batch is being written"),
    )
    shutdown_delay: timedelta = field(
        default=timedelta(seconds=1),
        metadata=_doc("after SIGTERM, health says `NOT_SERVING` but calls are still served this long"),
    )
    shutdown_grace: timedelta = field(
        default=timedelta(seconds=10),
        metadata=_doc("then, time for calls in flight to commit and workers to finish their batch"),
    )
    health_interval: timedelta = field(
        default=timedelta(seconds=1), metadata=_doc("time between the PostgreSQL probes behind gRPC health")
    )
    health_timeout: timedelta = field(
        default=timedelta(seconds=2), metadata=_doc("longest a PostgreSQL health probe may take")
    )
    redis_check_interval: timedelta = field(
        default=timedelta(seconds=5), metadata=_doc("time between checks of Redis for its health service")
    )
    default_deadline: timedelta = field(
        default=timedelta(hours=24),
        metadata=_doc("how long a notification may take when no deadline is given"),
    )
    max_deadline: timedelta = field(
        default=timedelta(days=30),
        metadata=_doc("furthest ahead a caller's `deadline` may lie (past it: `INVALID_ARGUMENT`)"),
    )
    max_ack_timeout: timedelta = field(
        default=timedelta(days=30), metadata=_doc("longest `ack_timeout` a caller may ask for")
    )
    max_text_length: int = field(default=1000, metadata=_doc("longest message text, in characters"))
    max_batch_size: int = field(default=1000, metadata=_doc("most items in one `SendNotificationBatch`"))
    currency: str = field(default="RUB", metadata=_doc("currency of prices, costs and `max_cost` (ISO 4217)"))
    log_level: str = field(default="INFO", metadata=_doc("`DEBUG`, `INFO`, `WARNING` or `ERROR`"))
    templates: Mapping[str, TemplateSettings] = field(
        default_factory=dict,
        metadata=_doc("notification templates: `body` and per-channel `channels` bodies", "[templates.ID]"),
    )
    # Raw tables; gateway.runtime.provider_registry checks and builds them.
    providers: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict,
        metadata=_doc(
            "a provider's URL, credentials, prices, timeouts (`vk`, `viber`, `sms`, `voice`)",
            "[providers.NAME]",
        ),
    )
    # Raw tables; gateway.store.rate_limits checks them.
    rate_limits: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict,
        metadata=_doc(
            "a provider's `per_second`, `per_recipient_per_day`, `concurrency` (`0`: none)",
            "[rate_limits.NAME]",
        ),
    )
    provider_base_url: str | None = field(
        default=None,
        metadata=_doc("one base URL for every provider adapter (the simulator); unset: each adapter's own"),
    )
    allow_simulator_credentials: bool = field(
        default=False,
        metadata=_doc("development only: providers may keep the simulator's public credentials"),
    )
    workers: int = field(default=1, metadata=_doc("cascade workers in this process (`0`: accept only)"))
    worker_batch_size: int = field(
        default=50, metadata=_doc("work items a worker claims at once and applies in one transaction")
    )
    worker_poll_interval: timedelta = field(
        default=timedelta(milliseconds=200),
        metadata=_doc("how long an idle worker waits before looking for due work (new work wakes it sooner)"),
    )
    worker_gather_delay: timedelta = field(
        default=timedelta(milliseconds=30),
        metadata=_doc("wait after a batch that was not full before claiming again (`0`: off)"),
    )
    # Making way: a worker waits (at most a second) before it claims more; the cascade catches up.
    accept_latency_target: timedelta = field(
        default=timedelta(milliseconds=15),
        metadata=_doc("mean accept time above which this process's workers make way for accepts (`0`: off)"),
    )
    work_lease: timedelta = field(
        default=timedelta(seconds=60),
        metadata=_doc("how long a claimed work item stays leased before another worker may take it"),
    )
    provider_concurrency: int = field(
        default=64,
        metadata=_doc("calls in flight per provider in each gateway process; more wait their turn"),
    )
    step_wait_min: timedelta = field(
        default=timedelta(seconds=30), metadata=_doc("shortest wait for a step's delivery report")
    )
    step_wait_max: timedelta = field(
        default=timedelta(minutes=30), metadata=_doc("longest wait for a step's delivery report")
    )
    step_wait_default: timedelta = field(
        default=timedelta(minutes=5), metadata=_doc("wait for a report while a channel has too few reports")
    )
    overdue_wait_grace: timedelta = field(
        default=timedelta(seconds=60),
        metadata=_doc("extra wait, once, for a report wait found overdue after an outage (`0`: off)"),
    )
    messenger_ttl_margin: timedelta = field(
        default=timedelta(0),
        metadata=_doc("added to a VK or Viber step's wait to make the TTL it is sent with"),
    )
    status_recheck_after: timedelta = field(
        default=timedelta(seconds=30),
        metadata=_doc("a status lookup that answered pending (or failed) is asked again after this"),
    )
    voice_retries: int = field(
        default=2, metadata=_doc("times the voice robot calls again after no answer or busy")
    )
    voice_retry_spacing: timedelta = field(
        default=timedelta(minutes=10), metadata=_doc("time between the voice robot's calls")
    )
    value_of_an_hour: Decimal = field(
        default=Decimal("2.00"),
        metadata=_doc(
            "what reaching a person an hour sooner is worth, in `KASKAD_CURRENCY` (`0`: cost alone)"
        ),
    )
    provider_patience: timedelta = field(
        default=timedelta(minutes=10),
        metadata=_doc("longest a step waits out a provider-wide fault before the next channel"),
    )
    auth_cache_ttl: timedelta = field(
        default=timedelta(seconds=2),
        metadata=_doc("how long a known API key is remembered; a revoked key stops within this"),
    )
    max_backlog: int = field(
        default=200_000, metadata=_doc("due work items above which sends are refused (`0`: no limit)")
    )
    client_quota_per_second: int = field(
        default=0, metadata=_doc("accepted notifications per client per second, counted in Redis (`0`: none)")
    )
    otlp_endpoint: str | None = field(
        default=None,
        metadata=_doc(
            "OTLP/HTTP collector for metrics and traces, like `http://collector:4318`; unset: none"
        ),
    )
    recipient_hash_key: str = field(
        default="kaskad-reachability",
        metadata=_doc("key of the hash that stands for a phone in reachability data; set your own"),
    )

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some values replaced (used by tests and the CLI)."""
        return replace(self, **changes)


def _parse_address(name: str, value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{name} must look like HOST:PORT (for example 127.0.0.1:50051), got {value!r}")
    return value


def _parse_seconds(name: str, value: object) -> timedelta:
    try:
        seconds = float(str(value))
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {value!r}") from None
    if seconds < 0:
        raise ConfigError(f"{name} must not be negative, got {value!r}")
    return timedelta(seconds=seconds)


def _parse_int(name: str, value: object, minimum: int) -> int:
    try:
        number = int(str(value))
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {number}")
    return number


def _parse_url(name: str, value: object, schemes: tuple[str, ...]) -> str | None:
    text = str(value).strip()
    if not text:
        return None
    if not text.startswith(tuple(f"{s}://" for s in schemes)):
        raise ConfigError(f"{name} must be a URL starting with one of {', '.join(schemes)}://")
    return text


def _parse_templates(raw: object) -> dict[str, TemplateSettings]:
    if not isinstance(raw, Mapping):
        raise ConfigError("[templates] must be a table of tables, one per template id")
    templates: dict[str, TemplateSettings] = {}
    for template_id, spec in raw.items():
        where = f"templates.{template_id}"
        if not isinstance(spec, Mapping) or not isinstance(spec.get("body"), str):
            raise ConfigError(f"{where} needs a string 'body'")
        channel_bodies: dict[Channel, str] = {}
        for channel_name, body in dict(spec.get("channels", {})).items():
            try:
                channel = Channel(channel_name)
            except ValueError:
                known = ", ".join(c.value for c in Channel)
                raise ConfigError(
                    f"{where}.channels has unknown channel {channel_name!r}; known: {known}"
                ) from None
            if not isinstance(body, str):
                raise ConfigError(f"{where}.channels.{channel_name} must be a string")
            channel_bodies[channel] = body
        unknown = set(spec) - {"body", "channels"}
        if unknown:
            raise ConfigError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
        templates[str(template_id)] = TemplateSettings(str(template_id), spec["body"], channel_bodies)
    return templates


def _convert(name: str, key: str, value: object) -> object:
    """Turn one raw value (a string from the environment or a TOML value) into its typed form."""
    match key:
        case "grpc_address" | "http_address":
            return _parse_address(name, str(value))
        case "data_dir":
            return Path(str(value))
        case "database_url":
            return _parse_url(name, value, ("postgresql", "postgres"))
        case "redis_url":
            return _parse_url(name, value, ("redis", "rediss", "unix"))
        case (
            "shutdown_grace"
            | "shutdown_delay"
            | "health_interval"
            | "health_timeout"
            | "redis_check_interval"
            | "default_deadline"
            | "max_deadline"
            | "max_ack_timeout"
            | "work_lease"
            | "worker_poll_interval"
            | "worker_gather_delay"
            | "accept_latency_target"
            | "auth_cache_ttl"
            | "step_wait_min"
            | "step_wait_max"
            | "step_wait_default"
            | "overdue_wait_grace"
            | "messenger_ttl_margin"
            | "status_recheck_after"
            | "voice_retry_spacing"
            | "provider_patience"
            | "accept_batch_delay"
            | "callback_batch_delay"
            | "accept_batch_idle_delay"
            | "callback_batch_idle_delay"
        ):
            return _parse_seconds(name, value)
        case (
            "database_pool_min"
            | "database_pool_max"
            | "max_text_length"
            | "max_batch_size"
            | "worker_batch_size"
            | "provider_concurrency"
            | "accept_batch_size"
            | "callback_batch_size"
        ):
            return _parse_int(name, value, 1)
        case "workers" | "voice_retries" | "max_backlog" | "client_quota_per_second":
            return _parse_int(name, value, 0)
        case "provider_base_url" | "otlp_endpoint":
            return _parse_url(name, value, ("http", "https"))
        case "providers" | "rate_limits":
            if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
                raise ConfigError(f"[{key}] must be a table of tables, one per provider")
            return {str(k): dict(v) for k, v in value.items()}
        case "value_of_an_hour":
            return _parse_amount(name, value)
        case "recipient_hash_key":
            if not str(value):
                raise ConfigError(f"{name} must not be empty")
            return str(value)
        case "currency":
            code = str(value)
            if len(code) != 3 or not code.isalpha() or not code.isupper():
                raise ConfigError(f"{name} must be a three-letter ISO 4217 code, got {code!r}")
            return code
        case "log_level":
            level = str(value).upper()
            if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
                raise ConfigError(f"{name} must be DEBUG, INFO, WARNING or ERROR, got {value!r}")
            return level
        case "redis_key_prefix":
            return str(value)
        case "allow_simulator_credentials":
            return _parse_bool(name, value)
        case "templates":
            return _parse_templates(value)
    raise ConfigError(f"unknown setting {name}")


def _parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no", ""):
        return False
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _parse_amount(name: str, value: object) -> Decimal:
    if isinstance(value, float | bool):
        # A TOML float has already lost the exact amount; money is written as a string.
        raise ConfigError(f'{name} must be a decimal amount written as a string or integer, like "2.00"')
    try:
        amount = Decimal(str(value))
    except ArithmeticError as exc:
        raise ConfigError(f"{name} must be a decimal amount, got {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ConfigError(f"{name} must be a finite amount of at least 0, got {value!r}")
    return amount


_KEYS = tuple(f.name for f in fields(Settings))
# Settings written only in the TOML file, as tables; the environment cannot set them.
_TOML_ONLY = frozenset(f.name for f in fields(Settings) if "toml" in f.metadata)


def load_settings(environ: Mapping[str, str] | None = None, config_file: Path | None = None) -> Settings:
    """Build :class:`Settings` from a TOML file and ``KASKAD_*`` variables, checking every value."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    path = config_file or (Path(env[f"{ENV_PREFIX}CONFIG"]) if env.get(f"{ENV_PREFIX}CONFIG") else None)
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        for key, value in raw.items():
            if key not in _KEYS:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            values[key] = _convert(f"{path}: {key}", key, value)
    for key in _KEYS:
        if key in _TOML_ONLY:
            continue
        name = f"{ENV_PREFIX}{key.upper()}"
        if name in env:
            values[key] = _convert(name, key, env[name])
    settings = Settings(**values)  # type: ignore[arg-type]
    if not settings.step_wait_min <= settings.step_wait_default <= settings.step_wait_max:
        raise ConfigError(
            f"{ENV_PREFIX}STEP_WAIT_DEFAULT must lie between "
            f"{ENV_PREFIX}STEP_WAIT_MIN and {ENV_PREFIX}STEP_WAIT_MAX"
        )
    for key in ("health_interval", "health_timeout"):
        if not getattr(settings, key):
            raise ConfigError(f"{ENV_PREFIX}{key.upper()} must be more than 0 seconds")
    if not timedelta(0) < settings.default_deadline <= settings.max_deadline:
        raise ConfigError(
            f"{ENV_PREFIX}DEFAULT_DEADLINE must be positive and at most {ENV_PREFIX}MAX_DEADLINE"
        )
    # Ten years keeps every deadline and ack wait far inside what dates and timestamps hold.
    for key in ("max_deadline", "max_ack_timeout"):
        if not timedelta(0) < getattr(settings, key) <= timedelta(days=3650):
            raise ConfigError(f"{ENV_PREFIX}{key.upper()} must be positive and at most 3650 days")
    if settings.database_pool_min > settings.database_pool_max:
        raise ConfigError(
            f"{ENV_PREFIX}DATABASE_POOL_MIN ({settings.database_pool_min}) must not exceed "
            f"{ENV_PREFIX}DATABASE_POOL_MAX ({settings.database_pool_max})"
        )
    return settings


REFERENCE_START = "<!-- settings:start -->"
REFERENCE_END = "<!-- settings:end -->"


def _seconds(value: timedelta) -> str:
    """A duration as the seconds a variable takes, and in larger units when it has them."""
    seconds = value.total_seconds()
    text = f"`{seconds:.3f}".rstrip("0").rstrip(".") + "` s"
    for unit, size in (("days", 86_400), ("h", 3_600), ("min", 60)):
        if seconds % size == 0 and seconds >= 2 * size:
            return f"{text} ({int(seconds) // size} {unit})"
    return text


def _default(value: object) -> str:
    match value:
        case None:
            return "unset"
        case bool():
            return f"`{str(value).lower()}`"
        case timedelta():
            return _seconds(value)
        case Mapping():
            return "none"
    return f"`{value}`"


def settings_reference() -> str:
    """The settings reference as a markdown table: one row per field of :class:`Settings`."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for setting in fields(Settings):
        doc = setting.metadata.get("doc")
        if not isinstance(doc, str) or not doc.strip() or "\n" in doc or "|" in doc:
            raise ValueError(f"Settings.{setting.name} needs a one-line metadata doc without '|'")
        toml = setting.metadata.get("toml")
        name = f"`{toml}` (TOML only)" if toml else f"`{ENV_PREFIX}{setting.name.upper()}`"
        default = setting.default_factory() if callable(setting.default_factory) else setting.default
        rows.append(f"| {name} | {_default(default)} | {doc} |")
    return "\n".join(rows) + "\n"


def with_settings_reference(text: str) -> str:
    """``text`` (the README) with the block between the reference markers rendered anew."""
    start, end = text.find(REFERENCE_START), text.find(REFERENCE_END)
    if start < 0 or end < start or text.count(REFERENCE_START) != 1 or text.count(REFERENCE_END) != 1:
        raise ValueError(f"expected one {REFERENCE_START} and, after it, one {REFERENCE_END}")
    head = text[: start + len(REFERENCE_START)]
    return f"{head}\n{settings_reference()}{text[end:]}"


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.core.config --reference`` prints the table; ``--update README.md``
    rewrites it in place (``make settings-doc``)."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.core.config", description="The settings reference, from Settings."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--reference", action="store_true", help="print the markdown table")
    action.add_argument("--update", type=Path, metavar="FILE", help="rewrite the table between the markers")
    args = parser.parse_args(argv)
    if args.reference:
        sys.stdout.write(settings_reference())
        return 0
    path: Path = args.update
    text = path.read_text(encoding="utf-8")
    updated = with_settings_reference(text)
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    print(f"{path}: settings reference {'updated' if updated != text else 'already current'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
