"""The cost ledger as finance reads it: totals per channel, provider, client, template, day.

Every billed attempt is one ``kaskad_ledger`` entry (booked by the engine in the same
transaction as the outcome that bills it). A report counts attempts made in the period,
their billed cost from the ledger, what reached the person, and the baseline: what the
delivered notifications would have cost by SMS alone. Money stays ``Decimal`` throughout.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

import asyncpg

from gateway.core.auth import Caller, ClientRole
from gateway.core.errors import PermissionDenied
from gateway.store.queries import Queries


class Grouping(enum.StrEnum):
    CHANNEL = "channel"
    PROVIDER = "provider"
    CLIENT = "client"
    TEMPLATE = "template"
    DAY = "day"


@dataclass(frozen=True, slots=True)
class CostReportQuery:
    start: datetime
    end: datetime
    group_by: tuple[Grouping, ...] = ()
    channels: tuple[str, ...] = ()
    providers: tuple[str, ...] = ()
    clients: tuple[str, ...] = ()
    template_ids: tuple[str, ...] = ()

    def for_caller(self, caller: Caller) -> CostReportQuery:
        """This query as ``caller`` may run it: a ``finance`` client reads every client's
        costs; any other client only its own (naming another is :class:`PermissionDenied`)."""
        if caller.role is ClientRole.FINANCE:
            return self
        others = sorted(set(self.clients) - {caller.name})
        if others:
            raise PermissionDenied(
                f"client {caller.name!r} may read only its own costs, not those of {', '.join(others)}; "
                "a finance client reads every client's (kaskad client role NAME finance)"
            )
        return replace(self, clients=(caller.name,))


@dataclass(frozen=True, slots=True)
class CostReportRow:
    group: dict[str, str]
    notifications: int
    attempts: int
    delivered: int
    billed_units: int
    total_cost: Decimal
    fallback_spend: Decimal
    price_book_cost: Decimal = Decimal(0)

    @property
    def cost_per_delivered(self) -> Decimal:
        if not self.delivered:
            return Decimal(0)
        return (self.total_cost / self.delivered).quantize(Decimal("0.000000001"), rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class CostReport:
    query: CostReportQuery
    currency: str
    rows: tuple[CostReportRow, ...]
    total: CostReportRow
    sms_only_baseline: Decimal

    @property
    def saving(self) -> Decimal:
        return self.sms_only_baseline - self.total.total_cost

    @property
    def saving_percent(self) -> Decimal:
        if not self.sms_only_baseline:
            return Decimal("0.00")
        return (self.saving * 100 / self.sms_only_baseline).quantize(
            Decimal("0.01"), rounding=ROUND_HALF_EVEN
        )


class CostLedger:
    def __init__(self, pool: asyncpg.Pool, queries: Queries, currency: str) -> None:
        self._pool = pool
        self._q = queries
        self._currency = currency

    def _sql(self, groups: Sequence[Grouping]) -> str:
        # Only enum values reach the SQL text; every value from a caller is a parameter.
        columns = [g.value for g in groups]
        return self._q.cost_report.format(
            group_columns="".join(f"{c}, " for c in columns),
            group_by=f"GROUP BY {', '.join(columns)}" if columns else "",
            order_by=f"ORDER BY {', '.join(columns)}" if columns else "",
        )

    async def report(self, query: CostReportQuery) -> CostReport:
        if query.end <= query.start:
            raise ValueError("the period must end after it starts")
        params = (
            query.start,
            query.end,
            list(query.channels),
            list(query.providers),
            list(query.clients),
            list(query.template_ids),
        )
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(self._sql(query.group_by), *params) if query.group_by else []
            total = await conn.fetchrow(self._sql(()), *params)
        assert total is not None

        def row(record: asyncpg.Record, groups: Sequence[Grouping]) -> CostReportRow:
            return CostReportRow(
                group={g.value: str(record[g.value]) for g in groups},
                notifications=record["notifications"],
                attempts=record["attempts"],
                delivered=record["delivered"],
                billed_units=int(record["billed_units"]),
                total_cost=Decimal(record["total_cost"]),
                fallback_spend=Decimal(record["fallback_spend"]),
                price_book_cost=Decimal(record["price_book_cost"]),
            )

        return CostReport(
            query=query,
            currency=self._currency,
            rows=tuple(row(r, query.group_by) for r in rows),
            total=row(total, ()),
            sms_only_baseline=Decimal(total["sms_baseline"]),
        )
