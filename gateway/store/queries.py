"""The one place that loads SQL: named queries from ``queries.sql`` and migrations.

A query file is split on ``-- name: NAME`` lines; :class:`Queries` exposes each query
as an attribute, so a typo in a name fails at start, not on the first call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

_NAME_LINE = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def parse_named_queries(text: str) -> dict[str, str]:
    """Split SQL text into ``{name: query}`` on ``-- name: NAME`` lines."""
    parts = _NAME_LINE.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = body.strip()
    return queries


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def _read(name: str) -> str:
    return resources.files("gateway.store").joinpath(name).read_text(encoding="utf-8")


def load_migrations() -> list[Migration]:
    """The migrations in ``migrations/NNNN_name.sql``, ordered by version."""
    folder = resources.files("gateway.store").joinpath("migrations")
    migrations = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            sql = entry.read_text(encoding="utf-8")
            migrations.append(Migration(int(match.group(1)), match.group(2), sql))
    migrations.sort(key=lambda m: m.version)
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"migration versions must be 1..N without gaps, got {versions}")
    return migrations


def load_schema() -> str:
    """``schema.sql``: the whole schema as the migrations leave it."""
    return _read("schema.sql")


class Queries:
    """Every named query of ``queries.sql`` as an attribute holding its SQL text."""

    insert_client: str
    get_client_by_name: str
    insert_api_key: str
    revoke_client_keys: str
    authenticate: str
    list_clients: str
    set_client_role: str
    insert_notification: str
    insert_notifications: str
    get_notification_by_key: str
    get_notifications_by_keys: str
    insert_work_item: str
    get_notification: str
    claim_due_work: str
    complete_works: str
    complete_works_reading_events: str
    complete_submits_reading_attempts: str
    write_cascade_batch: str
    release_work: str
    work_backlog: str
    notify_work: str
    record_delivery_events: str
    match_event: str
    lock_notifications: str
    read_notifications_for_submit: str
    lock_notification_versions: str
    list_attempts: str
    get_attempts_by_steps: str
    record_submits: str
    locked_reachabilities: str
    get_reachabilities: str
    get_channel_stats: str
    lock_channel_stats: str
    upsert_channel_stats: str
    bill_attempts: str
    cost_report: str
    simulate_outcomes: str
    simulate_attempts: str

    def __init__(self) -> None:
        loaded = parse_named_queries(_read("queries.sql"))
        declared = set(self.__class__.__annotations__)
        if missing := declared - set(loaded):
            raise ValueError(f"queries.sql lacks queries: {', '.join(sorted(missing))}")
        if extra := set(loaded) - declared:
            raise ValueError(f"queries.sql has undeclared queries: {', '.join(sorted(extra))}")
        for name, sql in loaded.items():
            setattr(self, name, sql)
