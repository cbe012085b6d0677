"""API keys of calling services: issued once, stored only as a hash, checked per call."""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.core.errors import Unauthenticated
from router.domain import ClientId

KEY_PREFIX = "ksk_"


class ClientRole(enum.StrEnum):
    """What a calling service may read beyond its own notifications."""

    SERVICE = "service"
    """Sends notifications; reads its own notifications and its own costs."""
    FINANCE = "finance"
    """Also reads every client's costs (``GetCostReport`` across clients)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """The authenticated calling service."""

    client_id: ClientId
    name: str
    role: ClientRole


def new_api_key() -> str:
    """A fresh key: ``ksk_`` and 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The key in ``authorization: Bearer <key>`` metadata, or :class:`Unauthenticated`."""
    for name, value in metadata or ():
        if name.lower() != "authorization":
            continue
        text = value.decode() if isinstance(value, bytes) else value
        scheme, _, key = text.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization metadata must be 'Bearer <api key>'")
        return key.strip()
    raise Unauthenticated("missing 'authorization: Bearer <api key>' metadata")
