"""Who is reachable on which channel, decided deterministically from (seed, recipient)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from lab.simulator.settings import PopulationSettings

T = TypeVar("T")


class Population:
    """A seeded, stateless population: the same seed and recipient always give the same answer."""

    def __init__(self, seed: int, settings: PopulationSettings) -> None:
        self._seed = seed
        self._settings = settings

    def draw(self, purpose: str, recipient: str) -> float:
        """A uniform number in [0, 1) fixed by (seed, purpose, recipient)."""
        digest = hashlib.sha256(f"{self._seed}:{purpose}:{recipient}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def pick(self, purpose: str, recipient: str, choices: Sequence[T]) -> T:
        return choices[int(self.draw(purpose, recipient) * len(choices))]

    def reference(self, recipient: str) -> str:
        """A pseudonym for the recipient, for the delivery log (never the phone itself)."""
        return hashlib.sha256(f"{self._seed}:ref:{recipient}".encode()).hexdigest()[:16]

    def on_vk(self, recipient: str) -> bool:
        return self.draw("vk", recipient) < self._settings.vk_reachable

    def on_viber(self, recipient: str) -> bool:
        return self.draw("viber", recipient) < self._settings.viber_reachable

    def messenger_pace(self, channel: str, recipient: str) -> str:
        """How soon a ``vk`` or ``viber`` message reaches this person: "prompt", "slow" or
        "dormant" (never: not active lately)."""
        slow = getattr(self._settings, f"{channel}_slow")
        dormant = getattr(self._settings, f"{channel}_dormant")
        draw = self.draw(f"{channel}-pace", recipient)
        if draw < dormant:
            return "dormant"
        return "slow" if draw < dormant + slow else "prompt"

    def reaches(self, channel: str, recipient: str) -> bool:
        """Whether a ``vk``, ``viber`` or ``sms`` message ever gets to this person (a
        messenger account that is not dormant; a deliverable SMS)."""
        match channel:
            case "vk":
                return self.on_vk(recipient) and self.messenger_pace("vk", recipient) != "dormant"
            case "viber":
                return self.on_viber(recipient) and self.messenger_pace("viber", recipient) != "dormant"
            case "sms":
                return self.sms_deliverable(recipient)
        raise ValueError(f"no such message channel: {channel!r}")

    def sms_deliverable(self, recipient: str) -> bool:
        return self.draw("sms", recipient) < self._settings.sms_reachable

    def answers_voice(self, recipient: str) -> bool:
        return self.draw("voice", recipient) < self._settings.voice_answer_rate

    def reads(self, channel: str, recipient: str, message_key: str) -> bool:
        return self.draw(f"read:{channel}:{message_key}", recipient) < self._settings.read_rate
