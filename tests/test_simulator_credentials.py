"""Kaskad refuses to start with the simulator's public credentials unless development asks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from gateway.core.config import ConfigError, Settings
from gateway.runtime.app import Backends, KaskadApp

REAL_SECRETS: dict[str, dict[str, Any]] = {
    "vk": {"access_token": "vk-token-of-this-deployment", "callback_secret": "vk-callback-of-this-one"},
    "viber": {"auth_token": "viber-token-of-this-deployment"},
    "sms": {"api_key": "sms-key-of-this-deployment", "callback_secret": "sms-callback-of-this-one"},
    "voice": {"api_token": "voice-token-of-this-deployment", "callback_secret": "voice-callback-of-this"},
}


async def start(settings: Settings, providers: Mapping[str, Mapping[str, Any]], allow: bool) -> KaskadApp:
    assert settings.database_url and settings.redis_url
    return await KaskadApp.start(
        settings.with_overrides(providers=providers, allow_simulator_credentials=allow),
        backends=Backends(settings.database_url, settings.redis_url),
    )


async def test_unset_credentials_are_refused_naming_each_and_the_setting(settings: Settings) -> None:
    with pytest.raises(ConfigError) as refused:
        await start(settings, {}, allow=False)
    message = str(refused.value)
    assert "KASKAD_ALLOW_SIMULATOR_CREDENTIALS" in message
    for provider, secrets in REAL_SECRETS.items():
        for key in secrets:
            assert f"providers.{provider}.{key}" in message


async def test_the_simulators_values_written_out_are_refused_too(settings: Settings) -> None:
    providers = {**REAL_SECRETS, "sms": {**REAL_SECRETS["sms"], "callback_secret": "sim-sms-callback-secret"}}
    with pytest.raises(ConfigError, match=r"refusing to start: providers\.sms\.callback_secret is unset or"):
        await start(settings, providers, allow=False)


async def test_one_provider_left_unset_is_refused(settings: Settings) -> None:
    providers = {name: secrets for name, secrets in REAL_SECRETS.items() if name != "voice"}
    with pytest.raises(ConfigError) as refused:
        await start(settings, providers, allow=False)
    message = str(refused.value)
    assert "providers.voice.api_token, providers.voice.callback_secret are unset" in message
    assert "providers.vk" not in message


async def test_real_secrets_start(settings: Settings) -> None:
    app = await start(settings, REAL_SECRETS, allow=False)
    await app.stop(grace=None)


async def test_the_development_setting_allows_the_simulators_credentials(settings: Settings) -> None:
    app = await start(settings, {}, allow=True)
    await app.stop(grace=None)
