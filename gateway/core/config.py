"""Kaskad settings: one typed object, read from ``KASKAD_*`` variables and an optional TOML file.

Precedence, lowest first: built-in defaults, the TOML file (``KASKAD_CONFIG`` or
``--config``), then ``KASKAD_*`` environment variables. Every value is checked when
the settings are built; a bad one raises :class:`ConfigError` naming the variable or
key and what was expected, so ``kaskad serve`` fails at start with a clear message
rather than later with a traceback.

Example TOML::

    grpc_address = "0.0.0.0:50051"
    database_url = "postgresql://kaskad@db/kaskad"

    [templates.delivery_status]
    body = "Parcel {{ order }} is {{ status }}"
    [templates.delivery_status.channels]
    sms = "Posylka {{ order }}: {{ status }}"
"""

from __future__ import annotations

import os
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


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything Kaskad can be configured with. Build it with :func:`load_settings`."""

    grpc_address: str = "127.0.0.1:50051"
    http_address: str = "127.0.0.1:8080"
    data_dir: Path = Path(".kaskad")
    # None means: start an embedded server under data_dir.
    database_url: str | None = None
    redis_url: str | None = None
    # Prefix of every Redis key, so several deployments (or tests) can share one Redis.
    redis_key_prefix: str = "kaskad:"
    database_pool_min: int = 2
    database_pool_max: int = 20
    # Group commit: concurrent accepts share one statement and one commit, up to this many
    # rows, written at most this long after the first arrived (1: one statement per accept),
    # or only this long when no batch is being written (0: with the calls of the same moment).
    accept_batch_size: int = 100
    accept_batch_delay: timedelta = timedelta(milliseconds=5)
    accept_batch_idle_delay: timedelta = timedelta(0)
    # The same for delivery callbacks: each is committed before its provider hears back.
    # Nobody waits on a callback's answer but its provider, so they wait longer for company
    # than accepts do (a callback's insert is most of what it costs PostgreSQL).
    callback_batch_size: int = 100
    callback_batch_delay: timedelta = timedelta(milliseconds=10)
    callback_batch_idle_delay: timedelta = timedelta(milliseconds=5)
    # On SIGTERM health turns NOT_SERVING at once; calls are still served this long, so load
    # balancers notice, then new calls are refused and those in flight get the grace to finish.
    shutdown_delay: timedelta = timedelta(seconds=1)
    shutdown_grace: timedelta = timedelta(seconds=10)
    # How often gRPC health asks PostgreSQL whether it can serve, and how long an answer may take.
    health_interval: timedelta = timedelta(seconds=1)
    health_timeout: timedelta = timedelta(seconds=2)
    redis_check_interval: timedelta = timedelta(seconds=5)
    default_deadline: timedelta = timedelta(hours=24)
    # The furthest a caller's deadline may lie ahead, and the longest ack_timeout it may ask
    # for: past these a request is refused (INVALID_ARGUMENT), not stored.
    max_deadline: timedelta = timedelta(days=30)
    max_ack_timeout: timedelta = timedelta(days=30)
    max_text_length: int = 1000
    max_batch_size: int = 1000
    currency: str = "RUB"
    log_level: str = "INFO"
    templates: Mapping[str, TemplateSettings] = field(default_factory=dict)
    # Raw [providers.NAME] tables; gateway.runtime.provider_registry checks and builds them.
    providers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Raw [rate_limits.NAME] tables (per_second, per_recipient_per_day); see gateway.store.rate_limits.
    rate_limits: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    # Points every provider adapter at one base URL (the simulator); None keeps their own.
    provider_base_url: str | None = None
    # Development only: let providers keep the simulator's built-in credentials and callback
    # secrets, which are public in the repository (serve --simulator/--demo set it).
    allow_simulator_credentials: bool = False
    # Cascade workers in this process; 0 runs an accept-only gateway.
    workers: int = 1
    worker_batch_size: int = 50
    worker_poll_interval: timedelta = timedelta(milliseconds=200)
    # After a batch that was not full, a worker waits this long before claiming again, so a
    # trickle of work is applied in fuller transactions (0: claim again at once).
    worker_gather_delay: timedelta = timedelta(milliseconds=30)
    # Workers make way (wait before claiming, at most a second) while this process's accepts
    # take longer than this on average: accepts first, the cascade catches up (0: off).
    accept_latency_target: timedelta = timedelta(milliseconds=15)
    work_lease: timedelta = timedelta(seconds=60)
    # Provider calls in flight per provider in this process; a submit beyond it waits, due
    # again a moment later, so a stalled provider holds up only its own work
    # ([rate_limits.NAME] concurrency overrides it per provider).
    provider_concurrency: int = 64
    # Each step's wait for a delivery report is learned from observed latency (p95), kept
    # within [min, max]; the default applies while a channel has too few reports.
    step_wait_min: timedelta = timedelta(seconds=30)
    step_wait_max: timedelta = timedelta(minutes=30)
    step_wait_default: timedelta = timedelta(minutes=5)
    # A report wait found overdue by more than this (the gateways were down or behind) waits
    # this much longer, once, for the reports providers retry after an outage; 0: off.
    overdue_wait_grace: timedelta = timedelta(seconds=60)
    # Messenger steps (VK, Viber) are sent with a TTL of their wait plus this (within each
    # provider's bounds), so a leg abandoned for the next step expires unbilled at the provider.
    # The TTL counts from the provider's acceptance, before Kaskad hears of it: 0 is safe.
    messenger_ttl_margin: timedelta = timedelta(0)
    # A status query answered "pending" (or that failed) is asked once more this much later.
    status_recheck_after: timedelta = timedelta(seconds=30)
    # The voice robot calls again after no answer or busy, this many times, this far apart.
    voice_retries: int = 2
    voice_retry_spacing: timedelta = timedelta(minutes=10)
    # What reaching a person an hour sooner is worth (in `currency`): the planner ranks
    # equally sure plans by expected cost plus this times their expected waiting.
    value_of_an_hour: Decimal = Decimal("2.00")
    # The longest a step waits out a provider-wide fault (outage, open breaker, 429/5xx),
    # retrying from a durable timer, before the cascade moves to its next step (shorter when
    # the next step costs little more); faults never fail a notification, its deadline does.
    provider_patience: timedelta = timedelta(minutes=10)
    # Seconds a known API key is remembered; a revoked key stops working within this.
    auth_cache_ttl: timedelta = timedelta(seconds=2)
    # Backpressure: refuse new sends while more work items than this are due (0: no limit),
    # and cap each calling service's accepted notifications per second (0: no quota).
    max_backlog: int = 200_000
    client_quota_per_second: int = 0
    # OTLP/HTTP collector base URL (http://collector:4318) for metrics and traces; unset: none.
    otlp_endpoint: str | None = None
    # Salt of the keyed hash that stands for a phone number in reachability data.
    recipient_hash_key: str = "kaskad-reachability"

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
        if key in ("templates", "providers", "rate_limits"):
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
