"""A cost report for people and spreadsheets: a terminal table, CSV for Excel, JSON for scripts.

CSV opens correctly in Excel: UTF-8 with a byte order mark, one header row, amounts as
plain decimal numbers (a dot, no thousands separator, no currency sign).
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal
from typing import Any

from gateway.store.ledger import CostReport, CostReportRow

BOM = "\ufeff"
_COLUMNS = (
    "notifications",
    "attempts",
    "delivered",
    "billed_units",
    "total_cost",
    "cost_per_delivered",
    "fallback_spend",
    "price_book_cost",
)


def _money(amount: Decimal) -> str:
    return f"{amount.quantize(Decimal('0.01')):f}"


def _values(row: CostReportRow) -> list[str]:
    return [
        str(row.notifications),
        str(row.attempts),
        str(row.delivered),
        str(row.billed_units),
        _money(row.total_cost),
        _money(row.cost_per_delivered),
        _money(row.fallback_spend),
        _money(row.price_book_cost),
    ]


def _group_names(report: CostReport) -> list[str]:
    return [g.value for g in report.query.group_by]


def to_csv(report: CostReport) -> str:
    """The rows and a TOTAL row; begins with a BOM so Excel reads UTF-8."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    groups = _group_names(report)
    writer.writerow([*groups, *_COLUMNS, "currency"])
    for row in report.rows:
        writer.writerow([*(row.group[g] for g in groups), *_values(row), report.currency])
    writer.writerow(
        [*(["TOTAL"] + [""] * (len(groups) - 1) if groups else []), *_values(report.total), report.currency]
    )
    return BOM + out.getvalue()


def to_json(report: CostReport) -> str:
    def row(r: CostReportRow) -> dict[str, Any]:
        return {"group": r.group, **dict(zip(_COLUMNS, _values(r), strict=True))}

    return json.dumps(
        {
            "start": report.query.start.isoformat(),
            "end": report.query.end.isoformat(),
            "currency": report.currency,
            "group_by": _group_names(report),
            "rows": [row(r) for r in report.rows],
            "total": row(report.total),
            "sms_only_baseline": _money(report.sms_only_baseline),
            "saving": _money(report.saving),
            "saving_percent": f"{report.saving_percent:f}",
        },
        ensure_ascii=False,
        indent=2,
    )


def to_table(report: CostReport) -> str:
    groups = _group_names(report)
    header = [*groups, *_COLUMNS]
    body = [[*(r.group[g] for g in groups), *_values(r)] for r in report.rows]
    total = [*(["TOTAL"] + [""] * (len(groups) - 1) if groups else []), *_values(report.total)]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *body, total, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i < len(groups) else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    lines = [
        f"Cost report {report.query.start:%Y-%m-%d %H:%M} to {report.query.end:%Y-%m-%d %H:%M} UTC, "
        f"amounts in {report.currency}",
        "",
        line(header),
        rule,
        *(line(r) for r in body),
        rule,
        line(total),
        "",
        f"SMS-only baseline for the delivered notifications: {_money(report.sms_only_baseline)}",
        f"Saving against SMS only: {_money(report.saving)} ({report.saving_percent}%)",
    ]
    return "\n".join(lines)
