"""Outreach app factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from services.outreach.consumer import OutreachHandler, parse_record
from services.outreach.settings import OutreachSettings
from services.outreach.sms import Dispatcher, SmsClient
from services.outreach.views import router
from shared.errors import install_error_handlers
from shared.health import health_router
from shared.metrics import install_metrics
from shared.runtime import ServiceRuntime


def create_app(settings: OutreachSettings) -> FastAPI:
    """The outreach service: task consumer, SMS dispatcher, tasks API, probes, metrics."""
    runtime = ServiceRuntime(settings, "outreach")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(
            base_url=settings.sms_gateway_url, timeout=settings.sms_timeout_s
        ) as http:
            sms = SmsClient(
                http, settings.sms_gateway_token.get_secret_value(), settings.sms_sender_id
            )
            dispatcher = Dispatcher(settings, runtime.engine, sms)
            app.state.dispatcher = dispatcher
            await runtime.start(
                topics=[runtime.topics.tasks],
                group_id=settings.outreach_consumer_group,
                parser=parse_record,
                handler=OutreachHandler(dispatcher.wakeup),
            )
            dispatch_task = asyncio.create_task(dispatcher.run(), name="sms-dispatcher")
            try:
                yield
            finally:
                dispatcher.stop()
                await dispatch_task
                await runtime.stop()

    app = FastAPI(
        title="churnwatch outreach",
        version="1",
        description="Outreach tasks (SMS and call queue) for other systems.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    install_error_handlers(app)
    install_metrics(app, "outreach")
    app.include_router(health_router(runtime.checks()))
    app.include_router(router)
    return app
