"""Validation and rendering of a send request, before anything is written.

Every problem is collected as a field violation and reported at once, so a caller
fixes a request in one round trip. Nothing here touches the database.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

import phonenumbers

from gateway.config import Settings
from gateway.errors import FieldViolation, InvalidArgument
from gateway.model import NewNotification, SendRequest
from gateway.templates import TemplateCatalog, TemplateRenderError
from router.domain import AckPolicy, Channel, ClientId

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
_VK_USER_ID = re.compile(r"^[1-9]\d{0,18}$")
_USER_ID = re.compile(r"^[A-Za-z0-9_.=+/-]{1,128}$")
_MAX_METADATA_ENTRIES = 32
_MAX_METADATA_KEY = 64
_MAX_METADATA_VALUE = 512
_MAX_DEADLINE_AHEAD = timedelta(days=30)
_NUL = "\x00"
# The retailer case: escalate an unread order notice after 30 minutes.
_DEFAULT_READ_TIMEOUT = timedelta(minutes=30)
# Parsing a number against the numbering plan is most of what validating a request costs,
# and a service's recipients recur (the same customers, day after day).
_KNOWN_PHONES = 65_536


def is_valid_e164(phone: str) -> bool:
    """True when ``phone`` is a dialable number written in E.164 (``+`` and digits)."""
    if not re.fullmatch(r"\+[1-9]\d{6,14}", phone):
        return False
    try:
        parsed = phonenumbers.parse(phone, None)
    except phonenumbers.NumberParseException:
        return False
    return phonenumbers.is_valid_number(parsed)


def request_hash(request: SendRequest) -> bytes:
    """A digest of what the caller asked for, to tell a retry from a conflicting reuse.

    It hashes the request as sent (an unset deadline stays unset), so a retry of the
    same request hashes the same even though defaults are resolved at a later time.
    """
    canonical = {
        "phone": request.phone,
        "vk_user_id": request.vk_user_id,
        "viber_user_id": request.viber_user_id,
        "text": request.text,
        "template": None
        if request.template is None
        else {"id": request.template.template_id, "params": request.template.params},
        "channels": sorted(c.value for c in request.channels),
        "ack_policy": request.ack_policy.value,
        "ack_timeout": None if request.ack_timeout is None else request.ack_timeout.total_seconds(),
        "deadline": None if request.deadline is None else request.deadline.isoformat(),
        "max_cost": None
        if request.max_cost is None
        else [str(request.max_cost.amount), request.max_cost.currency],
        "metadata": request.metadata,
    }
    return hashlib.sha256(json.dumps(canonical, sort_keys=True).encode()).digest()


class Intake:
    """Turns a :class:`SendRequest` into a :class:`NewNotification` or an :class:`InvalidArgument`."""

    def __init__(self, settings: Settings, templates: TemplateCatalog) -> None:
        self._settings = settings
        self._templates = templates
        self._is_valid_phone = functools.lru_cache(maxsize=_KNOWN_PHONES)(is_valid_e164)

    def validate(self, client_id: ClientId, request: SendRequest, now: datetime) -> NewNotification:
        violations = [FieldViolation(f, d) for f, d in request.conversion_errors]

        def bad(field: str, description: str) -> None:
            violations.append(FieldViolation(field, description))

        if not _IDEMPOTENCY_KEY.fullmatch(request.idempotency_key):
            bad("idempotency_key", "required: 1 to 128 printable ASCII characters without spaces")
        if not request.phone:
            bad("recipient.phone", "required: a phone number in E.164, for example +79161234567")
        elif not self._is_valid_phone(request.phone):
            # The number itself is not echoed: error messages end up in callers' logs.
            bad("recipient.phone", "not a valid phone number in E.164 (+, country code, number)")
        if request.vk_user_id and not _VK_USER_ID.fullmatch(request.vk_user_id):
            bad("recipient.vk_user_id", "must be a VK numeric user id")
        if request.viber_user_id and not _USER_ID.fullmatch(request.viber_user_id):
            bad("recipient.viber_user_id", "must be 1 to 128 letters, digits or _.=+/-")

        # PostgreSQL text cannot hold NUL; refused here, it is the caller's error, not INTERNAL.
        if request.text is not None and _NUL in request.text:
            bad("text", "must not contain the NUL character")
        if request.template is not None:
            for name, value in request.template.params.items():
                if _NUL in name or _NUL in value:
                    bad(f"template.params[{name.replace(_NUL, '')}]", "must not contain the NUL character")

        channels = tuple(dict.fromkeys(request.channels)) or tuple(Channel)
        # SMS is rendered even when not allowed: it is finance's baseline for the saving.
        rendered = self._render(request, tuple(dict.fromkeys((*channels, Channel.SMS))), bad)
        bodies = {channel: body for channel, body in rendered.items() if channel in channels}

        ack_timeout = request.ack_timeout
        if ack_timeout is not None and ack_timeout <= timedelta(0):
            bad("ack_timeout", "must be positive")
        if ack_timeout is None and request.ack_policy is AckPolicy.READ:
            ack_timeout = _DEFAULT_READ_TIMEOUT

        deadline = request.deadline
        if deadline is not None:
            if deadline <= now:
                bad("deadline", "is in the past")
            elif deadline - now > _MAX_DEADLINE_AHEAD:
                bad("deadline", f"must be within {_MAX_DEADLINE_AHEAD.days} days from now")
        resolved_deadline = deadline or now + self._settings.default_deadline

        max_cost: Decimal | None = None
        if request.max_cost is not None:
            if request.max_cost.currency != self._settings.currency:
                bad("max_cost.currency_code", f"must be {self._settings.currency}")
            elif request.max_cost.amount < 0:
                bad("max_cost", "must not be negative")
            else:
                max_cost = request.max_cost.amount

        if len(request.metadata) > _MAX_METADATA_ENTRIES:
            bad("metadata", f"at most {_MAX_METADATA_ENTRIES} entries")
        for key, value in request.metadata.items():
            if not key or len(key) > _MAX_METADATA_KEY:
                bad(
                    f"metadata[{key[:_MAX_METADATA_KEY]}]",
                    f"keys are 1 to {_MAX_METADATA_KEY} chars",
                )
            elif len(value) > _MAX_METADATA_VALUE:
                bad(f"metadata[{key}]", f"values are at most {_MAX_METADATA_VALUE} characters")
            elif _NUL in key or _NUL in value:
                bad(f"metadata[{key.replace(_NUL, '')}]", "must not contain the NUL character")

        if violations:
            raise InvalidArgument(violations)
        return NewNotification(
            client_id=client_id,
            idempotency_key=request.idempotency_key,
            request_hash=request_hash(request),
            phone=request.phone,
            vk_user_id=request.vk_user_id or None,
            viber_user_id=request.viber_user_id or None,
            template_id=request.template.template_id if request.template else None,
            template_params=dict(request.template.params) if request.template else None,
            bodies=bodies,
            sms_body=rendered[Channel.SMS],
            channels=channels,
            ack_policy=request.ack_policy,
            ack_timeout=ack_timeout,
            deadline=resolved_deadline,
            max_cost=max_cost,
            currency=self._settings.currency,
            metadata=dict(request.metadata),
        )

    def _render(
        self,
        request: SendRequest,
        channels: tuple[Channel, ...],
        bad: Callable[[str, str], None],
    ) -> dict[Channel, str]:
        limit = self._settings.max_text_length
        if request.template is not None:
            template_id = request.template.template_id
            if not template_id:
                bad("template.template_id", "required")
                return {}
            if template_id not in self._templates:
                bad("template.template_id", f"unknown template {template_id!r}")
                return {}
            try:
                bodies = self._templates.render(template_id, request.template.params, channels)
            except TemplateRenderError as exc:
                for name in exc.missing:
                    bad(f"template.params[{name}]", "missing: the template uses this parameter")
                if not exc.missing:
                    bad("template.params", exc.detail)
                return {}
            for channel, body in bodies.items():
                if not body.strip():
                    bad("template.params", f"the {channel.value} message renders empty")
                elif len(body) > limit:
                    bad("template.params", f"the {channel.value} message is longer than {limit}")
            return bodies
        if request.text is None:
            bad("text", "required: set text or template")
            return {}
        if not request.text.strip():
            bad("text", "must not be empty")
        elif len(request.text) > limit:
            bad("text", f"at most {limit} characters, got {len(request.text)}")
        return dict.fromkeys(channels, request.text)
