"""The cost report as a page for finance people, on the gateway's HTTP port.

``GET /reports/costs`` renders, server-side and without any script, a form (period and
grouping, submitted as GET query parameters), a chart of cost per channel per day as
inline SVG, the table with a TOTAL row, the SMS-only baseline and the saving.
``GET /reports/costs.csv`` with the same parameters downloads the same table as CSV
(``report_format.to_csv``: Excel-ready UTF-8 with a BOM).

Query parameters: ``from`` and ``to`` are UTC days (``YYYY-MM-DD``), both inclusive;
``group`` may repeat (or list names separated by commas). No parameters at all means the
last 30 days grouped by channel. Anything unreadable gets a 400 page saying what is
wrong. Every value is escaped by Jinja2's autoescape. Money stays ``Decimal``: even the
chart's bar heights are computed in ``Decimal`` and only formatted as text at the end.

The page names calling services and templates, never a person. It asks for an API key
(HTTP Basic: any user name, the key as the password; or ``Authorization: Bearer``): a
``finance`` client sees every client's costs, any other client only its own, as with
``GetCostReport``. Without a valid key: 401.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Any
from urllib.parse import urlencode

import jinja2
from aiohttp import web
from multidict import MultiMapping

from gateway.api.report_format import to_csv
from gateway.core.auth import Caller
from gateway.core.clock import Clock
from gateway.core.errors import Unauthenticated
from gateway.store.ledger import CostLedger, CostReport, CostReportQuery, CostReportRow, Grouping
from providers.registry import CHANNELS
from router.domain import Channel

PAGE_PATH = "/reports/costs"
CSV_PATH = "/reports/costs.csv"

MAX_DAYS = 366
DEFAULT_DAYS = 30
DEFAULT_GROUPING = (Grouping.CHANNEL,)
_FIRST_YEAR, _LAST_YEAR = 2000, 2999

_CHANNEL_LABELS = {channel: entry.label for channel, entry in CHANNELS.items()}
_CHANNEL_COLOURS = {channel: entry.colour for channel, entry in CHANNELS.items()}
_OTHER_COLOUR = "#888888"
_GROUP_LABELS = {
    Grouping.CHANNEL: "Channel",
    Grouping.PROVIDER: "Provider",
    Grouping.CLIENT: "Calling service",
    Grouping.TEMPLATE: "Template",
    Grouping.DAY: "Day (UTC)",
}
_COLUMNS = (
    ("notifications", "Notifications", False),
    ("attempts", "Attempts", False),
    ("delivered", "Delivered", False),
    ("billed_units", "Billed units", False),
    ("total_cost", "Cost", True),
    ("cost_per_delivered", "Cost per delivered", True),
    ("fallback_spend", "Fallback spend", True),
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class BadReportParams(ValueError):
    """A query parameter the page cannot read; the message is for the person who sent it."""


@dataclass(frozen=True, slots=True)
class ReportParams:
    """The period (UTC days, both inclusive) and the grouping asked for."""

    first_day: date
    last_day: date
    group_by: tuple[Grouping, ...]

    def query(self) -> CostReportQuery:
        return CostReportQuery(
            start=day_start(self.first_day),
            end=day_start(self.last_day + timedelta(days=1)),
            group_by=self.group_by,
        )

    def query_string(self) -> str:
        pairs = [("from", self.first_day.isoformat()), ("to", self.last_day.isoformat())]
        return urlencode(pairs + [("group", g.value) for g in self.group_by])


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "…")


def _one(query: MultiMapping[str], name: str) -> str | None:
    values = [v.strip() for v in query.getall(name, [])]
    if len(values) > 1:
        raise BadReportParams(f"'{name}' was given {len(values)} times; give it once")
    return values[0] if values and values[0] else None


def _day(value: str, name: str) -> date:
    try:
        day = date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        day = None
    if day is None:
        raise BadReportParams(f"'{name}' takes a day like 2026-11-01; got {_shown(value)}")
    if not _FIRST_YEAR <= day.year <= _LAST_YEAR:
        raise BadReportParams(f"'{name}' must be a day between {_FIRST_YEAR} and {_LAST_YEAR}")
    return day


def params_from_query(query: MultiMapping[str], today: date) -> ReportParams:
    """Read ``from``, ``to`` and ``group``; raise :class:`BadReportParams` saying what is wrong."""
    if not query:
        return ReportParams(today - timedelta(days=DEFAULT_DAYS - 1), today, DEFAULT_GROUPING)
    raw_to, raw_from = _one(query, "to"), _one(query, "from")
    last = _day(raw_to, "to") if raw_to else today
    first = _day(raw_from, "from") if raw_from else last - timedelta(days=DEFAULT_DAYS - 1)
    if last < first:
        raise BadReportParams(f"'to' ({last}) is before 'from' ({first})")
    if (last - first).days + 1 > MAX_DAYS:
        raise BadReportParams(f"a report covers at most {MAX_DAYS} days; asked for {(last - first).days + 1}")
    groups: list[Grouping] = []
    for raw in query.getall("group", []):
        for name in filter(None, (part.strip() for part in raw.split(","))):
            try:
                grouping = Grouping(name)
            except ValueError:
                known = ", ".join(g.value for g in Grouping)
                raise BadReportParams(f"unknown grouping {_shown(name)}; choose from {known}") from None
            if grouping not in groups:
                groups.append(grouping)
    return ReportParams(first, last, tuple(groups))


def money(amount: Decimal) -> str:
    """Two decimals, a dot, thin spaces between thousands: for reading, not for parsing."""
    return f"{amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_EVEN):,f}".replace(",", "\u202f")


def _channel_label(value: str) -> str:
    try:
        return _CHANNEL_LABELS[Channel(value)]
    except ValueError:
        return value


def _channel_order(value: str) -> tuple[int, str]:
    order = list(Channel)
    try:
        return order.index(Channel(value)), value
    except ValueError:
        return len(order), value


def _nice_step(maximum: Decimal, ticks: int = 4) -> Decimal:
    """A step of 1, 2 or 5 times a power of ten that splits ``maximum`` into about ``ticks`` parts."""
    if maximum <= 0:
        return Decimal(1)
    raw = maximum / ticks
    base = Decimal(1).scaleb(raw.adjusted())
    for factor in (1, 2, 5):
        if base * factor >= raw:
            return base * factor
    return base * 10


def _px(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.1'), rounding=ROUND_HALF_EVEN):f}"


@dataclass(frozen=True, slots=True)
class Bar:
    channel: str
    label: str
    colour: str
    cost: Decimal
    x: str
    y: str
    width: str
    height: str


@dataclass(frozen=True, slots=True)
class DayGroup:
    day: str
    label: str
    label_x: str
    bars: tuple[Bar, ...]


@dataclass(frozen=True, slots=True)
class Chart:
    width: str
    height: str
    plot_top: str
    plot_bottom: str
    plot_left: str
    plot_right: str
    label_y: str
    ticks: tuple[tuple[str, str], ...]  # (y, amount)
    days: tuple[DayGroup, ...]
    legend: tuple[tuple[str, str, str], ...]  # (channel, label, colour)


def build_chart(rows: Sequence[CostReportRow], first_day: date, last_day: date) -> Chart:
    """Grouped bars: one group per day with traffic, one bar per channel used that day.

    The x axis spans every day of the period, so quiet days show as gaps.
    """
    channels = sorted({r.group["channel"] for r in rows}, key=_channel_order)
    by_day: dict[str, list[CostReportRow]] = {}
    for row in rows:
        by_day.setdefault(row.group["day"], []).append(row)
    period_days = (last_day - first_day).days + 1
    bar = Decimal(16) if period_days <= 31 else Decimal(5)
    slot = bar * max(len(channels), 1) + Decimal(10)
    left, top, plot_height = Decimal(72), Decimal(16), Decimal(220)
    plot_width = max(slot * period_days, Decimal(480))
    slot = plot_width / period_days
    bottom = top + plot_height
    maximum = max((r.total_cost for r in rows), default=Decimal(0))
    step = _nice_step(maximum)
    axis_max = step * (maximum / step).to_integral_value(rounding=ROUND_CEILING) if maximum > 0 else step
    ticks = tuple(
        (_px(bottom - plot_height * step * i / axis_max), money(step * i))
        for i in range(int(axis_max / step) + 1)
    )
    label_every = max(1, period_days // 16)
    groups = []
    for day, day_rows in sorted(by_day.items()):
        index = (date.fromisoformat(day) - first_day).days
        ordered = sorted(day_rows, key=lambda r: _channel_order(r.group["channel"]))
        start_x = left + slot * index + (slot - bar * len(ordered)) / 2
        bars = []
        for position, row in enumerate(ordered):
            height = plot_height * row.total_cost / axis_max
            channel = row.group["channel"]
            known = channel in {c.value for c in Channel}
            bars.append(
                Bar(
                    channel=channel,
                    label=_channel_label(channel),
                    colour=_CHANNEL_COLOURS[Channel(channel)] if known else _OTHER_COLOUR,
                    cost=row.total_cost,
                    x=_px(start_x + bar * position),
                    y=_px(bottom - height),
                    width=_px(bar - Decimal(1)),
                    height=_px(height),
                )
            )
        shown = index % label_every == 0 or len(by_day) <= 16
        groups.append(
            DayGroup(day, day[5:] if shown else "", _px(left + slot * index + slot / 2), tuple(bars))
        )
    legend = tuple(
        (
            c,
            _channel_label(c),
            _CHANNEL_COLOURS[Channel(c)] if c in {k.value for k in Channel} else _OTHER_COLOUR,
        )
        for c in channels
    )
    return Chart(
        width=_px(left + plot_width + 16),
        height=_px(bottom + 40),
        plot_top=_px(top),
        plot_bottom=_px(bottom),
        plot_left=_px(left),
        plot_right=_px(left + plot_width),
        label_y=_px(bottom + 18),
        ticks=ticks,
        days=tuple(groups),
        legend=legend,
    )


def _cells(row: CostReportRow) -> list[tuple[str, str, str, bool]]:
    """(column, shown text, exact value, is money) for each figure of a row."""
    cells = []
    for name, _label, is_money in _COLUMNS:
        value = getattr(row, name)
        cells.append(
            (name, money(value) if is_money else f"{value:,}".replace(",", "\u202f"), str(value), is_money)
        )
    return cells


def _group_cell(grouping: Grouping, value: str) -> str:
    return _channel_label(value) if grouping is Grouping.CHANNEL else value


Authenticate = Callable[[str], Awaitable[Caller]]
"""An API key to its calling service, or :class:`~gateway.core.errors.Unauthenticated`."""

_SIGN_IN = {"WWW-Authenticate": 'Basic realm="Kaskad cost report", charset="UTF-8"'}


def key_from_header(header: str) -> str | None:
    """The API key in ``Basic`` (the password) or ``Bearer`` credentials, or None."""
    scheme, _, credentials = header.strip().partition(" ")
    match scheme.lower():
        case "bearer":
            return credentials.strip() or None
        case "basic":
            try:
                decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return None
            _, colon, password = decoded.partition(":")
            return password if colon and password else None
    return None


class ReportPage:
    """The handlers of ``/reports/costs`` and ``/reports/costs.csv`` over one ledger."""

    def __init__(self, ledger: CostLedger, clock: Clock, authenticate: Authenticate) -> None:
        self._ledger = ledger
        self._clock = clock
        self._authenticate = authenticate
        env = jinja2.Environment(
            loader=jinja2.PackageLoader("gateway.api"),  # gateway/api/templates/
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=False,
        )
        env.globals.update(money=money, cells=_cells, group_cell=_group_cell)
        self._template = env.get_template("cost_report.html")

    def register(self, app: web.Application) -> None:
        app.router.add_get(PAGE_PATH, self.page)
        app.router.add_get(CSV_PATH, self.csv)

    def _form(self, query: MultiMapping[str], params: ReportParams | None) -> dict[str, Any]:
        if params is not None:
            chosen: Iterable[str] = [g.value for g in params.group_by]
            first, last = params.first_day.isoformat(), params.last_day.isoformat()
        else:  # echo what was sent (escaped), so the person can correct it
            chosen = [p.strip() for raw in query.getall("group", []) for p in raw.split(",")]
            first, last = query.get("from", ""), query.get("to", "")
        picked = set(chosen)
        return {
            "from_": first,
            "to": last,
            "groups": [(g.value, _GROUP_LABELS[g], g.value in picked) for g in Grouping],
        }

    def _html(self, status: int, context: Mapping[str, Any]) -> web.Response:
        body = self._template.render(
            currency=self._ledger_currency(context),
            group_labels=_GROUP_LABELS,
            columns=_COLUMNS,
            **context,
        )
        return web.Response(
            text=body, status=status, content_type="text/html", charset="utf-8", headers=_SECURITY_HEADERS
        )

    @staticmethod
    def _ledger_currency(context: Mapping[str, Any]) -> str:
        report = context.get("report")
        return report.currency if isinstance(report, CostReport) else ""

    def _bad(self, request: web.Request, message: str) -> web.Response:
        return self._html(400, {"error": message, "form": self._form(request.query, None)})

    async def _caller(self, request: web.Request) -> Caller:
        """The calling service behind the request's credentials; a 401 asking for them if none."""
        key = key_from_header(request.headers.get("Authorization", ""))
        try:
            if key is None:
                raise Unauthenticated("no API key")
            return await self._authenticate(key)
        except Unauthenticated:
            raise web.HTTPUnauthorized(
                text="The cost report needs an API key: any user name, the key as the password.\n",
                headers={**_SECURITY_HEADERS, **_SIGN_IN},
            ) from None

    async def page(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        try:
            params = params_from_query(request.query, self._clock.now().date())
            report = await self._ledger.report(params.query().for_caller(caller))
            # The chart: the same query (period, the caller's scope) by day and channel.
            per_day = await self._ledger.report(
                replace(report.query, group_by=(Grouping.DAY, Grouping.CHANNEL))
            )
        except BadReportParams as exc:
            return self._bad(request, str(exc))
        chart = build_chart(per_day.rows, params.first_day, params.last_day)
        return self._html(
            200,
            {
                "error": None,
                "form": self._form(request.query, params),
                "report": report,
                "groups": list(params.group_by),
                "chart": chart,
                "query_string": params.query_string(),
            },
        )

    async def csv(self, request: web.Request) -> web.Response:
        caller = await self._caller(request)
        try:
            params = params_from_query(request.query, self._clock.now().date())
        except BadReportParams as exc:
            return self._bad(request, str(exc))
        report = await self._ledger.report(params.query().for_caller(caller))
        filename = f"kaskad-costs-{params.first_day.isoformat()}-to-{params.last_day.isoformat()}.csv"
        return web.Response(
            body=to_csv(report).encode("utf-8"),
            content_type="text/csv",
            charset="utf-8",
            headers={
                **_SECURITY_HEADERS,
                "Content-Disposition": f'attachment; filename="{filename}"',
            },
        )
