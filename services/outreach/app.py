"""Outreach app factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import httpx
from fastapi import FastAPI

from services.outreach.consumer import OutreachHandler, parse_record
from services.outreach.directory import SubscriberDirectory
from services.outreach.escalation import Escalator
from services.outreach.feedback import KpiRefresher, Relay
from services.outreach.queue import QueueKeeper
from services.outreach.reconcile import Reconciler
from services.outreach.service import encrypt_plain_phones, newest_task_time
from services.outreach.settings import OutreachSettings
from services.outreach.smpp import SmppTransport, receipt_sink
from services.outreach.sms import Dispatcher, SmsClient, SmsTransport
from services.outreach.tables import outbox, web_sessions
from services.outreach.templates import check_templates
from services.outreach.views import include_routes
from services.outreach.workbench import install_workbench
from shared.auth import install_auth
from shared.clock import MAX_AHEAD, StreamClock, WallClock, make_clock
from shared.crypto import use_phone_keyring
from shared.errors import install_error_handlers
from shared.health import health_router
from shared.metrics import install_metrics
from shared.retention import Purger, PurgeRule
from shared.runtime import ServiceRuntime

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter


def create_app(settings: OutreachSettings, *, span_exporter: SpanExporter | None = None) -> FastAPI:
    """The outreach service: task consumer, SMS dispatcher, tasks API, probes, metrics.

    ``span_exporter``: where spans go instead of the configured exporter (tests).
    """
    check_templates()  # a broken SMS template stops outreach here, naming every problem
    # The tasks' phone column encrypts with this key (process-wide: a column type
    # has no other way to reach the settings).
    use_phone_keyring(settings.phone_keyring())
    runtime = ServiceRuntime(settings, "outreach", span_exporter=span_exporter)
    # Published outbox rows only: an unpublished one is a message still to hand on.
    # Workbench sessions long expired (a live one is dropped when next presented).
    purger = Purger(
        runtime.engine,
        [PurgeRule(outbox, "published_at"), PurgeRule(web_sessions, "expires_at")],
        days=settings.retention_days,
        interval_s=settings.retention_interval_s,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Rows stored before phones were encrypted (migration 0005) are encrypted now.
        while True:
            async with runtime.engine.begin() as conn:
                if not await encrypt_plain_phones(conn):
                    break
        clock = app.state.clock
        if isinstance(clock, StreamClock):
            # A restarted replay goes on from the newest task it had stored.
            async with runtime.engine.connect() as conn:
                newest = await newest_task_time(conn, not_after=WallClock().now() + MAX_AHEAD)
            if newest is not None:
                clock.observe(newest)
        async with httpx.AsyncClient(
            base_url=settings.sms_gateway_url, timeout=settings.sms_timeout_s
        ) as http:
            # SMS_TRANSPORT: the JSON HTTP provider, or SMPP to the operator's SMSC (smpp.py).
            smpp: SmppTransport | None = None
            sms: SmsTransport
            if settings.sms_transport == "smpp":
                smpp = SmppTransport(settings, sink=receipt_sink(runtime.engine, clock))
                await smpp.start()
                sms = smpp
            else:
                sms = SmsClient(
                    http, settings.sms_gateway_token.get_secret_value(), settings.sms_sender_id
                )
            app.state.sms = sms
            dispatcher = Dispatcher(
                settings, runtime.engine, sms, clock=clock, tracing=runtime.tracing
            )
            app.state.dispatcher = dispatcher
            # Asks the provider about SMS whose receipt never came (sms.py, reconcile.py).
            reconciler = Reconciler(settings, runtime.engine, sms, clock=clock)
            app.state.reconciler = reconciler
            await runtime.start(
                topics=[runtime.topics.tasks],
                group_id=settings.outreach_consumer_group,
                parser=parse_record,
                handler=OutreachHandler(
                    dispatcher.expect, sms_hold_s=settings.outreach_sms_hold_s, clock=clock
                ),
            )
            relay = Relay(settings, runtime.engine, runtime.topics, lambda: runtime.producer)
            keeper = QueueKeeper(settings, runtime.engine, clock=clock)
            kpis = KpiRefresher(settings, runtime.engine, clock=clock)
            app.state.relay, app.state.keeper, app.state.kpis = relay, keeper, kpis
            # VIP reminders not done in time (escalation.py).
            escalator = Escalator(settings, runtime.engine, clock, wake_sms=dispatcher.wakeup.set)
            app.state.escalator = escalator
            # Background loops beside the consumer: SMS sending and reconciling, the outbox relay
            # (task outcomes to Kafka), the call queue's timeouts, the KPI gauges.
            loops: list[
                Dispatcher | Reconciler | Relay | QueueKeeper | KpiRefresher | Escalator | Purger
            ] = [
                dispatcher,
                reconciler,
                relay,
                keeper,
                kpis,
                escalator,
                purger,
            ]
            tasks = [
                asyncio.create_task(loop.run(), name=f"outreach-{type(loop).__name__}")
                for loop in loops
            ]
            # The subscriber card's other sources (directory.py); None when not configured.
            directory = SubscriberDirectory.from_settings(settings)
            app.state.directory = directory
            try:
                yield
            finally:
                if directory is not None:
                    await directory.aclose()
                for loop in loops:
                    loop.stop()
                await asyncio.gather(*tasks)
                if smpp is not None:
                    await smpp.aclose()
                await runtime.stop()

    app = FastAPI(
        title="churnwatch outreach",
        version="1",
        description="Outreach tasks (SMS and call queue) for other systems.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = runtime
    # Wall clock in production; a replay's stream time with OUTREACH_CLOCK=stream.
    app.state.clock = make_clock(settings.outreach_clock)
    app.state.purger = purger
    app.state.directory = None  # set in the lifespan (directory.py)
    install_error_handlers(app)
    install_metrics(app, "outreach")
    runtime.tracing.instrument(app)
    install_auth(app, settings, runtime.engine)
    app.include_router(health_router(runtime.checks()))
    # The REST API (tasks, call queue, contacts, KPIs): services/outreach/views/.
    include_routes(app)
    # The account managers' workbench: people sign in with passwords, not API keys.
    install_workbench(app)
    return app
