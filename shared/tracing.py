"""OpenTelemetry traces: one event's path from ingest to the SMS send, off by default.

Each service holds one ``Tracing``: its own tracer provider (no global one, so
the four services can share a process in tests and ``churnwatch up``), built
from the ``OTEL_*`` settings (``shared.settings``). Off (``OTEL_TRACES_EXPORTER=none``,
the default) it is a no-op tracer: no provider, no exporter, no thread, and the
hooks skip their work on one ``enabled`` check per batch or request.

On, the trace of one event is:

- ingest: the HTTP request's server span (opentelemetry-instrumentation-fastapi)
  and a ``send <events topic>`` producer span, whose W3C ``traceparent`` goes in
  the Kafka headers of every record the request produced;
- every consumer (``shared.consumer.ConsumerLoop``): a ``process batch`` span per
  batch, and per record that carries a ``traceparent`` a ``process <topic>``
  span, child of the producer's context and linked to its batch span. Each
  event's trace stays one trace across services (what a backend shows as one
  waterfall), while the batch span holds the shared work and its size. The
  record's context is handed to the handler on ``Inbound.context``;
- scoring's ``RiskScore`` and alerting's tasks carry the context of the record
  that caused them in their own headers (``headers``);
- outreach keeps a task's ``traceparent`` in its row (``outreach.tasks.traceparent``)
  and the dispatcher's ``send sms`` span, minutes later maybe, is its child.

Traces are sampled with ``OTEL_TRACES_SAMPLER`` (parent-based by default, so
every service follows ingest's decision) and exported in batches over OTLP/HTTP
(``OTEL_EXPORTER_OTLP_ENDPOINT``). docs/operations.md, "Tracing".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, NoOpTracer, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

if TYPE_CHECKING:
    from aiokafka import ConsumerRecord
    from fastapi import FastAPI
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from shared.settings import BaseServiceSettings

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
"""The W3C Trace Context header (and the name of its Kafka record header)."""

_PROPAGATOR = TraceContextTextMapPropagator()
"""W3C Trace Context only, chosen here rather than by ``OTEL_PROPAGATORS``: Kafka
headers and the task rows carry ``traceparent`` (and ``tracestate``), nothing else."""

_NOT_TRACED = ("/healthz", "/readyz", "/livez", "/metrics")
"""Probes and scrapes: many per minute, nothing an operator traces."""


class Tracing:
    """One service's tracer: ``enabled`` only with an exporter configured (or given).

    ``exporter``: a span exporter to use instead of the configured one (tests
    pass opentelemetry's in-memory exporter); it gets every span as it ends.
    """

    def __init__(
        self,
        settings: BaseServiceSettings,
        *,
        service: str,
        exporter: SpanExporter | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self._exporter = exporter
        self._provider: TracerProvider | None = None
        self._started = False
        self.enabled = exporter is not None or settings.otel_traces_exporter != "none"
        self.tracer: Tracer = NoOpTracer()
        if self.enabled:
            # Imported only when on: the SDK is not loaded by a service that does not trace.
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider

            attributes: dict[str, Any] = {
                **settings.otel_resource_attributes_map(),
                "service.name": settings.otel_service_name or f"churnwatch-{service}",
                "service.namespace": "churnwatch",
                "deployment.environment.name": settings.environment,
            }
            # Resource(...) rather than Resource.create(): the latter reads OTEL_*
            # variables itself, and settings are read in one place.
            self._provider = TracerProvider(
                resource=Resource(attributes), sampler=_sampler(settings)
            )
            self.tracer = self._provider.get_tracer(f"churnwatch.{service}")

    @property
    def provider(self) -> TracerProvider | None:
        """The tracer provider (None when off)."""
        return self._provider

    def start(self) -> None:
        """Attach the exporter (from the lifespan): spans are exported from now on."""
        if self._provider is None or self._started:
            return
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        if self._exporter is not None:
            # A given exporter (tests): every span as it ends, nothing left in a queue.
            self._provider.add_span_processor(SimpleSpanProcessor(self._exporter))
        else:
            # Off the request path: a background thread exports in batches, and a
            # queue that is full (collector down) drops spans rather than blocking.
            self._provider.add_span_processor(BatchSpanProcessor(_exporter(self.settings)))
        self._started = True
        log.info(
            "tracing on",
            extra={"service": self.service, "exporter": self.settings.otel_traces_exporter},
        )

    def shutdown(self) -> None:
        """Export what is queued and stop the exporter (blocks up to the export timeout)."""
        if self._provider is not None and self._started:
            self._provider.shutdown()
            self._started = False

    async def aclose(self) -> None:
        """``shutdown`` off the event loop (end of the lifespan): the loop keeps serving."""
        if self._provider is not None and self._started:
            await asyncio.to_thread(self.shutdown)

    def instrument(self, app: FastAPI) -> None:
        """Server spans for the app's HTTP requests (probes and metrics excluded); off: nothing."""
        if self._provider is None:
            return
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(
            app,
            tracer_provider=self._provider,
            excluded_urls=",".join(_NOT_TRACED),
            # The ASGI receive/send spans are one per body chunk: noise in a waterfall.
            exclude_spans=["receive", "send"],
        )

    def batch(self, *, group: str, size: int) -> BatchTrace:
        """The spans of one consumed batch: call ``context_for`` per record, then ``end``."""
        return BatchTrace(
            self.tracer,
            group=group,
            size=size,
            follow_parent=self.settings.otel_traces_sampler.startswith("parentbased"),
        )

    def start_send(self, topic: str, *, count: int) -> Span:
        """A producer's span for sending ``count`` records to ``topic`` (child of the current)."""
        return self.tracer.start_span(
            f"send {topic}",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "send",
                "messaging.destination.name": topic,
                "messaging.batch.message_count": count,
            },
        )

    def start_child(
        self, name: str, traceparent: str | None, *, attributes: dict[str, Any] | None = None
    ) -> Span:
        """A client span (e.g. an SMS send) under a stored ``traceparent`` (a new trace without)."""
        parent = _PROPAGATOR.extract({TRACEPARENT: traceparent}) if traceparent else None
        return self.tracer.start_span(
            name, context=parent, kind=SpanKind.CLIENT, attributes=attributes
        )


