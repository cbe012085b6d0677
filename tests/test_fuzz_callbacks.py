"""Fuzzed callbacks against the real gateway over real HTTP, with real PostgreSQL behind it.

Random bodies (JSON of random shapes, the providers' own reports with fields swapped for
random or absurd values, deep nesting, huge numbers, garbage bytes) and headers, unsigned and
validly signed, for every provider endpoint. Every answer is 200, 400 (signed but malformed),
401 (not authenticated) or 413 (too large); a refused callback writes nothing; nothing is
logged at ERROR and the callback path logs no traceback.

``KASKAD_FUZZ_EXAMPLES`` sets the examples per provider (default 150); Hypothesis runs in a
worker thread and drives the gateway, which serves on the test's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.runtime.app import KaskadApp
from providers.base import ProviderAdapter
from tests.callback_cases import SIGNATURE_HEADERS, callback_secret, sane, signed

EXAMPLES = int(os.environ.get("KASKAD_FUZZ_EXAMPLES", "150"))
T = TypeVar("T")

ABSURD_SCALARS = st.sampled_from(
    [
        10**30,
        10**18,
        -(10**30),
        -1,
        0,
        2**63,
        1e30,
        -1e30,
        1e-30,
        float("nan"),
        float("inf"),
        float("-inf"),
        "1e30",
        "-1",
        "NaN",
        "sNaN",
        "",
        "\ud800",
        "\x00",
        "x" * 1_000,
        "+79161234567",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59Z",
        True,
        False,
        None,
        [],
        {},
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.text(max_size=40),
    ABSURD_SCALARS,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
HEADER_TEXT = st.text(
    st.characters(whitelist_categories=("L", "N", "P", "S", "Zs"), max_codepoint=0x2FFF), max_size=80
)


def mutated(value: Any, keep: frozenset[str] = frozenset()) -> st.SearchStrategy[Any]:
    """``value`` with any part swapped for random JSON or an absurd scalar (``keep``: never)."""
    if isinstance(value, dict):
        return st.fixed_dictionaries(
            {k: st.just(v) if k in keep else mutated(v) for k, v in value.items()},
            optional={"extra": JSON_VALUES},
        )
    if isinstance(value, list) and value:
        return st.lists(mutated(value[0]), min_size=0, max_size=3)
    return st.one_of(st.just(value), JSON_VALUES, ABSURD_SCALARS)


def deep(depth: int, opener: bytes) -> bytes:
    closer = b"]" if opener == b"[" else b"}"
    inner = b"[" if opener == b"[" else b'{"a":'
    return (inner * depth) + b"1" + (closer * depth) if opener == b"{" else opener * depth + closer * depth


RAW_BODIES = st.one_of(
    st.binary(max_size=2_000),
    st.builds(deep, st.integers(1, 5_000), st.sampled_from([b"[", b"{"])),
    st.sampled_from(
        [
            b"",
            b"null",
            b"NaN",
            b"1e999999999",
            b"-" + b"9" * 5_000,
            b'{"a": 1e999999999}',
            b'{"a": ' + b"9" * 4_400 + b"}",
            b'"\\ud800"',
            b"\xff\xfe\x00\x00",
            b"x" * (256 * 1024 + 1),  # over the size bound: 413
        ]
    ),
)


@dataclass(frozen=True)
class Case:
    body: bytes
    headers: dict[str, str]
    authentic: bool  # carries a valid signature (HMAC) or the right secret and group (VK)


def cases(adapter: ProviderAdapter) -> st.SearchStrategy[Case]:
    name = adapter.name
    secret = callback_secret(adapter)

    def encode(payload: Any) -> bytes:
        return json.dumps(payload).encode()

    def as_signed(body: bytes) -> Case:
        return Case(body, signed(adapter, body), True)

    if name == "vk":
        authentic_vk = st.one_of(
            mutated(sane(name, secret), keep=frozenset({"secret", "group_id"})),
            st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=5).map(
                lambda d: {**d, "secret": secret, "group_id": 1}
            ),
        )
        forged_vk = st.one_of(
            mutated(sane(name, secret)).map(lambda d: {**d, "secret": "guess"}),
            JSON_VALUES,
        )
        return st.one_of(
            authentic_vk.map(lambda p: Case(encode(p), {}, True)),
            forged_vk.map(lambda p: Case(encode(p), {}, False)),
            RAW_BODIES.map(lambda b: Case(b, {}, False)),
        )
    header = SIGNATURE_HEADERS[name]
    bodies = st.one_of(mutated(sane(name)).map(encode), JSON_VALUES.map(encode), RAW_BODIES)
    return st.one_of(
        bodies.map(as_signed),
        st.builds(lambda b, v: Case(b, {header: v}, False), bodies, HEADER_TEXT),
        bodies.map(lambda b: Case(b, {}, False)),
    )


@pytest.mark.parametrize("provider", ["vk", "viber", "sms", "voice"])
async def test_fuzzed_callbacks_get_documented_statuses_and_refusals_write_nothing(
    provider: str, app: KaskadApp, db: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    adapter = app.adapters[provider]
    url = f"http://127.0.0.1:{app.http_port}{adapter.callback_path}"
    loop = asyncio.get_running_loop()
    seen: dict[int, int] = {}

    def on_loop(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    async with aiohttp.ClientSession() as http:

        async def post(case: Case) -> int:
            async with http.post(url, data=case.body, headers=case.headers) as response:
                await response.read()
                return response.status

        async def rows() -> int:
            count = await db.fetchval("SELECT count(*) FROM kaskad_delivery_events")
            assert isinstance(count, int)
            return count

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(case=cases(adapter))
        def one(case: Case) -> None:
            before = on_loop(rows())
            status = on_loop(post(case))
            seen[status] = seen.get(status, 0) + 1
            assert status in ({200, 400, 401, 413} if case.authentic else {401, 413}), case
            if status != 200:
                assert on_loop(rows()) == before, case

        await asyncio.to_thread(one)

    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    tracebacks = [r for r in caplog.records if r.exc_info and r.name.startswith(("gateway", "aiohttp"))]
    assert errors == [] and tracebacks == [], [r.getMessage() for r in errors + tracebacks]
    assert seen.get(401), seen  # the unsigned cases were refused
