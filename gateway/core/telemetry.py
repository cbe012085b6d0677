"""Metrics and traces through the OpenTelemetry SDK.

Metrics are served in the Prometheus text format on the HTTP port's ``/metrics`` (one
registry per app, not the process-wide default) and, when ``KASKAD_OTLP_ENDPOINT`` is
set, pushed over OTLP/HTTP too. Traces go over OTLP when configured and nowhere by
default. One notification is one trace: its trace context is stored with it at accept,
and every later span (each provider call, the callback that closed it) joins that trace.

Labels and span attributes never carry a phone number or an id of a person: channel,
provider, outcome, state and the calling service's name only. Notification ids appear
on spans (not on metrics), as they identify a message, not a person.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CollectorRegistry, generate_latest

_PROPAGATOR = TraceContextTextMapPropagator()


def _parent(traceparent: str | None) -> otel_context.Context | None:
    """The context a notification's stored ``traceparent`` names, if it has one."""
    return _PROPAGATOR.extract({"traceparent": traceparent}) if traceparent else None


_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
)


class BreakerGauge(enum.IntEnum):
    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


@dataclass(frozen=True, slots=True)
class QueueSnapshot:
    due: int
    oldest_due_age: timedelta | None


class Telemetry:
    """Every instrument Kaskad records, behind methods named for what happened."""

    def __init__(
        self,
        service_name: str = "kaskad",
        otlp_endpoint: str | None = None,
        span_processors: Iterable[SpanProcessor] = (),
    ) -> None:
        resource = Resource.create({"service.name": service_name})
        self.registry = CollectorRegistry(auto_describe=True)
        readers: list[MetricReader] = [PrometheusMetricReader(registry=self.registry)]
        self._tracer_provider = TracerProvider(resource=resource)
        if otlp_endpoint:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            base = otlp_endpoint.rstrip("/")
            readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(endpoint=f"{base}/v1/metrics")))
            self._tracer_provider.add_span_processor(
                BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{base}/v1/traces"))
            )
        processors = list(span_processors)
        for processor in processors:
            self._tracer_provider.add_span_processor(processor)
        self._meter_provider = MeterProvider(resource=resource, metric_readers=readers)
        # With nowhere to send spans, don't build them: the accept path is hot.
        self._tracing = bool(otlp_endpoint or processors)
        self.tracer: trace.Tracer = (
            self._tracer_provider.get_tracer("kaskad") if self._tracing else trace.NoOpTracer()
        )
        meter = self._meter_provider.get_meter("kaskad")

        # Counted in a plain int and observed at collection: Counter.add on every accept
        # cost more than the rest of the accept's bookkeeping.
        self._accepted_count = 0
        meter.create_observable_counter(
            "kaskad_notifications_accepted",
            callbacks=[self._observe_accepted],
            description="Notifications accepted",
        )
        self._finished = meter.create_counter(
            "kaskad_notifications_finished", description="Notifications that reached a final state, by state"
        )
        self._attempts = meter.create_counter(
            "kaskad_attempts", description="Attempt outcomes by channel, provider and outcome"
        )
        self._cost = meter.create_counter(
            "kaskad_cost_minor_units",
            description="Billed cost in minor units (kopecks), by channel and provider",
        )
        self._cost_credits = meter.create_counter(
            "kaskad_cost_credited_minor_units",
            description="Billed cost later reported lower by the provider, in minor units; "
            "cost_minor_units minus this equals the ledger",
        )
        self._to_delivery = meter.create_histogram(
            "kaskad_time_to_delivery_seconds",
            unit="s",
            description="From accept to the delivery report",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._to_read = meter.create_histogram(
            "kaskad_time_to_read_seconds",
            unit="s",
            description="From accept to the read report (or answered call)",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._depth = meter.create_histogram(
            "kaskad_cascade_depth",
            description="Attempts a finished notification took",
            explicit_bucket_boundaries_advisory=(1, 2, 3, 4, 5, 6, 8),
        )
        self._submit_latency = meter.create_histogram(
            "kaskad_provider_submit_seconds",
            unit="s",
            description="Provider submit latency, retries included",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._retries = meter.create_counter(
            "kaskad_provider_retries", description="Submits retried after a transient failure"
        )
        self._breaker_sources: list[Callable[[], Mapping[str, BreakerGauge]]] = []
        self._queue_sources: list[Callable[[], QueueSnapshot]] = []
        meter.create_observable_gauge(
            "kaskad_provider_breaker_state",
            callbacks=[self._observe_breakers],
            description="Circuit breaker per provider: 0 closed, 1 half-open, 2 open",
        )
        meter.create_observable_gauge(
            "kaskad_work_queue_due", callbacks=[self._observe_queue_due], description="Work items due now"
        )
        meter.create_observable_gauge(
            "kaskad_work_queue_oldest_due_age_seconds",
            unit="s",
            callbacks=[self._observe_queue_age],
            description="How long the oldest due work item has waited",
        )

    # -- sources for gauges -------------------------------------------------------------------

    def watch_breakers(self, source: Callable[[], Mapping[str, BreakerGauge]]) -> None:
        self._breaker_sources.append(source)

    def watch_queue(self, source: Callable[[], QueueSnapshot]) -> None:
        self._queue_sources.append(source)

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        for source in self._breaker_sources:
            for provider, state in source().items():
                yield Observation(int(state), {"provider": provider})

    def _observe_queue_due(self, options: CallbackOptions) -> Iterable[Observation]:
        for source in self._queue_sources:
            yield Observation(source().due)

    def _observe_queue_age(self, options: CallbackOptions) -> Iterable[Observation]:
        for source in self._queue_sources:
            age = source().oldest_due_age
            yield Observation(0.0 if age is None else age.total_seconds())

    # -- what happened ------------------------------------------------------------------------

    def accepted(self) -> None:
        self._accepted_count += 1

    def _observe_accepted(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(self._accepted_count)

    def finished(self, state: str, depth: int, to_reach: timedelta | None, read: bool) -> None:
        self._finished.add(1, {"state": state})
        self._depth.record(depth)
        if to_reach is not None:
            (self._to_read if read else self._to_delivery).record(max(to_reach.total_seconds(), 0.0))

    def attempt(self, channel: str, provider: str, outcome: str) -> None:
        self._attempts.add(1, {"channel": channel, "provider": provider, "outcome": outcome})

    def billed(self, channel: str, provider: str, amount: Decimal) -> None:
        # Counters take numbers; minor units keep the sum exact as an integer.
        self._cost.add(int((amount * 100).to_integral_value()), {"channel": channel, "provider": provider})

    def repriced(self, channel: str, provider: str, before: Decimal, after: Decimal) -> None:
        """A booked amount replaced by the provider's own; counters only grow, so a lower
        price is counted as a credit."""
        labels = {"channel": channel, "provider": provider}
        delta = int(((after - before) * 100).to_integral_value())
        if delta > 0:
            self._cost.add(delta, labels)
        elif delta < 0:
            self._cost_credits.add(-delta, labels)

    def submitted(self, provider: str, seconds: float) -> None:
        self._submit_latency.record(seconds, {"provider": provider})

    def retried(self, provider: str) -> None:
        self._retries.add(1, {"provider": provider})

    # -- traces -------------------------------------------------------------------------------

    def inject(self) -> str | None:
        """The current trace context as a ``traceparent`` string, to store with a notification."""
        if not self._tracing:
            return None
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier)
        return carrier.get("traceparent")

    @contextmanager
    def span(
        self,
        name: str,
        traceparent: str | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        **attributes: Any,
    ) -> Iterator[Span]:
        """A span, joined to the notification's trace when its ``traceparent`` is given."""
        if not self._tracing:
            yield trace.INVALID_SPAN  # what the no-op tracer would hand out, without its context switch
            return
        parent = _parent(traceparent)
        token = otel_context.attach(parent) if parent is not None else None
        try:
            # Exception messages stay off spans: only the type is recorded, never the text.
            with self.tracer.start_as_current_span(
                name, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False
            ) as span:
                try:
                    yield span
                except Exception as exc:
                    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                    raise
        finally:
            if token is not None:
                otel_context.detach(token)

    def record_span(
        self, name: str, traceparent: str | None, start_ns: int, end_ns: int, **attributes: Any
    ) -> None:
        """A span for work already done, such as one of many reports applied in one batch
        transaction (it spans that transaction), joined to the notification's trace."""
        span = self.tracer.start_span(
            name, context=_parent(traceparent), attributes=attributes, start_time=start_ns
        )
        span.end(end_time=end_ns)

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)

    def shutdown(self) -> None:
        self._meter_provider.shutdown()
        self._tracer_provider.shutdown()


def current_span() -> Span:
    return trace.get_current_span()
