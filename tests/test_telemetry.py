"""Metrics and traces, and personal data kept out of every output.

A canary phone number goes through every path (delivered, unreachable, every error
class, a forged callback); the test then searches the logs, the spans, the metrics and
every error message for it, in full and as bare digits.
"""

from __future__ import annotations

import json
import logging
import re
from decimal import Decimal

import aiohttp
import grpc
import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from kaskad.v1 import common_pb2, notification_pb2
from tests.cascade_harness import Cascade, phone_where


def _metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample_labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def _metrics(cascade: Cascade) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{cascade.app.http_port}/metrics") as response,
    ):
        assert response.status == 200
        return await response.text()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def test_canary_phone_appears_in_no_log_span_metric_or_error(
    start_cascade, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture, db
) -> None:
    caplog.set_level(logging.DEBUG)
    cascade = await start_cascade(span_processors=[SimpleSpanProcessor(spans)])
    reachable = phone_where(lambda p: p.on_vk, skip=3)
    unreachable = phone_where(lambda p: lambda ph: not p.on_vk(ph) and not p.on_viber(ph), skip=3)
    errors: list[str] = []

    async def expect_error(**fields: object) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await cascade.send(**fields)  # type: ignore[arg-type]
        errors.append(f"{caught.value.code()} {caught.value.details()} {caught.value.trailing_metadata()}")

    for canary in (reachable, unreachable):
        done = await cascade.wait_final((await cascade.send(canary)).notification_id)
        errors.append(str(done))  # GetNotification shows the recipient masked
        await expect_error(phone=canary, text="")  # INVALID_ARGUMENT
        await expect_error(phone=canary + "0")  # an invalid number next to the canary
        sent = await cascade.send(canary, idempotency_key=f"same-key-{canary[-4:]}")
        assert sent.notification_id
        await expect_error(
            phone=canary, idempotency_key=f"same-key-{canary[-4:]}", text="other"
        )  # ALREADY_EXISTS
        saved = cascade.auth
        cascade.auth = [("authorization", "Bearer ksk_wrong")]
        await expect_error(phone=canary)  # UNAUTHENTICATED
        cascade.auth = saved
        async with aiohttp.ClientSession() as http:  # a forged callback carrying the number
            body = json.dumps({"event": "failed", "message_token": 1, "user_id": canary}).encode()
            async with http.post(f"http://127.0.0.1:{cascade.app.http_port}/callbacks/viber", data=body) as r:
                assert r.status == 401
    await cascade.settle()
    metrics = await _metrics(cascade)

    exported = [
        json.dumps(
            {"name": s.name, "attributes": dict(s.attributes or {}), "events": [e.name for e in s.events]},
            default=str,
        )
        for s in spans.get_finished_spans()
    ]
    for canary in (reachable, unreachable):
        for form in (canary, canary.removeprefix("+")):
            assert form not in caplog.text, "a log line carries the phone"
            assert not [e for e in errors if form in e], "an error message or response carries the phone"
            assert form not in metrics, "a metric label carries the phone"
            assert not [s for s in exported if form in s], "a span carries the phone"
    assert any('"kaskad.provider_submit"' in s for s in exported)


async def test_metrics_match_the_ledger_and_one_trace_spans_the_cascade(
    start_cascade, spans: InMemorySpanExporter, db
) -> None:
    cascade = await start_cascade(span_processors=[SimpleSpanProcessor(spans)])
    ids = []
    for skip in range(6):
        phone = phone_where(lambda p: lambda ph: not p.on_vk(ph), skip=skip)
        ids.append((await cascade.send(phone)).notification_id)
    for notification_id in ids:
        await cascade.wait_final(notification_id)
    await cascade.settle()
    text = await _metrics(cascade)

    ledger = await db.fetch(
        "SELECT channel, provider, sum(amount) AS amount FROM kaskad_ledger GROUP BY 1, 2"
    )
    assert ledger
    for row in ledger:
        kopecks = _metric(
            text, "kaskad_cost_minor_units_total", channel=row["channel"], provider=row["provider"]
        )
        assert Decimal(int(kopecks)) == row["amount"] * 100
    assert _metric(text, "kaskad_notifications_accepted_total") == len(ids)
    finished = await db.fetchval(
        "SELECT count(*) FROM kaskad_notifications WHERE state NOT IN ('accepted', 'in_progress')"
    )
    assert _metric(text, "kaskad_notifications_finished_total") == finished == len(ids)
    vk_unreachable = await db.fetchval(
        "SELECT count(*) FROM kaskad_attempts WHERE channel = 'vk' AND outcome = 'unreachable'"
    )
    assert (
        _metric(text, "kaskad_attempts_total", channel="vk", outcome="unreachable")
        == vk_unreachable
        == len(ids)
    )
    assert _metric(text, "kaskad_provider_submit_seconds_count", provider="vk") == len(ids)
    assert _metric(text, "kaskad_provider_breaker_state", provider="sms") == 0
    assert "kaskad_work_queue_due" in text and "kaskad_time_to_delivery_seconds_bucket" in text

    # One trace per notification: accept, plan, every provider call, the report that closed it.
    finished_spans = spans.get_finished_spans()
    accept = next(
        s
        for s in finished_spans
        if s.name == "kaskad.accept" and s.attributes["kaskad.notification_id"] == ids[0]
    )
    trace_id = accept.context.trace_id
    names = [s.name for s in finished_spans if s.context.trace_id == trace_id]
    assert "kaskad.plan" in names
    assert names.count("kaskad.provider_submit") >= 2  # VK refused the person, then Viber or SMS
    assert "kaskad.delivery_report" in names
    submits = [
        s for s in finished_spans if s.context.trace_id == trace_id and s.name == "kaskad.provider_submit"
    ]
    assert {s.attributes["channel"] for s in submits} >= {"vk"}
    assert common_pb2.CHANNEL_VK and notification_pb2  # the contract's names are what spans carry
