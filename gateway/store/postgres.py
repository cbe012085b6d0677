"""The PostgreSQL store: migrations, clients and keys, notifications and their work items.

PostgreSQL is the truth. Accepting a notification writes it and its first work item in
one statement (shared by concurrent accepts with group commit); uniqueness of (client,
idempotency key) is the database's job.
asyncpg errors are converted here, where they enter, into :mod:`gateway.core.errors`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Any

import asyncpg

from gateway.core.auth import Caller, ClientRole
from gateway.core.errors import AlreadyExists, NotFound, StoreUnavailable
from gateway.core.model import AcceptResult, NewNotification, NotificationRecord, RouteView
from gateway.store import json_codec
from gateway.store.group_commit import AcceptBatcher, AcceptRow, insert_one
from gateway.store.queries import Queries, load_migrations
from router.domain import (
    AckPolicy,
    Channel,
    ClientId,
    NotificationId,
    NotificationState,
    mask_phone,
)
from router.planner import Plan

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every Kaskad process.
_MIGRATION_LOCK = 0x6B61736B6164  # "kaskad"

# What refuses a new connection for now: no server listening, a server starting or shutting
# down, no free connection slot. The server's text says which (no row data at connect time).
_REFUSED_CONNECT_ERRORS = (
    OSError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
)
# Conditions of the server that a retry can outlive (those, a connection lost mid-statement,
# and a deadlock or serialization victim): the caller hears UNAVAILABLE and retries with the
# same key, where it would otherwise hear INTERNAL and give up on an accept that may be lost.
_TRANSIENT_ERRORS = (
    *_REFUSED_CONNECT_ERRORS,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)


def is_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says PostgreSQL cannot serve now (a condition a retry outlives),
    rather than that something is wrong with the work at hand."""
    return isinstance(error, (StoreUnavailable, *_TRANSIENT_ERRORS, OSError, TimeoutError))


@contextmanager
def transient_as_unavailable() -> Iterator[None]:
    """Turn PostgreSQL conditions a retry can outlive into :class:`StoreUnavailable`.

    The message names the condition, not the server's text, which may quote row data.
    """
    try:
        yield
    except _TRANSIENT_ERRORS as exc:
        raise StoreUnavailable(f"PostgreSQL is unavailable ({type(exc).__name__}); retry") from exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", encoder=json_codec.dumps, decoder=json_codec.loads, schema="pg_catalog"
    )


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a connection to the pool without asyncpg's reset query (a round trip per release).

    Kaskad leaves no session state behind: no ``SET``, ``LISTEN`` or open cursors, and the
    one session advisory lock (migrations) is released in a ``finally``. The pool still
    rolls back a transaction left open before it calls this.
    """


async def connect_pool(url: str, min_size: int, max_size: int) -> asyncpg.Pool:
    """Open a connection pool, converting refused connections to :class:`StoreUnavailable`."""
    try:
        pool = await asyncpg.create_pool(
            url, min_size=min_size, max_size=max_size, init=_init_connection, reset=_keep_session
        )
    except _REFUSED_CONNECT_ERRORS as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
    assert pool is not None
    return pool


async def connect_one(url: str) -> asyncpg.Connection:
    """One connection outside the pool (a listener's), converting failures like :func:`connect_pool`."""
    try:
        return await asyncpg.connect(url)
    except _REFUSED_CONNECT_ERRORS as exc:
        raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc


async def migrate(conn: asyncpg.Connection, now: datetime) -> list[int]:
    """Apply pending migrations; safe to run twice and from two processes at once.

    A session advisory lock serialises concurrent starters; each migration runs in its
    own transaction together with its bookkeeping row. Returns the versions applied.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS kaskad_schema_migrations (
                   version integer PRIMARY KEY, name text NOT NULL,
                   applied_at timestamptz NOT NULL)"""
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM kaskad_schema_migrations")}
        applied = []
        for migration in load_migrations():
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO kaskad_schema_migrations VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    now,
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)


