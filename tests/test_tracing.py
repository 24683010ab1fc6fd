"""OpenTelemetry traces: one event's spans, from ingest's request to the SMS send, share a trace.

The four services run in this process (their real apps and lifespans: consumer
loops, the SMS dispatcher) on the session's broker and PostgreSQL, each with
opentelemetry's in-memory span exporter given to its app factory; the SMS
gateway stand-in is served over real HTTP. Tracing off (the default) is checked
on the records ingest writes: no ``traceparent`` header, no provider, no
instrumentation. The configured OTLP/HTTP export is checked against a receiver
that decodes opentelemetry-proto's messages, from ingest in this process and
from the four services as processes (tests/pipeline.py), configured by their
environment only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from fastapi import FastAPI, Request, Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracer, SpanKind

from bench import tracing as bench_tracing
from churnwatch.embedded import free_port
from churnwatch.gateway import Faults, GatewaySettings, create_gateway_app
from services.alerting.app import create_app as create_alerting
from services.alerting.rules import DEFAULT_RULES_FILE
from services.alerting.settings import AlertingSettings
from services.ingest.app import create_app as create_ingest
from services.ingest.settings import IngestSettings
from services.outreach.app import create_app as create_outreach
from services.outreach.settings import OutreachSettings
from services.scoring.app import create_app as create_scoring
from services.scoring.settings import ScoringSettings
from shared import tracing
from shared.kafka import topics_for
from shared.settings import BaseServiceSettings
from tests.conftest import Stack
from tests.helpers import eventually, profile, serve, sid, stop_notice
from tests.pipeline import post_events, run_pipeline, sms_to

pytestmark = pytest.mark.asyncio(loop_scope="session")

TOKEN = "tracing-test-token"
SECRET = "tracing-test-receipt-secret"
SERVICES = ("ingest", "scoring", "alerting", "outreach")


@dataclass
class Traced:
    """The four apps, started, with their exporters; the gateway's state."""

    apps: dict[str, FastAPI]
    spans: dict[str, InMemorySpanExporter]
    gateway: Any  # churnwatch.gateway.GatewayState
    events_topic: str

    def finished(self, service: str) -> tuple[ReadableSpan, ...]:
        return tuple(self.spans[service].get_finished_spans())


@contextlib.asynccontextmanager
async def started(app: FastAPI) -> AsyncIterator[None]:
    """Run ``app``'s lifespan (consumers, dispatcher) around the block."""
    async with app.router.lifespan_context(app):
        yield


@pytest.fixture
async def traced(env: dict[str, Any], tmp_path: Path) -> AsyncIterator[Traced]:
    gateway_port = free_port()
    gateway_app = create_gateway_app(
        GatewaySettings(
            sms_gateway_port=gateway_port,
            sms_gateway_token=TOKEN,
            sms_receipt_secret=SECRET,
            # Outreach's HTTP API is not served here: no receipts to post back.
            sms_gateway_faults=Faults(drop_receipts=True),
        )
    )
    rules = tmp_path / "rules.yaml"  # the default rules without their dwell times
    rules.write_text(
        DEFAULT_RULES_FILE.read_text()
        .replace("dwell: 30m", "dwell: 0s")
        .replace("dwell: 2h", "dwell: 0s")
    )
    spans = {name: InMemorySpanExporter() for name in SERVICES}
    apps = {
        "ingest": create_ingest(IngestSettings(**env), span_exporter=spans["ingest"]),
        "scoring": create_scoring(ScoringSettings(**env), span_exporter=spans["scoring"]),
        "alerting": create_alerting(
            AlertingSettings(**env, alerting_rules_file=str(rules)),
            span_exporter=spans["alerting"],
        ),
        "outreach": create_outreach(
            OutreachSettings(
                **env,
                sms_gateway_url=f"http://127.0.0.1:{gateway_port}",
                sms_gateway_token=TOKEN,
                sms_receipt_secret=SECRET,
                outreach_dispatch_interval_s=0.2,
            ),
            span_exporter=spans["outreach"],
        ),
    }
    server, serving = await serve(gateway_app, gateway_port)
    try:
        async with contextlib.AsyncExitStack() as stack:
            for app in apps.values():
                await stack.enter_async_context(started(app))
            yield Traced(
                apps,
                spans,
                gateway_app.state.gateway,
                topics_for(BaseServiceSettings(**env)).events,
            )
    finally:
        server.should_exit = True
        await serving
        await gateway_app.state.gateway.aclose()


def one(spans: tuple[ReadableSpan, ...], predicate: Callable[[ReadableSpan], bool]) -> ReadableSpan:
    found = [s for s in spans if predicate(s)]
    assert len(found) == 1, [(s.name, s.context.trace_id if s.context else None) for s in found]
    return found[0]