class BatchTrace:
    """A consumed batch's span and its records' spans (``ConsumerLoop`` makes one per batch).

    A batch holds many events of many traces. Per record that carries a
    ``traceparent``, a ``process <topic>`` span is a child of its producer's
    context, so the event's trace goes on in this service, with a link to the
    batch's span; a record without one is handled under the batch's span, and
    one its producer did not sample goes on unsampled, without a span. All
    of them last as long as the batch (its transaction and acks): that is when
    each record's effects became durable.
    """

    def __init__(
        self, tracer: Tracer, *, group: str, size: int, follow_parent: bool = True
    ) -> None:
        """``follow_parent``: the sampler is parent-based (an unsampled record gets no span)."""
        self.tracer = tracer
        self.follow_parent = follow_parent
        self.span = tracer.start_span(
            "process batch",
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": group,
                "messaging.batch.message_count": size,
            },
        )
        self.context = trace.set_span_in_context(self.span)
        self._link = [Link(self.span.get_span_context())]
        self._records: list[Span] = []

    def context_for(self, record: ConsumerRecord[bytes, bytes]) -> Context:
        """The context the handler uses for ``record`` (to inject into what it causes)."""
        parent = extract(record.headers)
        if parent is None:
            return self.context
        if (
            self.follow_parent
            and not trace.get_current_span(parent).get_span_context().trace_flags.sampled
        ):
            # Not sampled upstream, so not here either: skip the (non-recording) span
            # and pass the context on as it came (a fifth of the cost per record).
            return parent
        span = self.tracer.start_span(
            f"process {record.topic}",
            context=parent,
            kind=SpanKind.CONSUMER,
            links=self._link,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": record.topic,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": record.offset,
            },
        )
        self._records.append(span)
        return trace.set_span_in_context(span)

    def end(self, error: BaseException | None = None) -> None:
        """End every span; ``error``: the batch failed (it will be redelivered)."""
        if error is not None:
            self.span.record_exception(error)
        for span in (*self._records, self.span):
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            span.end()


def context_of(span: Span) -> Context:
    """A context whose current span is ``span`` (to inject, or to hand to a handler)."""
    return trace.set_span_in_context(span)


def headers(context: Context | None) -> list[tuple[str, bytes]]:
    """Kafka record headers carrying ``context`` (empty for None or an invalid span)."""
    if context is None:
        return []
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context)
    return [(name, value.encode()) for name, value in carrier.items()]


def traceparent(context: Context | None) -> str | None:
    """The ``traceparent`` value of ``context`` (to store in a row), None without one."""
    if context is None:
        return None
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context)
    return carrier.get(TRACEPARENT)


def extract(record_headers: Iterable[tuple[str, bytes]] | None) -> Context | None:
    """The remote context in Kafka record headers; None if they carry no valid ``traceparent``."""
    carrier = {
        name: bytes(value).decode("latin-1")
        for name, value in record_headers or ()
        if name in (TRACEPARENT, "tracestate")
    }
    if TRACEPARENT not in carrier:
        return None
    context = _PROPAGATOR.extract(carrier)
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None  # a malformed header: traced as if it had none
    return context


def _sampler(settings: BaseServiceSettings) -> Any:
    from opentelemetry.sdk.trace import sampling

    ratio = settings.otel_traces_sampler_arg
    return {
        "always_on": sampling.ALWAYS_ON,
        "always_off": sampling.ALWAYS_OFF,
        "traceidratio": sampling.TraceIdRatioBased(ratio),
        "parentbased_always_on": sampling.ParentBased(sampling.ALWAYS_ON),
        "parentbased_always_off": sampling.ParentBased(sampling.ALWAYS_OFF),
        "parentbased_traceidratio": sampling.ParentBased(sampling.TraceIdRatioBased(ratio)),
    }[settings.otel_traces_sampler]


def _exporter(settings: BaseServiceSettings) -> SpanExporter:
    if settings.otel_traces_exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(service_name=settings.otel_service_name)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(
        endpoint=settings.otlp_traces_endpoint(),
        headers=settings.otlp_headers(),
        timeout=settings.otel_exporter_otlp_timeout / 1000,
    )
