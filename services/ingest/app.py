"""Ingest app factory."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

from services.ingest.landing import LandingParser, Relay
from services.ingest.settings import IngestSettings
from services.ingest.views import router
from shared.auth import KeyStore, auth_responses, install_auth
from shared.consumer import ConsumerLoop
from shared.crypto import use_phone_keyring
from shared.db import create_engine
from shared.errors import install_error_handlers
from shared.events import EVENT_ADAPTER, Event
from shared.health import Check, health_router
from shared.kafka import OffsetLedger, TopicGuard, ensure_topics, make_producer, topics_for
from shared.metrics import install_metrics
from shared.tracing import Tracing

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


def create_app(settings: IngestSettings, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    """The ingest service: ``POST /v1/events``, the landing topic, schemas, probes, metrics.

    Ingest keeps no data of its own; its database engine looks up API keys and
    holds the landing consumer's (empty) batch transactions. The landing consumer
    is not a readiness check: HTTP ingest serves without it; its lag and dead
    letters are on the dashboards and alerts (docs/kafka-producers.md).
    ``span_exporter``: where spans go instead of the configured exporter (tests).
    """
    use_phone_keyring(settings.phone_keyring())  # produce_events seals phones with it
    db = create_engine(settings)
    # Ingest needs the events topic; the others are the consumers' to check.
    guard = TopicGuard(
        settings,
        service="ingest",
        names=[topics_for(settings).events],
        ttl_s=settings.ingest_topic_check_ttl_s,
        timeout_s=settings.ingest_topic_check_timeout_s,
    )

    tracing = Tracing(settings, service="ingest", exporter=span_exporter)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tracing.start()
        await ensure_topics(settings)
        producer = make_producer(settings)
        await producer.start()
        # Any metadata refresh of the producer (a broker restart, a leader change)
        # may mean the topic changed under it: judge again before the next produce.
        producer.client.cluster.add_listener(guard.invalidate)
        app.state.producer = producer
        periodic = asyncio.create_task(
            guard.run_periodic(settings.ingest_topic_check_interval_s), name="ingest-topic-check"
        )
        landing: ConsumerLoop[Event] | None = None
        landing_task: asyncio.Task[None] | None = None
        if settings.ingest_landing_enabled:
            landing = ConsumerLoop(
                service="ingest",
                settings=settings,
                topics=[app.state.topics.landing],
                group_id=settings.ingest_landing_consumer_group,
                parser=LandingParser(max_record_bytes=settings.ingest_landing_max_record_bytes),
                handler=Relay(app.state.topics),
                engine=db,
                producer=producer,
                tracing=tracing,
            )
            landing_task = asyncio.create_task(landing.run(), name="ingest-landing")
        app.state.landing = landing
        try:
            yield
        finally:
            if landing is not None and landing_task is not None:
                landing.stop()  # after the batch in hand
                await landing_task
            periodic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await periodic
            await guard.close()
            await producer.stop()
            await db.dispose()
            await tracing.aclose()  # exports what is left

    app = FastAPI(
        title="churnwatch ingest",
        version="1",
        description="Validates billing-system events and streams them into Kafka.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.topics = topics_for(settings)
    app.state.topic_guard = guard
    app.state.offset_ledger = OffsetLedger()  # acknowledged offsets must move forward
    app.state.tracing = tracing

    async def broker() -> bool:
        # A fresh check (never a cached verdict), shared by both probes: /readyz
        # runs them concurrently and the second joins the first's check.
        return (await guard.check()).kind != "unreachable"

    async def topics() -> bool:
        return (await guard.check(join_inflight=True)).ok

    async def database() -> bool:
        # Whether API keys can be checked: the key store's database.
        keystore: KeyStore = app.state.keystore
        return await keystore.reachable()

    # Ingest reads and limits its bodies itself (INGEST_MAX_BODY_BYTES, with NDJSON).
    install_error_handlers(app, max_body_bytes=None)
    install_metrics(app, "ingest")
    tracing.instrument(app)
    install_auth(app, settings, db)
    # Without the database no API key can be checked, so ingest is not ready either.
    checks: dict[str, Check] = {"broker": broker, "topics": topics}
    if settings.auth_enabled:
        checks["database"] = database
    app.include_router(health_router(checks))
    app.include_router(router, responses=auth_responses())
    # Publish the event union in the OpenAPI document so POST /v1/events is documented.
    schema = EVENT_ADAPTER.json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    # install_error_handlers's document: every error response as application/problem+json.
    with_problems = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = with_problems()
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            components.update(defs)
            components["Event"] = schema
        return app.openapi_schema or {}

    app.openapi = openapi  # type: ignore[method-assign]
    return app
