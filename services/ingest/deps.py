"""What ingest's routes take from the app: one accessor each, and its dependency.

Routes take the ``Annotated`` aliases as parameters (``settings: SettingsDep``),
as fastapi/full-stack-fastapi-template's ``SessionDep``, rather than reaching
into ``request.app.state`` themselves; ``create_app`` and its lifespan store
what they return. Each reads ``request.app.state`` on every request: the
producer, for one, only exists once the lifespan has started it.
"""

from __future__ import annotations

from typing import Annotated

from aiokafka import AIOKafkaProducer
from fastapi import Depends, Request

from services.ingest.settings import IngestSettings
from shared.deps import on_loop
from shared.kafka import OffsetLedger, TopicGuard
from shared.topics import Topics
from shared.tracing import Tracing


def get_settings(request: Request) -> IngestSettings:
    """The settings the app was built with."""
    settings: IngestSettings = request.app.state.settings
    return settings


def get_producer(request: Request) -> AIOKafkaProducer:
    """The Kafka producer (started by the lifespan)."""
    producer: AIOKafkaProducer = request.app.state.producer
    return producer


def get_topic_guard(request: Request) -> TopicGuard:
    """The check that the events topic exists as expected, before a produce."""
    guard: TopicGuard = request.app.state.topic_guard
    return guard


def get_offset_ledger(request: Request) -> OffsetLedger:
    """The acknowledged offsets per partition (they must only move forward)."""
    ledger: OffsetLedger = request.app.state.offset_ledger
    return ledger


def get_topics(request: Request) -> Topics:
    """The Kafka topic names under the app's prefix."""
    topics: Topics = request.app.state.topics
    return topics


def get_tracing(request: Request) -> Tracing:
    """The service's tracer (``shared.tracing``; a no-op one when tracing is off)."""
    tracing: Tracing = request.app.state.tracing
    return tracing


SettingsDep = Annotated[IngestSettings, Depends(on_loop(get_settings))]
"""A route's parameter for :func:`get_settings`."""
ProducerDep = Annotated[AIOKafkaProducer, Depends(on_loop(get_producer))]
"""A route's parameter for :func:`get_producer`."""
TopicGuardDep = Annotated[TopicGuard, Depends(on_loop(get_topic_guard))]
"""A route's parameter for :func:`get_topic_guard`."""
OffsetLedgerDep = Annotated[OffsetLedger, Depends(on_loop(get_offset_ledger))]
"""A route's parameter for :func:`get_offset_ledger`."""
TracingDep = Annotated[Tracing, Depends(on_loop(get_tracing))]
"""A route's parameter for :func:`get_tracing`."""
TopicsDep = Annotated[Topics, Depends(on_loop(get_topics))]
"""A route's parameter for :func:`get_topics`."""
