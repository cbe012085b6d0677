"""Migrations and schema.sql: repeatable, concurrent-safe, and in agreement."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from gateway.core.errors import StoreUnavailable
from gateway.store.postgres import connect_one, connect_pool, migrate, transient_as_unavailable
from gateway.store.queries import Queries, load_schema, parse_named_queries
from tests.conftest import with_database
from tests.tcp_proxy import TcpProxy

# Everything that makes two schemas differ: columns, constraints, indexes and functions.
_CATALOG = """
SELECT 'column' AS kind, table_name || '.' || column_name AS name,
       concat_ws(' ', data_type, numeric_precision, numeric_scale, is_nullable, column_default) AS spec
FROM information_schema.columns WHERE table_schema = 'public'
UNION ALL
SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'public'::regnamespace
UNION ALL
SELECT 'index', tablename || '.' || indexname, indexdef
FROM pg_indexes WHERE schemaname = 'public'
UNION ALL
SELECT 'function', p.oid::regprocedure::text, pg_get_functiondef(p.oid)
FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
ORDER BY 1, 2
"""


async def _fresh_database(server_url: str) -> str:
    name = f"kaskad_s_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return name


async def _drop(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def test_schema_sql_matches_the_migrated_database(server_url: str, db) -> None:
    name = await _fresh_database(server_url)
    try:
        conn = await asyncpg.connect(with_database(server_url, name))
        try:
            await conn.execute(load_schema())
            from_schema = [tuple(r) for r in await conn.fetch(_CATALOG)]
        finally:
            await conn.close()
    finally:
        await _drop(server_url, name)
    migrated = [tuple(r) for r in await db.fetch(_CATALOG) if "kaskad_schema_migrations" not in r["name"]]
    assert from_schema == migrated


async def test_migrations_are_safe_twice_and_concurrently(server_url: str) -> None:
    name = await _fresh_database(server_url)
    try:
        conns = [await asyncpg.connect(with_database(server_url, name)) for _ in range(3)]
        try:
            now = datetime.now(UTC)
            applied = await asyncio.gather(*(migrate(c, now) for c in conns))
            again = await migrate(conns[0], now)
            versions = await conns[0].fetch("SELECT version FROM kaskad_schema_migrations")
        finally:
            for conn in conns:
                await conn.close()
    finally:
        await _drop(server_url, name)
    assert sorted(len(a) for a in applied)[-1] == len(versions)
    assert sum(len(a) for a in applied) == len(versions), "each migration applied exactly once"
    assert again == []


def test_every_named_query_is_declared() -> None:
    Queries()  # raises when queries.sql and the declared names disagree


def test_named_query_parser_rejects_duplicates() -> None:
    text = "-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n"
    with pytest.raises(ValueError, match="defined twice"):
        parse_named_queries(text)


@pytest.mark.parametrize(
    "condition",
    [
        asyncpg.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.DeadlockDetectedError("deadlock detected"),
        asyncpg.SerializationError("could not serialize access"),
        ConnectionResetError("connection reset by peer"),
    ],
)
def test_conditions_a_retry_can_outlive_become_unavailable(condition: Exception) -> None:
    with (
        pytest.raises(StoreUnavailable, match=type(condition).__name__) as raised,
        transient_as_unavailable(),
    ):
        raise condition
    assert raised.value.__cause__ is condition
    assert str(condition) not in str(raised.value)  # the server's text may quote row data


async def test_a_connection_lost_mid_statement_becomes_unavailable(database_url: str) -> None:
    # A PostgreSQL outage cuts statements under way: an accept cut so must be retried by the
    # caller (UNAVAILABLE), not given up on (INTERNAL), since it may or may not have committed.
    proxy = await TcpProxy.for_url(database_url)
    conn = await connect_one(proxy.url_for(database_url))
    try:
        statement = asyncio.create_task(conn.fetchval("SELECT pg_sleep(30)"))
        await asyncio.sleep(0.2)  # under way at the server
        await proxy.cut()
        with pytest.raises(StoreUnavailable, match="ConnectionDoesNotExistError"), transient_as_unavailable():
            await statement
    finally:
        conn.terminate()
        await proxy.close()


def test_a_bad_statement_is_not_made_retryable() -> None:
    with pytest.raises(asyncpg.UniqueViolationError), transient_as_unavailable():
        raise asyncpg.UniqueViolationError("duplicate key value violates unique constraint")


async def test_a_server_with_no_connection_slot_for_kaskad_is_unavailable_at_start(database_url, db) -> None:
    # A role allowed no connections gets "too many connections", as a full server answers.
    role = f"kaskad_full_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 0")
    try:
        parts = urlsplit(database_url)
        url = urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))
        with pytest.raises(
            StoreUnavailable, match="cannot connect to PostgreSQL: too many connections"
        ) as raised:
            await connect_pool(url, 1, 2)
        assert isinstance(raised.value.__cause__, asyncpg.TooManyConnectionsError)
        with pytest.raises(StoreUnavailable, match="too many connections"):
            await connect_one(url)
    finally:
        await db.execute(f"DROP ROLE {role}")
