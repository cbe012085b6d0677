"""The cost report page, read by a person's browser: headless Debian chromium driven by Playwright.

The page's totals, table, chart and CSV download must say what ``GetCostReport`` says
for the same period and grouping, to the kopeck. Playwright never downloads a browser
here: it launches ``/usr/bin/chromium`` (``make chromium`` installs it; ``make pytest``
depends on that). Without it the browser test fails, it is not skipped.

Set ``KASKAD_REPORT_SCREENSHOT=/tmp/report.png`` to keep a screenshot of the page.
"""

from __future__ import annotations

import base64
import csv
import io
import os
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path

import aiohttp
import asyncpg
import grpc
import pytest
from google.protobuf import timestamp_pb2
from playwright.async_api import Browser, Page, async_playwright

from gateway.api.convert import money_from_proto
from gateway.core.auth import ClientRole
from gateway.runtime.app import KaskadApp
from kaskad.v1 import common_pb2, cost_report_pb2, cost_report_pb2_grpc
from tests.cascade_harness import Cascade, run_batch_to_the_end
from tests.conftest import create_key

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
NOTIFICATIONS = 150
CENT = Decimal("0.01")


def money(value: common_pb2.Money) -> Decimal:
    return money_from_proto(value).amount


def basic(user: str, password: str) -> dict[str, str]:
    """HTTP Basic credentials, as a browser sends them."""
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def key_of(cascade: Cascade) -> str:
    """The API key in the cascade's gRPC metadata: the page takes it as a Basic password."""
    return dict(cascade.auth)["authorization"].removeprefix("Bearer ")


def _stamp(day: date) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(datetime.combine(day, time(), tzinfo=UTC))
    return stamp


async def rpc_report(
    cascade: Cascade, first: date, last: date, *groups: int
) -> cost_report_pb2.GetCostReportResponse:
    """GetCostReport over gRPC for the page's period: UTC days ``first`` to ``last``, both included."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cascade.app.grpc_port}") as channel:
        return await cost_report_pb2_grpc.CostReportServiceStub(channel).GetCostReport(
            cost_report_pb2.GetCostReportRequest(
                start_time=_stamp(first), end_time=_stamp(last + timedelta(days=1)), group_by=list(groups)
            ),
            metadata=cascade.auth,
        )


@pytest.fixture
def chromium() -> Path:
    """Debian's chromium; missing means a failure with the fix, never a silent skip."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the report page test needs Debian's chromium. "
            "Run `make chromium` (apt-get install chromium); `make pytest` does it first."
        )
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture
async def traffic(start_cascade, db: asyncpg.Connection) -> tuple[Cascade, date, date]:
    """A batch of notifications run to their end through the simulator; the UTC days they span."""
    first = datetime.now(UTC).date()
    cascade = await start_cascade(workers=2)
    await run_batch_to_the_end(cascade, db, NOTIFICATIONS, "page")
    return cascade, first, datetime.now(UTC).date()


async def _value(page: Page, selector: str) -> str:
    value = await page.get_attribute(selector, "data-value")
    assert value is not None, selector
    return value


def _channel(proto_name: str) -> str:
    return proto_name.removeprefix("CHANNEL_").lower()


