"""Settings from KASKAD_* variables and a TOML file, checked at start."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.accept.templates import TemplateCatalog
from gateway.core.config import ConfigError, load_settings
from router.domain import Channel


def test_defaults() -> None:
    settings = load_settings(environ={})
    assert settings.grpc_address == "127.0.0.1:50051"
    assert settings.http_address == "127.0.0.1:8080"
    assert settings.data_dir == Path(".kaskad")
    assert settings.database_url is None and settings.redis_url is None
    assert settings.value_of_an_hour == Decimal("2.00")


def test_value_of_an_hour_is_exact_money() -> None:
    settings = load_settings(environ={"KASKAD_VALUE_OF_AN_HOUR": "0.75"})
    assert settings.value_of_an_hour == Decimal("0.75")


def test_environment_overrides_toml(tmp_path: Path) -> None:
    config = tmp_path / "kaskad.toml"
    config.write_text(
        'grpc_address = "0.0.0.0:6000"\nshutdown_grace = 3\n'
        '[templates.hello]\nbody = "Hi {{ name }}"\n'
        '[templates.hello.channels]\nsms = "Privet {{ name }}"\n'
    )
    settings = load_settings(environ={"KASKAD_CONFIG": str(config), "KASKAD_GRPC_ADDRESS": "127.0.0.1:7000"})
    assert settings.grpc_address == "127.0.0.1:7000"
    assert settings.shutdown_grace == timedelta(seconds=3)
    assert settings.templates["hello"].channel_bodies == {Channel.SMS: "Privet {{ name }}"}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"KASKAD_GRPC_ADDRESS": "nowhere"}, "KASKAD_GRPC_ADDRESS must look like HOST:PORT"),
        ({"KASKAD_HTTP_ADDRESS": "h:99999"}, "KASKAD_HTTP_ADDRESS must look like HOST:PORT"),
        ({"KASKAD_DATABASE_URL": "mysql://x"}, "KASKAD_DATABASE_URL must be a URL"),
        ({"KASKAD_REDIS_URL": "http://x"}, "KASKAD_REDIS_URL must be a URL"),
        ({"KASKAD_SHUTDOWN_GRACE": "-1"}, "KASKAD_SHUTDOWN_GRACE must not be negative"),
        ({"KASKAD_SHUTDOWN_GRACE": "soon"}, "KASKAD_SHUTDOWN_GRACE must be a number"),
        ({"KASKAD_MAX_BATCH_SIZE": "0"}, "KASKAD_MAX_BATCH_SIZE must be at least 1"),
        ({"KASKAD_CURRENCY": "rub"}, "KASKAD_CURRENCY must be a three-letter"),
        ({"KASKAD_VALUE_OF_AN_HOUR": "-1"}, "KASKAD_VALUE_OF_AN_HOUR must be a finite amount of at least 0"),
        ({"KASKAD_VALUE_OF_AN_HOUR": "lots"}, "KASKAD_VALUE_OF_AN_HOUR must be a decimal amount"),
        ({"KASKAD_CONFIG": "/nonexistent/kaskad.toml"}, "does not exist"),
        (
            {"KASKAD_ALLOW_SIMULATOR_CREDENTIALS": "maybe"},
            "KASKAD_ALLOW_SIMULATOR_CREDENTIALS must be true or false",
        ),
        (
            {"KASKAD_DATABASE_POOL_MIN": "9", "KASKAD_DATABASE_POOL_MAX": "2"},
            "must not exceed",
        ),
    ],
)
def test_bad_values_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ=environ)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("colour = 'blue'", "unknown setting 'colour'"),
        ("[templates.x]\ntext = 'no body'", "templates.x needs a string 'body'"),
        ("[templates.x]\nbody = 'b'\n[templates.x.channels]\nfax = 'f'", "unknown channel 'fax'"),
        ("grpc_address = ", "not valid TOML"),
        ("value_of_an_hour = 2.5", "value_of_an_hour must be a decimal amount written as a string"),
    ],
)
def test_bad_toml_is_explained(tmp_path: Path, toml: str, message: str) -> None:
    config = tmp_path / "kaskad.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_settings(environ={}, config_file=config)


def test_template_syntax_error_stops_the_start(tmp_path: Path) -> None:
    config = tmp_path / "kaskad.toml"
    config.write_text("[templates.broken]\nbody = 'Hello {{ name '\n")
    settings = load_settings(environ={}, config_file=config)
    with pytest.raises(ConfigError, match="template broken has a syntax error"):
        TemplateCatalog(settings.templates)


def test_the_accept_latency_target_is_read_from_the_environment() -> None:
    assert load_settings(environ={}).accept_latency_target == timedelta(milliseconds=15)
    settings = load_settings(environ={"KASKAD_ACCEPT_LATENCY_TARGET": "0"})
    assert settings.accept_latency_target == timedelta(0)  # off


def test_the_simulators_credentials_are_allowed_only_when_asked_for(tmp_path: Path) -> None:
    assert load_settings(environ={}).allow_simulator_credentials is False
    assert load_settings(environ={"KASKAD_ALLOW_SIMULATOR_CREDENTIALS": "true"}).allow_simulator_credentials
    config = tmp_path / "kaskad.toml"
    config.write_text("allow_simulator_credentials = true\n")
    assert load_settings(environ={}, config_file=config).allow_simulator_credentials
    overridden = {"KASKAD_CONFIG": str(config), "KASKAD_ALLOW_SIMULATOR_CREDENTIALS": "false"}
    assert load_settings(environ=overridden).allow_simulator_credentials is False
