"""The durable work queue: due items claimed with ``FOR UPDATE SKIP LOCKED`` under a lease.

Any number of gateway processes share the queue. A claim is a lease with a fencing
token: completing or releasing an item names the token it was claimed with, and fails
once another worker has re-claimed the item after the lease expired, so a stale worker
cannot finish work it no longer owns. Waits and fallbacks are items with a later due
time, never in-memory sleeps.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from gateway.store.queries import Queries
from router.domain import NotificationId


class WorkKind(enum.StrEnum):
    """What a work item asks for; the values are stored in ``kaskad_work_items.kind``."""

    START = "start"  # accepted: begin the cascade (inserted by the accept statement itself)
    SUBMIT = "submit"  # call a provider
    TIMER = "timer"  # a step's wait, a read wait, a voice retry or the deadline
    EVENT = "event"  # a recorded delivery callback


@dataclass(frozen=True, slots=True)
class WorkItem:
    work_item_id: int
    notification_id: NotificationId
    # A str, not a WorkKind: a row written by a newer version must not break the claim.
    kind: str
    payload: dict[str, Any]
    due_at: datetime
    fencing_token: int
    attempts: int


@dataclass(frozen=True, slots=True)
class Backlog:
    due: int
    oldest_due: datetime | None


@dataclass(frozen=True, slots=True)
class Lease:
    """Who holds the items a worker leases, and for how long."""

    owner: str
    duration: timedelta


def work_item_from_row(row: asyncpg.Record) -> WorkItem:
    """A work item from a row of a claim (or of an insert that leased it)."""
    return WorkItem(
        work_item_id=row["work_item_id"],
        notification_id=NotificationId(row["notification_id"]),
        kind=row["kind"],
        payload=dict(row["payload"]),
        due_at=row["due_at"],
        fencing_token=row["fencing_token"],
        attempts=row["attempts"],
    )


class LeaseLost(Exception):
    """The item was re-claimed by another worker after this worker's lease expired."""


class WorkQueue:
    def __init__(self, pool: asyncpg.Pool, queries: Queries) -> None:
        self._pool = pool
        self._q = queries

    async def claim(self, now: datetime, limit: int, owner: str, lease: timedelta) -> list[WorkItem]:
        """Lease up to ``limit`` items due at ``now``."""
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(self._q.claim_due_work, now, limit, owner, lease)
        return [work_item_from_row(r) for r in rows]

    async def schedule(
        self,
        conn: asyncpg.Connection,
        notification_id: NotificationId,
        kind: WorkKind,
        due_at: datetime,
        now: datetime,
        payload: dict[str, Any] | None = None,
    ) -> int:
        """Add an item inside the caller's transaction."""
        work_item_id: int = await conn.fetchval(
            self._q.insert_work_item, notification_id, kind, payload or {}, due_at, now
        )
        return work_item_id

    async def complete(self, conn: asyncpg.Connection, item: WorkItem, now: datetime) -> None:
        """Mark done inside the caller's transaction; raises :class:`LeaseLost` if fenced out."""
        if not await self.complete_many(conn, [item], now):
            raise LeaseLost(f"work item {item.work_item_id} was taken over by another worker")

    async def complete_many(
        self, conn: asyncpg.Connection, items: Sequence[WorkItem], now: datetime
    ) -> set[int]:
        """Mark items done inside the caller's transaction; returns the ids this worker still
        held. An item missing from the result was taken over after its lease expired."""
        if not items:
            return set()
        rows = await conn.fetch(
            self._q.complete_works,
            [i.work_item_id for i in items],
            [i.fencing_token for i in items],
            now,
        )
        return {r["work_item_id"] for r in rows}

    async def release(self, item: WorkItem, retry_at: datetime) -> bool:
        """Hand an item back to run again at ``retry_at``; False if it was taken over."""
        async with self._pool.acquire() as conn:
            released = await conn.fetchval(
                self._q.release_work, item.work_item_id, item.fencing_token, retry_at
            )
        return released is not None

    async def backlog(self, now: datetime) -> Backlog:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(self._q.work_backlog, now)
        return Backlog(due=row["due"], oldest_due=row["oldest_due"])
