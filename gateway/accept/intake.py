"""Validation and rendering of a send request, before anything is written.

Every problem is collected as a field violation and reported at once, so a caller
fixes a request in one round trip. Nothing here touches the database.

The phone number is normalised here to E.164 (ASCII digits only; spaces, dashes and
parentheses are allowed in what callers send), and the normalised number is what is
hashed, stored, planned for, rate-limited and counted: one person, one number.

Template params are capped (at most 32 params, names of 64 and values of 1,000
characters, 4,000 characters in all) and a param the template does not use is
refused, naming it: nothing a template does not render is ever stored.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from decimal import Decimal

import phonenumbers

from gateway.accept.templates import TemplateCatalog, TemplateRenderError
from gateway.core.config import Settings
from gateway.core.errors import FieldViolation, InvalidArgument
from gateway.core.model import NewNotification, SendRequest
from router.domain import AckPolicy, Channel, ClientId

_IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
_VK_USER_ID = re.compile(r"^[1-9][0-9]{0,18}$")
_USER_ID = re.compile(r"^[A-Za-z0-9_.=+/-]{1,128}$")
_MAX_METADATA_ENTRIES = 32
_MAX_METADATA_KEY = 64
_MAX_METADATA_VALUE = 512
_MAX_TEMPLATE_PARAMS = 32
_MAX_PARAM_NAME = 64
_MAX_PARAM_VALUE = 1000
_MAX_PARAMS_TOTAL = 4000
# The largest amount numeric(20, 9) holds (max_cost's column): 11 digits before the point.
_MAX_AMOUNT = Decimal("99999999999.999999999")
# Spaces, dashes and parentheses as people write numbers; ASCII only.
_PHONE_SEPARATORS = str.maketrans("", "", " -()")
_MAX_PHONE_INPUT = 32
# Letters that render as blank space though their category says otherwise.
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
_NUL = "\x00"
# The retailer case: escalate an unread order notice after 30 minutes.
_DEFAULT_READ_TIMEOUT = timedelta(minutes=30)
# Parsing a number against the numbering plan is most of what validating a request costs,
# and a service's recipients recur (the same customers, day after day).
_KNOWN_PHONES = 65_536


def normalise_phone(phone: str) -> str | None:
    """``phone`` in E.164 when it is a dialable number written with ``+``, ASCII digits
    and optional spaces, dashes or parentheses; None otherwise."""
    compact = phone.translate(_PHONE_SEPARATORS)
    # [0-9], not \d: \d (and phonenumbers) also take Arabic-Indic or Devanagari digits,
    # which would make one person several.
    if not re.fullmatch(r"\+[1-9][0-9]{6,14}", compact):
        return None
    try:
        parsed = phonenumbers.parse(compact, None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def is_valid_e164(phone: str) -> bool:
    """True when ``phone`` is a dialable number written in E.164 (``+`` and digits)."""
    return normalise_phone(phone) == phone


def has_visible(text: str) -> bool:
    """True when ``text`` has a letter, digit, punctuation mark or symbol that shows.

    Whitespace, zero-width and other format or control characters, and combining marks
    alone, show nothing.
    """
    return any(unicodedata.category(c)[0] in "LNPS" and c not in _BLANK_LETTERS for c in text)


def request_hash(request: SendRequest, phone: str) -> bytes:
    """A digest of what the caller asked for, to tell a retry from a conflicting reuse.

    It hashes the request as sent (an unset deadline stays unset), so a retry of the
    same request hashes the same even though defaults are resolved at a later time;
    ``phone`` is the normalised number, so spelling it differently is the same request.
    """
    canonical = {
        "phone": phone,
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
        self._normalise_phone = functools.lru_cache(maxsize=_KNOWN_PHONES)(normalise_phone)

    def validate(self, client_id: ClientId, request: SendRequest, now: datetime) -> NewNotification:
        violations = [FieldViolation(f, d) for f, d in request.conversion_errors]

        def bad(field: str, description: str) -> None:
            violations.append(FieldViolation(field, description))

        if not _IDEMPOTENCY_KEY.fullmatch(request.idempotency_key):
            bad("idempotency_key", "required: 1 to 128 printable ASCII characters without spaces")
        # The number itself is never echoed: error messages end up in callers' logs.
        phone = None
        if not request.phone:
            bad("recipient.phone", "required: a phone number in E.164, for example +79161234567")
        elif not request.phone.isascii() and any(c.isdigit() for c in request.phone):
            bad("recipient.phone", "only ASCII digits 0-9 are accepted")
        elif len(request.phone) > _MAX_PHONE_INPUT or (phone := self._normalise_phone(request.phone)) is None:
            bad("recipient.phone", "not a valid phone number in E.164 (+, country code, number)")
        if request.vk_user_id and not _VK_USER_ID.fullmatch(request.vk_user_id):
            bad("recipient.vk_user_id", "must be a VK numeric user id")
        if request.viber_user_id and not _USER_ID.fullmatch(request.viber_user_id):
            bad("recipient.viber_user_id", "must be 1 to 128 letters, digits or _.=+/-")

        # PostgreSQL text cannot hold NUL; refused here, it is the caller's error, not INTERNAL.
        if request.text is not None and _NUL in request.text:
            bad("text", "must not contain the NUL character")
        params_fit = request.template is None or self._check_params(request.template.params, bad)

        channels = tuple(dict.fromkeys(request.channels)) or tuple(Channel)
        # SMS is rendered even when not allowed: it is finance's baseline for the saving.
        rendered = (
            self._render(request, tuple(dict.fromkeys((*channels, Channel.SMS))), bad) if params_fit else {}
        )
        bodies = {channel: body for channel, body in rendered.items() if channel in channels}

        ack_timeout = request.ack_timeout
        max_ack_timeout = self._settings.max_ack_timeout
        if ack_timeout is not None and ack_timeout <= timedelta(0):
            bad("ack_timeout", "must be positive")
        elif ack_timeout is not None and ack_timeout > max_ack_timeout:
            bad("ack_timeout", f"must be at most {_describe(max_ack_timeout)}")
        if ack_timeout is None and request.ack_policy is AckPolicy.READ:
            ack_timeout = _DEFAULT_READ_TIMEOUT

        deadline = request.deadline
        if deadline is not None:
            if deadline <= now:
                bad("deadline", "is in the past")
            elif deadline - now > self._settings.max_deadline:
                bad("deadline", f"must be within {_describe(self._settings.max_deadline)} from now")
        resolved_deadline = deadline or now + self._settings.default_deadline

        max_cost: Decimal | None = None
        if request.max_cost is not None:
            if request.max_cost.currency != self._settings.currency:
                bad("max_cost.currency_code", f"must be {self._settings.currency}")
            elif request.max_cost.amount < 0:
                bad("max_cost", "must not be negative")
            elif request.max_cost.amount > _MAX_AMOUNT:
                bad("max_cost", f"must be at most {_MAX_AMOUNT}")
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

        if violations or phone is None:
            raise InvalidArgument(violations)
        return NewNotification(
            client_id=client_id,
            idempotency_key=request.idempotency_key,
            request_hash=request_hash(request, phone),
            phone=phone,
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

    def _check_params(self, params: Mapping[str, str], bad: Callable[[str, str], None]) -> bool:
        """Check the params' sizes and characters; False when they are too big to render."""
        if len(params) > _MAX_TEMPLATE_PARAMS:
            bad("template.params", f"at most {_MAX_TEMPLATE_PARAMS} params")
            return False
        if sum(len(name) + len(value) for name, value in params.items()) > _MAX_PARAMS_TOTAL:
            bad("template.params", f"at most {_MAX_PARAMS_TOTAL} characters in all names and values")
            return False
        fit = True
        for name, value in params.items():
            field = f"template.params[{name[:_MAX_PARAM_NAME].replace(_NUL, '')}]"
            if not name or len(name) > _MAX_PARAM_NAME:
                bad(field, f"names are 1 to {_MAX_PARAM_NAME} characters")
                fit = False
            elif len(value) > _MAX_PARAM_VALUE:
                bad(field, f"values are at most {_MAX_PARAM_VALUE} characters")
                fit = False
            elif _NUL in name or _NUL in value:
                # PostgreSQL text cannot hold NUL; refused here, it is the caller's error, not INTERNAL.
                bad(field, "must not contain the NUL character")
        return fit

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
            unused = sorted(set(request.template.params) - self._templates.variables(template_id))
            for name in unused:
                bad(
                    f"template.params[{name.replace(_NUL, '')}]",
                    "unknown: the template does not use this parameter",
                )
            try:
                bodies = self._templates.render(template_id, request.template.params, channels)
            except TemplateRenderError as exc:
                for name in exc.missing:
                    bad(f"template.params[{name}]", "missing: the template uses this parameter")
                if not exc.missing:
                    bad("template.params", exc.detail)
                return {}
            for channel, body in bodies.items():
                if len(body) > limit:
                    bad("template.params", f"the {channel.value} message is longer than {limit}")
                elif not has_visible(body):
                    bad("template.params", f"the {channel.value} message renders with nothing visible")
            return bodies
        if request.text is None:
            bad("text", "required: set text or template")
            return {}
        if len(request.text) > limit:
            bad("text", f"at most {limit} characters, got {len(request.text)}")
        elif not has_visible(request.text):
            bad("text", "must contain something visible, not only spaces, control or zero-width characters")
        return dict.fromkeys(channels, request.text)


def _describe(span: timedelta) -> str:
    """A limit as people say it: whole days, else seconds."""
    if span % timedelta(days=1) == timedelta(0):
        return f"{span.days} days"
    return f"{span.total_seconds():g} seconds"