async def test_page_totals_chart_and_csv_match_the_rpc(traffic, browser: Browser) -> None:
    cascade, first, last = traffic
    base = f"http://127.0.0.1:{cascade.app.http_port}/reports/costs"
    # The browser asks for a user name and password: any name, the API key as the password.
    page = await browser.new_page(http_credentials={"username": "finance", "password": key_of(cascade)})
    try:
        # A person opens the page, picks the period and a grouping in the form, and submits it.
        response = await page.goto(base)
        assert response is not None and response.status == 200
        await page.fill("#from", first.isoformat())
        await page.fill("#to", last.isoformat())
        await page.check("input[name=group][value=channel]")
        await page.check("input[name=group][value=day]")
        async with page.expect_navigation():
            await page.click("button[type=submit]")
        assert f"from={first.isoformat()}" in page.url and "group=day" in page.url

        rpc = await rpc_report(
            cascade, first, last, cost_report_pb2.COST_GROUPING_CHANNEL, cost_report_pb2.COST_GROUPING_DAY
        )
        total = money(rpc.total.total_cost)
        assert total > 0 and rpc.total.notifications == NOTIFICATIONS

        # The totals, read from the DOM.
        assert Decimal(await _value(page, "dd[data-total=total_cost]")) == total
        assert Decimal(await _value(page, "td[data-total=total_cost]")) == total
        shown = (await page.inner_text("td[data-total=total_cost]")).replace("\u202f", "")
        assert Decimal(shown) == total.quantize(CENT)
        assert Decimal(await _value(page, "[data-total=sms_only_baseline]")) == money(rpc.sms_only_baseline)
        assert Decimal(await _value(page, "[data-total=saving]")) == money(rpc.saving)
        assert await _value(page, "[data-total=saving_percent]") == rpc.saving_percent
        assert Decimal(await _value(page, "td[data-total=fallback_spend]")) == money(rpc.total.fallback_spend)
        for field in ("notifications", "attempts", "delivered", "billed_units"):
            assert int(await _value(page, f"td[data-total={field}]")) == getattr(rpc.total, field), field

        # The table: one row per group, the same costs.
        rows = await page.eval_on_selector_all(
            "#cost-table tbody tr",
            """trs => trs.map(tr => ({
                channel: tr.querySelector('[data-group=channel]').dataset.value,
                day: tr.querySelector('[data-group=day]').dataset.value,
                cost: tr.querySelector('[data-column=total_cost]').dataset.value,
                attempts: tr.querySelector('[data-column=attempts]').dataset.value}))""",
        )
        assert {(r["channel"], r["day"]): (Decimal(r["cost"]), int(r["attempts"])) for r in rows} == {
            (_channel(r.group["channel"]), r.group["day"]): (money(r.total_cost), r.attempts)
            for r in rpc.rows
        }
        assert len(rows) == len(rpc.rows)

        # The chart: one bar group per day, one bar per channel used that day, heights from the costs.
        per_day = await rpc_report(
            cascade, first, last, cost_report_pb2.COST_GROUPING_DAY, cost_report_pb2.COST_GROUPING_CHANNEL
        )
        days = await page.eval_on_selector_all("#cost-chart g.day", "gs => gs.map(g => g.dataset.day)")
        assert days == sorted({r.group["day"] for r in per_day.rows})
        bars = await page.eval_on_selector_all(
            "#cost-chart rect.bar",
            "rs => rs.map(r => [r.dataset.day, r.dataset.channel, r.dataset.cost, r.getAttribute('height')])",
        )
        assert {(d, c): Decimal(cost) for d, c, cost, _ in bars} == {
            (r.group["day"], _channel(r.group["channel"])): money(r.total_cost) for r in per_day.rows
        }
        assert len(bars) == len(per_day.rows)
        assert sum((Decimal(cost) for *_, cost, _ in bars), Decimal(0)) == total
        tallest = max(bars, key=lambda b: Decimal(b[2]))
        assert Decimal(tallest[3]) > 0
        assert await page.eval_on_selector("#cost-chart", "svg => svg.getBBox().width") > 0

        if target := os.environ.get("KASKAD_REPORT_SCREENSHOT"):
            await page.screenshot(path=target, full_page=True)

        # The CSV link: fetched as the browser would resolve it, parsed back to the same numbers.
        href = await page.eval_on_selector("#csv-link", "a => a.href")
        assert href.startswith(f"{base}.csv?")
        signed_in = basic("finance", key_of(cascade))
        async with aiohttp.ClientSession(headers=signed_in) as http, http.get(href) as download:
            assert download.status == 200
            assert download.headers["Content-Type"] == "text/csv; charset=utf-8"
            assert download.headers["Content-Disposition"].startswith("attachment; filename=")
            body = await download.read()
        assert body.startswith("\ufeff".encode()), "Excel needs the BOM to read UTF-8"
        parsed = list(csv.DictReader(io.StringIO(body.decode("utf-8-sig"))))
        assert parsed[-1]["channel"] == "TOTAL"
        assert Decimal(parsed[-1]["total_cost"]) == total.quantize(CENT)
        assert int(parsed[-1]["attempts"]) == rpc.total.attempts
        assert sum((Decimal(r["total_cost"]) for r in parsed[:-1]), Decimal(0)) == sum(
            (money(r.total_cost).quantize(CENT) for r in rpc.rows), Decimal(0)
        )
        assert len(parsed) - 1 == len(rpc.rows)

        # Without grouping: the TOTAL row alone, still the RPC's total.
        await page.goto(f"{base}?from={first.isoformat()}&to={last.isoformat()}")
        assert await page.locator("#cost-table tbody tr").count() == 0
        assert Decimal(await _value(page, "td[data-total=total_cost]")) == total
    finally:
        await page.close()


