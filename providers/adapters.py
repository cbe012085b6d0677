"""Build the set of provider adapters the gateway uses, one per provider."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from providers.base import ProviderAdapter
from providers.sms import SmsAdapter, SmsSettings
from providers.viber import ViberAdapter, ViberSettings
from providers.vk import VkAdapter, VkSettings
from providers.voice import VoiceAdapter, VoiceSettings
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
        return cls(
            vk=VkSettings(base_url=base_url),
            viber=ViberSettings(base_url=base_url),
            sms=SmsSettings(base_url=base_url),
            voice=VoiceSettings(base_url=base_url),
        )


def build_adapters(
    settings: ProviderSettings | None = None, *, clock: Callable[[], float] = time.monotonic
) -> dict[Channel, ProviderAdapter]:
    """One adapter per channel; the caller owns them and must ``aclose()`` each."""
    settings = settings or ProviderSettings()
    return {
        Channel.VK: VkAdapter(settings.vk, clock=clock),
        Channel.VIBER: ViberAdapter(settings.viber, clock=clock),
        Channel.SMS: SmsAdapter(settings.sms, clock=clock),
        Channel.VOICE: VoiceAdapter(settings.voice, clock=clock),
    }