def parent_of(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


async def test_one_events_spans_share_a_trace_from_ingest_to_the_sms_send(
    traced: Traced,
) -> None:
    subscriber, phone = sid(), "+15550004321"
    notice = stop_notice(subscriber, amount="31.50")
    ingest = httpx.ASGITransport(app=traced.apps["ingest"])
    async with httpx.AsyncClient(transport=ingest, base_url="http://ingest") as client:
        response = await client.post(
            "/v1/events",
            json=[profile(subscriber, tier="gold", phone=phone, manager="AM-T"), notice],
        )
    assert response.status_code == 202, response.text

    async def sms_sent() -> list[Any]:
        return [m for m in traced.gateway.messages if m.to == phone]

    [sms] = await eventually(sms_sent, what="the reminder SMS at the gateway")
    task_id = sms.reference  # the dispatcher's idempotency key: the task id

    async def send_span() -> ReadableSpan | None:
        for span in traced.finished("outreach"):
            if span.name == "send sms" and span.attributes.get("churnwatch.task.id") == task_id:
                return span
        return None

    send = await eventually(send_span, what="outreach's send sms span")

    # ingest: the request's server span, and under it the produce to the events topic.
    ingest_spans = traced.finished("ingest")
    request = one(ingest_spans, lambda s: s.kind is SpanKind.SERVER and s.name == "POST /v1/events")
    produce = one(ingest_spans, lambda s: s.name == f"send {traced.events_topic}")
    trace_id = trace_of(request)
    assert trace_of(produce) == trace_id and parent_of(produce) == span_id(request)
    assert produce.kind is SpanKind.PRODUCER
    assert produce.attributes["messaging.batch.message_count"] == 2

    def mine(service: str, name: str) -> list[ReadableSpan]:
        return [
            s
            for s in traced.finished(service)
            if s.name == f"process {name}" and trace_of(s) == trace_id
        ]

    prefix = traced.events_topic.rsplit(".", 1)[0]
    # scoring: one span per record of the request, children of ingest's produce,
    # each linked to the span of the batch that held it.
    scored = mine("scoring", traced.events_topic)
    assert len(scored) == 2 and {parent_of(s) for s in scored} == {span_id(produce)}
    batches = {span_id(s): s for s in traced.finished("scoring") if s.name == "process batch"}
    for span in scored:
        assert span.kind is SpanKind.CONSUMER
        [link] = span.links
        assert link.context.span_id in batches

    # alerting: the two events (children of the produce) and the score scoring
    # published (child of scoring's span of the event that caused it).
    alerted = mine("alerting", traced.events_topic)
    assert len(alerted) == 2 and {parent_of(s) for s in alerted} == {span_id(produce)}
    [score] = mine("alerting", f"{prefix}.scores")
    assert parent_of(score) in {span_id(s) for s in scored}

    # outreach: the task (child of alerting's span of the stop-notice that fired
    # it), and the SMS send, later and from PostgreSQL, a child of that.
    tasks = mine("outreach", f"{prefix}.tasks")
    assert tasks, "outreach's span of the task"
    assert {parent_of(s) for s in tasks} <= {span_id(s) for s in alerted}
    assert trace_of(send) == trace_id
    assert parent_of(send) in {span_id(s) for s in tasks}
    assert send.kind is SpanKind.CLIENT
    assert send.attributes["churnwatch.sms.status"] == "sent"

    # Each service names itself, and no span carries the phone number.
    for service in SERVICES:
        [name] = {s.resource.attributes["service.name"] for s in traced.finished(service)}
        assert name == f"churnwatch-{service}"
        assert all(phone not in str(s.to_json()) for s in traced.finished(service))


async def test_tracing_is_off_by_default_no_spans_no_exporter(env: dict[str, Any]) -> None:
    settings = IngestSettings(**env)
    assert settings.otel_traces_exporter == "none"
    app = create_ingest(settings)
    off: tracing.Tracing = app.state.tracing
    assert not off.enabled and off.provider is None and isinstance(off.tracer, NoOpTracer)
    # No HTTP instrumentation either.
    assert [m.cls.__name__ for m in app.user_middleware if "Telemetry" in m.cls.__name__] == []
    subscriber = sid()
    async with started(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            response = await client.post("/v1/events", json=profile(subscriber))
        assert response.status_code == 202, response.text
    # The record ingest wrote carries its event type and nothing of a trace.
    consumer = AIOKafkaConsumer(
        topics_for(settings).events,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:

        async def record() -> Any:
            batch = await consumer.getmany(timeout_ms=500)
            return next((r for rs in batch.values() for r in rs), None)

        found = await eventually(record, what="ingest's record")
    finally:
        await consumer.stop()
    assert [name for name, _ in found.headers] == ["event_type"]


async def test_otel_settings_follow_the_standard_variable_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s%3Dcret,x-team=churn")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "k8s.pod.name=scoring-0,bad")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.25")
    settings = BaseServiceSettings()
    assert settings.otlp_traces_endpoint() == "http://collector:4318/v1/traces"
    assert settings.otlp_headers() == {"api-key": "s=cret", "x-team": "churn"}
    assert "s=cret" not in repr(settings)  # a secret: never in a log line
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://traces.example/v1/t")
    assert BaseServiceSettings().otlp_traces_endpoint() == "https://traces.example/v1/t"
    on = tracing.Tracing(settings, service="scoring")
    assert on.enabled and on.provider is not None
    assert on.provider.resource.attributes["k8s.pod.name"] == "scoring-0"
    assert on.provider.resource.attributes["service.name"] == "churnwatch-scoring"
    assert "0.25" in on.provider.sampler.get_description()


async def test_headers_round_trip_and_bad_ones_are_ignored() -> None:
    exporter = InMemorySpanExporter()
    on = tracing.Tracing(BaseServiceSettings(), service="t", exporter=exporter)
    on.start()
    try:
        span = on.start_send("topic", count=1)
        carried = tracing.headers(tracing.context_of(span))
        assert [name for name, _ in carried] == ["traceparent"]
        context = tracing.extract([("event_type", b"cdr"), *carried])
        assert context is not None
        parent = tracing.traceparent(context)
        assert parent is not None and f"{span.get_span_context().trace_id:032x}" in parent
        span.end()
    finally:
        on.shutdown()
    assert tracing.extract([("traceparent", b"00-not-a-trace-01")]) is None
    assert tracing.extract(None) is None and tracing.headers(None) == []
    assert [s.name for s in exporter.get_finished_spans()] == ["send topic"]


def _record(headers: list[tuple[str, bytes]]) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("t.events", 0, 7, 0, 0, b"k", b"v", None, 1, 1, headers)


async def test_a_batch_spans_its_sampled_records_and_passes_unsampled_ones_on() -> None:
    exporter = InMemorySpanExporter()
    on = tracing.Tracing(BaseServiceSettings(), service="t", exporter=exporter)
    on.start()
    sampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    unsampled = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-00"
    try:
        batch = on.batch(group="g", size=3)
        child = batch.context_for(_record([("traceparent", sampled.encode())]))
        passed = batch.context_for(_record([("traceparent", unsampled.encode())]))
        bare = batch.context_for(_record([("event_type", b"cdr")]))
        batch.end()
    finally:
        on.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"process batch", "process t.events"}  # one record span only
    record, whole = spans["process t.events"], spans["process batch"]
    assert record.parent is not None and record.parent.span_id == 0xB7AD6B7169203331
    assert [link.context.span_id for link in record.links] == [span_id(whole)]
    # (The flags: sampled, and the SDK's "random trace id" bit of Trace Context level 2.)
    assert str(tracing.traceparent(child)).startswith(
        f"00-{trace_of(record):032x}-{span_id(record):016x}-"
    )
    assert tracing.traceparent(passed) == unsampled  # goes on unsampled, as it came
    assert str(tracing.traceparent(bare)).startswith(
        f"00-{trace_of(whole):032x}-{span_id(whole):016x}-"
    )


async def test_the_overhead_benchmark_runs() -> None:
    figures = await bench_tracing.measure(records=50, rounds=2, repeat=1)
    assert len(figures) == 4 and all(value > 0 for value in figures.values())


def otlp_receiver(received: list[tuple[dict[str, str], ExportTraceServiceRequest]]) -> FastAPI:
    """An OTLP/HTTP traces receiver: decodes each export with opentelemetry-proto, keeps it."""
    receiver = FastAPI()

    @receiver.post("/v1/traces")
    async def traces(request: Request) -> Response:
        assert request.headers["content-type"] == "application/x-protobuf"
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        received.append((dict(request.headers), message))
        return Response(
            ExportTraceServiceResponse().SerializeToString(),
            media_type="application/x-protobuf",
        )

    return receiver


async def test_configured_otlp_export_reaches_an_otlp_http_receiver(env: dict[str, Any]) -> None:
    """Ingest with ``OTEL_TRACES_EXPORTER=otlp`` posts its spans as OTLP/HTTP protobuf.

    The receiver decodes with opentelemetry-proto's own messages (what a collector
    speaks); the spans arrive at shutdown at the latest (the lifespan flushes).
    """
    received: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []
    receiver = otlp_receiver(received)
    port = free_port()
    server, serving = await serve(receiver, port)
    try:
        settings = IngestSettings(
            **env,
            otel_traces_exporter="otlp",
            otel_exporter_otlp_endpoint=f"http://127.0.0.1:{port}",
            otel_exporter_otlp_headers="x-api-key=k%2C1",
            otel_resource_attributes="service.instance.id=ingest-0",
        )
        app = create_ingest(settings)
        async with started(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
                response = await client.post("/v1/events", json=profile(sid()))
            assert response.status_code == 202, response.text
    finally:
        server.should_exit = True
        await serving
    assert received, "no export reached the receiver"
    assert {headers["x-api-key"] for headers, _ in received} == {"k,1"}
    names, resources = set(), set()
    for _, message in received:
        for resource_spans in message.resource_spans:
            attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            resources.add((attributes["service.name"], attributes["service.instance.id"]))
            for scope in resource_spans.scope_spans:
                names.update(span.name for span in scope.spans)
    assert resources == {("churnwatch-ingest", "ingest-0")}
    assert {"POST /v1/events", f"send {topics_for(settings).events}"} <= names


@dataclass(frozen=True)
class Exported:
    service: str
    name: str
    trace_id: bytes
    span_id: bytes
    parent_id: bytes
    attributes: dict[str, str]


def exported(received: list[tuple[dict[str, str], ExportTraceServiceRequest]]) -> list[Exported]:
    spans = []
    for _, message in received:
        for resource_spans in message.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    spans.append(
                        Exported(
                            resource["service.name"],
                            span.name,
                            span.trace_id,
                            span.span_id,
                            span.parent_span_id,
                            {a.key: a.value.string_value for a in span.attributes},
                        )
                    )
    return spans


@pytest.mark.e2e
async def test_the_pipeline_as_processes_exports_one_trace_per_event_over_otlp(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The four services as processes, configured by environment only, export over OTLP/HTTP.

    One stop-notice's reminder SMS: its ``send sms`` span's ancestors run back
    through outreach, alerting and ingest to ingest's HTTP request, one trace.
    """
    received: list[tuple[dict[str, str], ExportTraceServiceRequest]] = []
    port = free_port()
    server, serving = await serve(otlp_receiver(received), port)
    environ = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
    }
    # The harness waits and stops synchronously: in a thread, so this loop keeps
    # receiving what the processes export (they flush when they stop, too).
    processes = run_pipeline(stack, tmp_path_factory, extra_environ=environ)
    pipeline = await asyncio.to_thread(next, processes)
    try:
        subscriber, phone = sid(), "+15550004999"
        await post_events(
            pipeline,
            [
                profile(subscriber, tier="gold", phone=phone, manager="AM-O"),
                stop_notice(subscriber),
            ],
        )
        [sms] = await eventually(lambda: sms_to(pipeline, phone), what="the reminder SMS")

        async def send_span() -> Exported | None:
            for span in exported(received):
                if (
                    span.name == "send sms"
                    and span.attributes.get("churnwatch.task.id") == (sms["reference"])
                ):
                    return span
            return None

        # The batch exporter sends every few seconds.
        send = await eventually(send_span, timeout_s=60, what="the send sms span over OTLP")
        chain = [send]
        for _ in range(10):  # up the parents, each exported by its own process
            by_id = {s.span_id: s for s in exported(received) if s.trace_id == send.trace_id}
            while chain[-1].parent_id and chain[-1].parent_id in by_id:
                chain.append(by_id[chain[-1].parent_id])
            if not chain[-1].parent_id:
                break
            await asyncio.sleep(0.5)  # a parent not exported yet: the next export brings it
        assert [(s.service, s.name.split(" ")[0]) for s in chain] == [
            ("churnwatch-outreach", "send"),
            ("churnwatch-outreach", "process"),
            ("churnwatch-alerting", "process"),
            ("churnwatch-ingest", "send"),
            ("churnwatch-ingest", "POST"),
        ]
        assert {s.trace_id for s in chain} == {send.trace_id}

        async def scored() -> list[Exported]:
            return [
                s
                for s in exported(received)
                if s.service == "churnwatch-scoring" and s.trace_id == send.trace_id
            ]

        # Each process exports on its own schedule: scoring's may come later.
        spans = await eventually(scored, timeout_s=30, what="scoring's spans in the trace")
        assert {s.name for s in spans} == {
            f"process {pipeline.settings['kafka_topic_prefix']}.events"
        }
    finally:
        # Stops the processes (and checks they stopped gracefully); None: no StopIteration.
        await asyncio.to_thread(next, processes, None)
        server.should_exit = True
        await serving