BAD_QUERIES = [
    ("from=2026-13-01", "'from' takes a day like 2026-11-01"),
    ("from=yesterday", "'from' takes a day like 2026-11-01"),
    ("from=2026-11-10&to=2026-11-01", "'to' (2026-11-01) is before 'from' (2026-11-10)"),
    ("from=2024-01-01&to=2026-01-01", "a report covers at most 366 days"),
    ("from=2026-11-01&from=2026-11-02", "'from' was given 2 times"),
    ("group=colour", "unknown grouping &#39;colour&#39;; choose from channel, provider"),
    ("group=<script>alert(1)</script>", "unknown grouping &#39;&lt;script&gt;alert(1)&lt;/script&gt;&#39;"),
    ("to=0001-01-01", "'to' must be a day between 2000 and 2999"),
]


@pytest.mark.parametrize(("query", "message"), BAD_QUERIES)
@pytest.mark.parametrize("path", ["/reports/costs", "/reports/costs.csv"])
async def test_bad_params_get_a_400_page_that_says_why(
    app: KaskadApp, api_key: str, path: str, query: str, message: str
) -> None:
    async with (
        aiohttp.ClientSession(headers=basic("finance", api_key)) as http,
        http.get(f"http://127.0.0.1:{app.http_port}{path}?{query}") as r,
    ):
        body = await r.text()
        assert r.status == 400
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
    assert 'id="error"' in body
    assert message.replace("'", "&#39;") in body
    assert "<script>" not in body
    assert "Traceback" not in body


async def test_empty_period_renders_and_downloads(app: KaskadApp, api_key: str) -> None:
    base = f"http://127.0.0.1:{app.http_port}/reports/costs"
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as http:
        async with http.get(base) as page:
            body = await page.text()
            assert page.status == 200
            assert page.headers["Content-Type"] == "text/html; charset=utf-8"
            assert "default-src 'none'" in page.headers["Content-Security-Policy"]
        assert 'data-total="total_cost" data-value="0"' in body
        assert 'id="no-traffic"' in body
        assert 'href="costs.csv?from=' in body and "group=channel" in body
        async with http.get(f"{base}.csv?from=2026-11-01&to=2026-11-30&group=channel,day") as download:
            text = await download.text(encoding="utf-8-sig")
            assert download.status == 200
            assert download.headers["Content-Disposition"] == (
                'attachment; filename="kaskad-costs-2026-11-01-to-2026-11-30.csv"'
            )
    assert next(csv.reader(io.StringIO(text)))[:3] == ["channel", "day", "notifications"]


@pytest.mark.parametrize("path", ["/reports/costs", "/reports/costs.csv"])
async def test_the_page_asks_for_an_api_key(app: KaskadApp, api_key: str, path: str) -> None:
    url = f"http://127.0.0.1:{app.http_port}{path}"
    async with aiohttp.ClientSession() as http:
        for auth in ({}, basic("finance", "ksk_never_issued"), basic(api_key, "")):
            async with http.get(url, headers=auth) as refused:
                assert refused.status == 401, auth
                assert refused.headers["WWW-Authenticate"].startswith('Basic realm="Kaskad cost report"')
                assert "ksk_" not in await refused.text()
        async with http.get(url, headers={"Authorization": "Basic %%%"}) as garbled:
            assert garbled.status == 401
        async with http.get(url, headers=basic("anyone", api_key)) as allowed:
            assert allowed.status == 200


async def test_a_service_sees_its_own_costs_and_finance_everyones(traffic, database_url: str) -> None:
    cascade, first, last = traffic
    url = f"http://127.0.0.1:{cascade.app.http_port}/reports/costs?from={first}&to={last}&group=client"
    other = await create_key(database_url, "shop")
    finance = await create_key(database_url, "books", ClientRole.FINANCE)
    totals = {}
    async with aiohttp.ClientSession() as http:
        for name, key in (("courier", key_of(cascade)), ("shop", other), ("books", finance)):
            async with http.get(url, headers=basic(name, key)) as response:
                assert response.status == 200
                body = await response.text()
            marker = 'data-total="notifications" data-value="'
            totals[name] = int(body.split(marker, 1)[1].split('"', 1)[0])
    # The traffic is the courier's: the shop (another service) sees none of it, finance all.
    assert totals == {"courier": NOTIFICATIONS, "shop": 0, "books": NOTIFICATIONS}
