"""Build the provider adapters from configuration (part of the composition root).

The TOML file may hold a table per provider whose keys are the adapter's settings
fields, for example::

    [providers.sms]
    base_url = "https://sms.example.net"
    api_key = "..."
    price_per_segment = "3.95"
    [providers.sms.transport]
    read_timeout_s = 5

``KASKAD_PROVIDER_BASE_URL`` points every adapter at one base URL (the simulator in
``make run`` and tests). Unknown keys and bad values stop the start with a message.

The settings classes default to the simulator's credentials and callback secrets, which
are public in the repository; :func:`refuse_simulator_credentials` stops a start that
would use them unless development asked for them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from gateway.core.config import ConfigError
from providers.adapters import ProviderSettings, build_adapters
from providers.base import ProviderAdapter
from providers.registry import BY_PROVIDER
from providers.transport import TransportSettings

PROVIDER_NAMES = tuple(BY_PROVIDER)
ALLOW_SIMULATOR_CREDENTIALS = "KASKAD_ALLOW_SIMULATOR_CREDENTIALS"


def _convert(where: str, kind: Any, value: Any) -> Any:
    if kind is TransportSettings:
        return _build(where, TransportSettings, value)
    try:
        if kind is Decimal:
            if isinstance(value, float):
                # TOML floats are binary; money must be exact, so ask for a string.
                raise ConfigError(f'{where} is money: write it as a string, for example "4.50"')
            return Decimal(str(value))
        if kind is timedelta:
            return timedelta(seconds=float(value))
        if kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false")
            return value
        if kind in (int, float, str):
            return kind(value)
    except (ValueError, TypeError, InvalidOperation):
        raise ConfigError(f"{where} has a bad value {value!r}") from None
    raise ConfigError(f"{where} cannot be configured")


def _build(where: str, settings_type: type[Any], raw: Any, **overrides: Any) -> Any:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a table")
    hints = typing.get_type_hints(settings_type)
    known = {f.name for f in dataclasses.fields(settings_type)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where} has unknown keys: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        kind = hints[name]
        if isinstance(kind, types.UnionType):
            kind = next(k for k in typing.get_args(kind) if k is not type(None))
        values[name] = _convert(f"{where}.{name}", kind, value)
    values.update(overrides)
    try:
        return settings_type(**values)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def provider_settings(config: Mapping[str, Mapping[str, Any]], base_url: str | None) -> ProviderSettings:
    """Check the ``[providers.NAME]`` tables and turn them into the adapters' settings."""
    unknown = set(config) - set(BY_PROVIDER)
    if unknown:
        raise ConfigError(
            f"[providers] has unknown providers: {', '.join(sorted(unknown))}; "
            f"known: {', '.join(PROVIDER_NAMES)}"
        )
    built: dict[str, Any] = {}
    for name, entry in BY_PROVIDER.items():
        raw = dict(config.get(name, {}))
        overrides = {"base_url": base_url} if base_url and "base_url" not in raw else {}
        built[name] = _build(f"providers.{name}", entry.settings_type, raw, **overrides)
    return ProviderSettings(**built)


def build_adapters_by_name(settings: ProviderSettings) -> dict[str, ProviderAdapter]:
    """One adapter per provider, keyed by provider name, each with its own pooled HTTP client."""
    return {adapter.name: adapter for adapter in build_adapters(settings).values()}


def refuse_simulator_credentials(settings: ProviderSettings) -> None:
    """Raise :class:`ConfigError` naming every credential or callback secret that is unset,
    empty or the simulator's built-in (public) value."""
    public = []
    for name, entry in BY_PROVIDER.items():
        built, simulator = settings.of(name), entry.settings_type()
        for key in entry.secrets:
            value = getattr(built, key)
            if not value or value == getattr(simulator, key):
                public.append(f"providers.{name}.{key}")
    if public:
        raise ConfigError(
            f"refusing to start: {', '.join(public)} {'is' if len(public) == 1 else 'are'} unset or "
            "the simulator's built-in value, public in Kaskad's repository: "
            "set real ones in the [providers.NAME] tables of the config file, or, for development "
            f"only, set {ALLOW_SIMULATOR_CREDENTIALS}=true (kaskad serve --simulator and --demo do)"
        )
