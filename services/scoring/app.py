"""Scoring app factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fastapi import FastAPI

from services.scoring.consumer import ScoringHandler
from services.scoring.settings import ScoringSettings
from services.scoring.tables import processed_events
from services.scoring.views import router
from shared.auth import auth_responses, install_auth
from shared.errors import install_error_handlers
from shared.health import health_router
from shared.metrics import install_metrics
from shared.retention import Purger, PurgeRule
from shared.runtime import ServiceRuntime

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


def create_app(settings: ScoringSettings, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    """The scoring service: the events and outcomes consumer, scores API, probes, metrics.

    ``span_exporter``: where spans go instead of the configured exporter (tests).
    """
    runtime = ServiceRuntime(settings, "scoring", span_exporter=span_exporter)
    handler = ScoringHandler(settings, runtime.topics)
    purger = Purger(
        runtime.engine,
        [PurgeRule(processed_events, "processed_at")],
        days=settings.retention_days,
        interval_s=settings.retention_interval_s,
    )

    async def final_checkpoint() -> None:
        # Learning since the last checkpoint is not lost on a clean shutdown.
        if handler.model.labels_seen > 0 and handler.checkpoint_due(force=True):
            async with runtime.engine.begin() as conn:
                await handler.checkpoint(conn, now=datetime.now(UTC))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await handler.load(runtime.engine)
        await runtime.start(
            # Outcomes are co-partitioned with events (both keyed by subscriber), so
            # the range assignor gives a replica the same partitions of both.
            topics=[runtime.topics.events, runtime.topics.outcomes],
            group_id=settings.scoring_consumer_group,
            parser=handler.parse,
            handler=handler,
            on_failure=lambda: handler.load(runtime.engine),
            on_stop=final_checkpoint,
            on_revoked=handler.forget,
            max_records=settings.scoring_batch_max_records,
        )
        purge_task = asyncio.create_task(purger.run(), name="scoring-retention")
        try:
            yield
        finally:
            purger.stop()
            await purge_task
            await runtime.stop()

    app = FastAPI(title="churnwatch scoring", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.handler = handler
    app.state.purger = purger
    install_error_handlers(app)
    install_metrics(app, "scoring")
    runtime.tracing.instrument(app)
    install_auth(app, settings, runtime.engine)
    app.include_router(health_router(runtime.checks()))
    app.include_router(router, responses=auth_responses())
    return app
