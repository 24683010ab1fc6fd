"""Alerting app factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from fastapi import FastAPI

from services.alerting.consumer import AlertingHandler, Sweeper, make_parser
from services.alerting.rule_engine import RuleEngine
from services.alerting.rules import DEFAULT_RULES_FILE, load_rules
from services.alerting.settings import AlertingSettings
from services.alerting.tables import processed_messages
from services.alerting.views import activity_router, router
from shared.auth import auth_responses, install_auth
from shared.crypto import use_phone_keyring
from shared.errors import install_error_handlers
from shared.health import health_router
from shared.metrics import install_metrics
from shared.retention import Purger, PurgeRule
from shared.runtime import ServiceRuntime

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


def create_app(settings: AlertingSettings, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    """The alerting service: rules over events and scores, the dwell sweep, silences API.

    The rules file is loaded here, not in the lifespan, so a bad file stops
    the service before it binds a port, with the file and line in the error.
    ``span_exporter``: where spans go instead of the configured exporter (tests).
    """
    rules = load_rules(settings.alerting_rules_file)
    use_phone_keyring(settings.phone_keyring())  # seals a plain phone from an old record
    engine = RuleEngine(
        rules,
        control_percent=settings.alerting_control_group_percent,
        control_salt=settings.alerting_control_group_salt,
    )
    runtime = ServiceRuntime(settings, "alerting", span_exporter=span_exporter)
    purger = Purger(
        runtime.engine,
        [PurgeRule(processed_messages, "processed_at")],
        days=settings.retention_days,
        interval_s=settings.retention_interval_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await runtime.start(
            topics=[runtime.topics.events, runtime.topics.scores],
            group_id=settings.alerting_consumer_group,
            parser=make_parser(runtime.topics),
            handler=AlertingHandler(engine, runtime.topics),
        )
        sweeper = Sweeper(
            settings, engine, runtime.engine, runtime.topics, lambda: runtime.producer
        )
        app.state.sweeper = sweeper
        sweep_task = asyncio.create_task(sweeper.run(), name="alerting-sweep")
        purge_task = asyncio.create_task(purger.run(), name="alerting-retention")
        try:
            yield
        finally:
            sweeper.stop()
            purger.stop()
            await asyncio.gather(sweep_task, purge_task)
            await runtime.stop()

    app = FastAPI(
        title="churnwatch alerting",
        version="1",
        description="Alerting rules over risk scores and events; silences.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    app.state.rules = rules
    app.state.rules_source = settings.alerting_rules_file or DEFAULT_RULES_FILE
    app.state.purger = purger
    install_error_handlers(app)
    install_metrics(app, "alerting")
    runtime.tracing.instrument(app)
    install_auth(app, settings, runtime.engine)
    app.include_router(health_router(runtime.checks()))
    app.include_router(router, responses=auth_responses())
    app.include_router(activity_router, responses=auth_responses())
    return app
