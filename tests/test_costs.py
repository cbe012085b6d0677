"""Finance: the cost ledger, GetCostReport, and `kaskad report costs`, to the kopeck."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2

from gateway.api.convert import money_from_proto
from gateway.core.auth import ClientRole
from gateway.store.cascade import Bill
from kaskad.v1 import common_pb2, cost_report_pb2, cost_report_pb2_grpc, notification_pb2
from tests.cascade_harness import Cascade, run_batch_to_the_end
from tests.conftest import create_key

NOTIFICATIONS = 300


def _stamp(moment: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def money(value: common_pb2.Money) -> Decimal:
    return money_from_proto(value).amount


@pytest.fixture
async def traffic(start_cascade, db: asyncpg.Connection) -> tuple[Cascade, datetime, datetime]:
    """A few hundred notifications run to their end through the simulator."""
    start = datetime.now(UTC) - timedelta(minutes=1)
    cascade = await start_cascade(workers=2)
    await run_batch_to_the_end(cascade, db, NOTIFICATIONS, "cost")
    return cascade, start, datetime.now(UTC) + timedelta(minutes=1)


async def _report(
    cascade: Cascade, start: datetime, end: datetime, *groups: int
) -> cost_report_pb2.GetCostReportResponse:
    stub = cost_report_pb2_grpc.CostReportServiceStub(
        grpc.aio.insecure_channel(f"127.0.0.1:{cascade.app.grpc_port}")
    )
    return await stub.GetCostReport(
        cost_report_pb2.GetCostReportRequest(
            start_time=_stamp(start), end_time=_stamp(end), group_by=list(groups)
        ),
        metadata=cascade.auth,
    )


async def test_report_equals_ledger_and_simulator_billing_to_the_kopeck(traffic, db) -> None:
    cascade, start, end = traffic
    report = await _report(cascade, start, end)
    ledger_total = await db.fetchval("SELECT sum(amount) FROM kaskad_ledger")
    billing = await cascade.sim("GET", "/_sim/billing")
    simulator_total = sum((Decimal(t["amount"]) for t in billing["totals"]), Decimal(0))  # type: ignore[union-attr]

    assert money(report.total.total_cost) == ledger_total == simulator_total > 0
    assert report.total.notifications == NOTIFICATIONS
    assert await db.fetchval("SELECT count(*) FROM kaskad_ledger") == await db.fetchval(
        "SELECT count(*) FROM kaskad_attempts WHERE billed_amount IS NOT NULL"
    ), "one ledger entry per billed attempt"
    assert report.total.delivered == await db.fetchval(
        "SELECT count(*) FROM kaskad_notifications WHERE state IN ('delivered', 'read')"
    )
    baseline = money(report.sms_only_baseline)
    assert baseline == await db.fetchval(
        "SELECT sum(sms_baseline) FROM kaskad_notifications WHERE state IN ('delivered', 'read')"
    )
    assert money(report.saving) == baseline - money(report.total.total_cost)
    assert Decimal(report.saving_percent) == (money(report.saving) * 100 / baseline).quantize(Decimal("0.01"))
    assert money(report.saving) > 0, "the cascade must be cheaper than SMS only"


GROUPINGS = [
    [cost_report_pb2.COST_GROUPING_CHANNEL],
    [cost_report_pb2.COST_GROUPING_PROVIDER],
    [cost_report_pb2.COST_GROUPING_CLIENT],
    [cost_report_pb2.COST_GROUPING_TEMPLATE],
    [cost_report_pb2.COST_GROUPING_DAY],
    [cost_report_pb2.COST_GROUPING_CHANNEL, cost_report_pb2.COST_GROUPING_DAY],
]


async def test_every_grouping_adds_up_to_the_total(traffic) -> None:
    cascade, start, end = traffic
    for groups in GROUPINGS:
        report = await _report(cascade, start, end, *groups)
        assert report.rows, groups
        assert sum((money(r.total_cost) for r in report.rows), Decimal(0)) == money(report.total.total_cost)
        assert sum((money(r.fallback_spend) for r in report.rows), Decimal(0)) == money(
            report.total.fallback_spend
        )
        assert sum(r.attempts for r in report.rows) == report.total.attempts
        assert sum(r.billed_units for r in report.rows) == report.total.billed_units


async def test_csv_parses_back_to_the_same_numbers(traffic, database_url, redis_url) -> None:
    cascade, start, end = traffic
    report = await _report(cascade, start, end, cost_report_pb2.COST_GROUPING_CHANNEL)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.runtime.cli", "report", "costs",
        "--from", start.isoformat(), "--to", end.isoformat(), "--group-by", "channel", "--format", "csv",
        env={**os.environ, "KASKAD_DATABASE_URL": database_url, "KASKAD_REDIS_URL": redis_url},
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0
    assert out.startswith("\ufeff".encode()), "Excel needs the BOM to read UTF-8"
    rows = list(csv.DictReader(io.StringIO(out.decode("utf-8-sig"))))
    by_channel = {r["channel"]: r for r in rows}
    for row in report.rows:
        name = row.group["channel"].removeprefix("CHANNEL_").lower()
        parsed = by_channel[name]
        assert Decimal(parsed["total_cost"]) == money(row.total_cost).quantize(Decimal("0.01"))
        assert int(parsed["attempts"]) == row.attempts
        assert int(parsed["billed_units"]) == row.billed_units
    assert Decimal(by_channel["TOTAL"]["total_cost"]) == money(report.total.total_cost).quantize(
        Decimal("0.01")
    )


async def test_a_repeated_billing_callback_books_once(traffic, db) -> None:
    cascade, _, _ = traffic
    entries = await db.fetchval("SELECT count(*) FROM kaskad_ledger")
    events = await db.fetch(
        "SELECT provider, event_key FROM kaskad_delivery_events WHERE billed_amount IS NOT NULL LIMIT 5"
    )
    assert events
    for event in events:  # the engine sees the same billed event again
        attempt_id = await db.fetchval(
            "SELECT attempt_id FROM kaskad_delivery_events WHERE provider = $1 AND event_key = $2",
            event["provider"], event["event_key"],
        )  # fmt: skip
        booked = await cascade.app.cascades.book_many(  # the ledger's own guard, beside the event key
            db, [Bill(attempt_id, 1, Decimal("9.99"), Decimal("9.99"))], datetime.now(UTC)
        )
        assert booked == set()
    assert await db.fetchval("SELECT count(*) FROM kaskad_ledger") == entries


async def test_bad_report_request_is_invalid_argument(start_cascade) -> None:
    cascade = await start_cascade()
    start, end = datetime.now(UTC) - timedelta(days=1), datetime.now(UTC)
    stub = cost_report_pb2_grpc.CostReportServiceStub(
        grpc.aio.insecure_channel(f"127.0.0.1:{cascade.app.grpc_port}")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetCostReport(
            cost_report_pb2.GetCostReportRequest(start_time=_stamp(end), end_time=_stamp(start)),
            metadata=cascade.auth,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    body = json.dumps(str(caught.value.details()))
    assert "end_time" in body or "invalid request" in body


async def test_the_providers_reported_price_wins_and_the_difference_shows(start_cascade, db) -> None:
    # Kaskad's price book says 4.40 a segment; the aggregator bills (and reports) 4.50.
    cascade = await start_cascade(providers={"sms": {"price_per_segment": "4.40"}})
    start = datetime.now(UTC) - timedelta(minutes=1)
    ids = [
        (
            await cascade.send(
                f"+7916{i:07d}", channels=[common_pb2.CHANNEL_SMS], text="Заказ передан курьеру " * (i + 1)
            )
        ).notification_id
        for i in range(4)
    ]
    for notification_id in ids:
        await cascade.wait_final(notification_id)
    await cascade.settle()

    rows = await db.fetch("SELECT billed_units, amount, price_book_amount FROM kaskad_ledger")
    assert len(rows) == len(ids)
    for row in rows:
        assert row["amount"] == Decimal("4.50") * row["billed_units"]
        assert row["price_book_amount"] == Decimal("4.40") * row["billed_units"]
    billing = await cascade.sim("GET", "/_sim/billing")
    simulator_total = sum((Decimal(t["amount"]) for t in billing["totals"]), Decimal(0))  # type: ignore[union-attr]
    report = await _report(cascade, start, datetime.now(UTC) + timedelta(minutes=1))
    assert money(report.total.total_cost) == simulator_total == sum(r["amount"] for r in rows)
    assert money(report.total.price_book_cost) == sum(r["price_book_amount"] for r in rows)
    assert money(report.total.total_cost) > money(report.total.price_book_cost)
    attempts = [(await cascade.get(i)).attempts[0] for i in ids]
    assert sum((money(a.billed_cost) for a in attempts), Decimal(0)) == simulator_total


async def test_a_service_reads_only_its_own_costs_and_finance_reads_everyones(
    start_cascade, database_url: str
) -> None:
    cascade = await start_cascade()
    start = datetime.now(UTC) - timedelta(minutes=1)
    own = await cascade.send("+79160000001", channels=[common_pb2.CHANNEL_SMS])
    shop = [("authorization", f"Bearer {await create_key(database_url, 'shop')}")]
    theirs = await cascade.stub.SendNotification(
        notification_pb2.SendNotificationRequest(
            idempotency_key="shop-1",
            recipient=notification_pb2.Recipient(phone="+79160000002"),
            text="Your order is ready",
            channels=[common_pb2.CHANNEL_SMS],
        ),
        metadata=shop,
    )
    await cascade.wait_final(own.notification_id)
    await cascade.wait_final(theirs.notification_id, auth=shop)
    end = datetime.now(UTC) + timedelta(minutes=1)
    finance = [("authorization", f"Bearer {await create_key(database_url, 'books', ClientRole.FINANCE)}")]

    async def report(auth: list[tuple[str, str]], *clients: str) -> cost_report_pb2.GetCostReportResponse:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cascade.app.grpc_port}") as channel:
            return await cost_report_pb2_grpc.CostReportServiceStub(channel).GetCostReport(
                cost_report_pb2.GetCostReportRequest(
                    start_time=_stamp(start),
                    end_time=_stamp(end),
                    group_by=[cost_report_pb2.COST_GROUPING_CLIENT],
                    clients=list(clients),
                ),
                metadata=auth,
            )

    everyone = await report(finance)
    assert len(everyone.rows) == 2 and everyone.total.notifications == 2
    mine = await report(shop)
    assert [r.group["client"] for r in mine.rows] == ["shop"]
    assert mine.total.notifications == 1 and money(mine.total.total_cost) == Decimal("4.50")
    assert (await report(shop, "shop")).total == mine.total

    courier = next(r.group["client"] for r in everyone.rows if r.group["client"] != "shop")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await report(shop, "shop", courier)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may read only its own costs" in (refused.value.details() or "")