class NotificationStore:
    """Reads and writes Kaskad's durable state through one asyncpg pool."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        accept_batch_size: int = 1,
        accept_batch_delay: float = 0.0,
        accept_batch_idle_delay: float = 0.0,
    ) -> None:
        """``accept_batch_size`` > 1 turns on group commit of accepts (:class:`AcceptBatcher`)."""
        self._pool = pool
        self._q = Queries()
        self._batcher = (
            AcceptBatcher(
                self._connection, self._q, accept_batch_size, accept_batch_delay, accept_batch_idle_delay
            )
            if accept_batch_size > 1
            else None
        )

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        with transient_as_unavailable():
            async with self._pool.acquire() as conn:
                yield conn

    async def ping(self) -> bool:
        try:
            async with self._connection() as conn:
                await conn.fetchval("SELECT 1")
            return True
        except StoreUnavailable:
            return False

    # Clients and keys

    async def create_client(
        self,
        name: str,
        key_hash: bytes,
        key_prefix: str,
        now: datetime,
        role: ClientRole = ClientRole.SERVICE,
    ) -> ClientId:
        """Create a calling service with its first key; AlreadyExists if the name is taken."""
        async with self._connection() as conn, conn.transaction():
            client_id = await conn.fetchval(self._q.insert_client, uuid.uuid4(), name, now, role.value)
            if client_id is None:
                raise AlreadyExists(f"client {name!r} already exists")
            await conn.execute(self._q.insert_api_key, key_hash, client_id, key_prefix, now)
        return ClientId(client_id)

    async def add_key(self, name: str, key_hash: bytes, key_prefix: str, now: datetime) -> ClientId:
        """Give an existing client another key (rotation: revoke the old one afterwards)."""
        async with self._connection() as conn:
            row = await conn.fetchrow(self._q.get_client_by_name, name)
            if row is None:
                raise NotFound(f"no client named {name!r}")
            await conn.execute(self._q.insert_api_key, key_hash, row["client_id"], key_prefix, now)
        return ClientId(row["client_id"])

    async def revoke_client(self, name: str, now: datetime) -> int:
        """Revoke every key of a client; returns how many were active."""
        async with self._connection() as conn:
            row = await conn.fetchrow(self._q.get_client_by_name, name)
            if row is None:
                raise NotFound(f"no client named {name!r}")
            status = await conn.execute(self._q.revoke_client_keys, row["client_id"], now)
        return int(status.split()[-1])

    async def list_clients(self) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            return [dict(r) for r in await conn.fetch(self._q.list_clients)]

    async def set_client_role(self, name: str, role: ClientRole) -> None:
        """Change what a client may read (takes effect within the key cache's TTL)."""
        async with self._connection() as conn:
            if await conn.fetchval(self._q.set_client_role, name, role.value) is None:
                raise NotFound(f"no client named {name!r}")

    async def authenticate(self, key_hash: bytes) -> Caller | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(self._q.authenticate, key_hash)
        if row is None:
            return None
        return Caller(ClientId(row["client_id"]), row["name"], ClientRole(row["role"]))

    # Notifications

    async def accept(
        self,
        new: NewNotification,
        plan: Plan,
        sms_baseline: Decimal,
        now: datetime,
        traceparent: str | None = None,
    ) -> AcceptResult:
        """Store a notification and its first work item atomically (one statement).

        With group commit on, the statement is shared with concurrent accepts (see
        :mod:`gateway.store.group_commit`); either way this returns after the commit. A
        concurrent insert with the same (client, key) waits on the unique index and then
        finds the row; the loser returns the winner's id with ``duplicate=True``.
        """
        route = plan.to_dict()
        row = AcceptRow(uuid.uuid4(), new, route, sms_baseline, now, traceparent)
        if self._batcher is not None:
            stored = await self._batcher.insert(row)
        else:
            async with self._connection() as conn:
                stored = await insert_one(conn, self._q, row)
        if stored.inserted:
            return AcceptResult(stored.notification_id, False, RouteView.from_plan(plan))
        if stored.request_hash != new.request_hash:
            raise AlreadyExists(
                f"idempotency key {new.idempotency_key!r} was already used with different "
                "content; use a new key for a new notification"
            )
        return AcceptResult(stored.notification_id, True, RouteView.from_json(stored.route))

    async def aclose(self) -> None:
        """Write the accepts still waiting for their group commit (before the pool closes)."""
        if self._batcher is not None:
            await self._batcher.aclose()

    async def get(self, notification_id: NotificationId, client_id: ClientId) -> NotificationRecord:
        async with self._connection() as conn:
            row = await conn.fetchrow(self._q.get_notification, notification_id, client_id)
        if row is None:
            raise NotFound(f"notification {notification_id} not found")
        return _record(row)


def _record(row: asyncpg.Record) -> NotificationRecord:
    return NotificationRecord(
        notification_id=NotificationId(row["notification_id"]),
        idempotency_key=row["idempotency_key"],
        state=NotificationState(row["state"]),
        masked_phone=mask_phone(row["phone"]),
        vk_user_id=row["vk_user_id"],
        viber_user_id=row["viber_user_id"],
        channels=tuple(Channel(c) for c in row["channels"]),
        ack_policy=AckPolicy(row["ack_policy"]),
        template_id=row["template_id"],
        route=RouteView.from_json(row["route"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        deadline=row["deadline"],
        metadata=dict(row["metadata"]),
        currency=row["currency"],
    )
