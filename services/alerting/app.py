"""Alerting app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from services.alerting.consumer import AlertingHandler, make_parser
from services.alerting.settings import AlertingSettings
from shared.errors import install_error_handlers
from shared.health import health_router
from shared.metrics import install_metrics
from shared.runtime import ServiceRuntime


def create_app(settings: AlertingSettings) -> FastAPI:
    """The alerting service: the consumer of events and scores, probes, metrics."""
    runtime = ServiceRuntime(settings, "alerting")

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start(
            topics=[runtime.topics.events, runtime.topics.scores],
            group_id=settings.alerting_consumer_group,
            parser=make_parser(runtime.topics),
            handler=AlertingHandler(settings, runtime.topics),
        )
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="churnwatch alerting", version="1", lifespan=lifespan)
    app.state.settings = settings
    app.state.runtime = runtime
    install_error_handlers(app)
    install_metrics(app, "alerting")
    app.include_router(health_router(runtime.checks()))
    return app
