"""Build the set of provider adapters the gateway uses, one per provider."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from providers.base import ProviderAdapter
from providers.registry import CHANNELS
from providers.sms import SmsSettings
from providers.viber import ViberSettings
from providers.vk import VkSettings
from providers.voice import VoiceSettings
from router.domain import Channel


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Settings for all four adapters; the defaults point every one at the simulator."""

    vk: VkSettings = field(default_factory=VkSettings)
    viber: ViberSettings = field(default_factory=ViberSettings)
    sms: SmsSettings = field(default_factory=SmsSettings)
    voice: VoiceSettings = field(default_factory=VoiceSettings)

    @classmethod
    def for_base_url(cls, base_url: str) -> ProviderSettings:
        """All adapters pointed at one base URL (the simulator serves all four APIs on one port)."""
        return cls(**{e.provider: e.settings_type(base_url=base_url) for e in CHANNELS.values()})

    def of(self, provider: str) -> Any:
        """The settings of one provider, by name."""
        return getattr(self, provider)


def build_adapters(
    settings: ProviderSettings | None = None, *, clock: Callable[[], float] = time.monotonic
) -> dict[Channel, ProviderAdapter]:
    """One adapter per channel; the caller owns them and must ``aclose()`` each."""
    settings = settings or ProviderSettings()
    return {channel: entry.build(settings.of(entry.provider), clock) for channel, entry in CHANNELS.items()}
