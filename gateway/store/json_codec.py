"""JSON for what Kaskad stores: jsonb columns and Redis hot copies.

orjson, not the standard library: every cascade step decodes and re-encodes a
notification's plan and state, and every accept encodes its route, so JSON was a
large share of the engine's and the accept path's time. The output is plain JSON
(compact separators); what reads it back (PostgreSQL, this module) does not care
about spacing. Wire formats of providers and the idempotency request hash keep the
standard library's encoder: their exact bytes matter.
"""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS  # int and enum keys become strings, as with json.dumps


def dumps(value: object) -> str:
    """``value`` as JSON text."""
    return orjson.dumps(value, option=_OPTIONS).decode()


def loads(text: str | bytes) -> Any:
    """The value of a JSON text."""
    return orjson.loads(text)
