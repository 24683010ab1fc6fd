"""Kafka plumbing: client options, producer, topic creation, a topic guard and a broker probe.

The same code runs against the embedded Tansu broker and Apache Kafka; only
``KAFKA_*`` settings change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiokafka.client
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.helpers import create_ssl_context
from aiokafka.protocol.metadata import MetadataRequest

from shared import metrics
from shared.settings import BaseServiceSettings
from shared.topics import Topics

log = logging.getLogger(__name__)


class _MetadataRequestNoAutoCreate(MetadataRequest):  # type: ignore[misc]  # untyped base
    """aiokafka's metadata request, never asking the broker to create the topics it names.

    A Kafka client asks for the metadata of every topic it produces to or
    consumes from, and by default (metadata v4+) asks the broker to create any
    that is missing, with the broker's default partition count
    (``num.partitions``; Tansu: 4). After a broker loses its topics, whichever
    client asks first would re-create one with the wrong partition count before
    ``TopicGuard`` re-creates it with ``KAFKA_TOPIC_PARTITIONS``, and the guard
    then refuses the topic until an operator steps in. Java clients turn this off
    with ``allow.auto.create.topics=false`` (KIP-361); aiokafka has no such
    option, so its client's request class is this one: only ``ensure_topics``
    (and an operator) create topics.
    """

    def __init__(
        self, topics: list[str] | None = None, allow_auto_topic_creation: bool | None = False
    ) -> None:
        super().__init__(topics, allow_auto_topic_creation)


# aiokafka's client builds its metadata requests from this module-level name.
aiokafka.client.MetadataRequest = _MetadataRequestNoAutoCreate


def client_options(settings: BaseServiceSettings) -> dict[str, Any]:
    """Connection options common to producers, consumers and the admin client.

    Raises ``ValueError`` naming the missing settings when SASL is configured
    without a username or password (a clear start-up error, not a failed handshake).
    """
    missing = settings.missing_kafka_credentials()
    if missing:
        raise ValueError(
            f"KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol} needs "
            + " and ".join(missing)
        )
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
        "request_timeout_ms": settings.kafka_request_timeout_ms,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile)
    if settings.kafka_sasl_mechanism:
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value()
            if settings.kafka_sasl_password
            else None
        )
    return opts


def topics_for(settings: BaseServiceSettings) -> Topics:
    """The topic names under the configured prefix."""
    return Topics(settings.kafka_topic_prefix)


def make_producer(settings: BaseServiceSettings, **overrides: Any) -> AIOKafkaProducer:
    """A producer that waits for every in-sync replica (``acks=all``)."""
    opts = client_options(settings)
    opts.update(
        acks="all",
        enable_idempotence=settings.kafka_enable_idempotence,
        linger_ms=5,
        # Keep the whole send (incl. retries) within the request timeout, so a dead
        # broker surfaces as an error instead of a request that hangs.
        retry_backoff_ms=100,
    )
    opts.update(overrides)
    return AIOKafkaProducer(**opts)


def topic_configs(settings: BaseServiceSettings, name: str) -> dict[str, str]:
    """The topic configs churnwatch gives topic ``name`` (a name under the prefix).

    The same values go into ``CreateTopics`` here and into the Strimzi
    ``KafkaTopic`` objects (tests/test_deploy_strimzi.py keeps the two equal). A
    setting left unset leaves the broker's default, so it is not listed.
    ``cleanup.policy`` is always ``delete``: a compacted churnwatch topic would
    keep only the newest record per subscriber and silently drop events.
    """
    topics = topics_for(settings)
    configs = {"cleanup.policy": "delete"}
    if settings.kafka_min_insync_replicas is not None:
        configs["min.insync.replicas"] = str(settings.kafka_min_insync_replicas)
    retention = {
        topics.landing: settings.kafka_landing_retention_ms,
        topics.dlq: settings.kafka_dlq_retention_ms,
    }.get(name, settings.kafka_retention_ms)
    if retention is not None:
        configs["retention.ms"] = str(retention)
    return configs


@dataclass(frozen=True, slots=True)
class ConfigDrift:
    """One topic config whose value on the broker is not the configured one."""

    topic: str
    config: str
    actual: str | None
    """The broker's value; None if the broker did not report the config."""
    expected: str


async def topic_config_drift(
    admin: AIOKafkaAdminClient, settings: BaseServiceSettings, names: list[str]
) -> list[ConfigDrift]:
    """Each config of ``names`` (existing topics) that differs from ``topic_configs``.

    One ``DescribeConfigs`` request. A topic the broker refuses to describe (no
    DescribeConfigs ACL, say) is logged and skipped: this is a report, never a
    reason not to start.
    """
    if not names:
        return []
    wanted = {name: topic_configs(settings, name) for name in names}
    # All configs of each topic, filtered here: Tansu cannot decode a request that
    # names the configs it wants (it drops the connection).
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, name) for name in wanted]
    )
    drift: list[ConfigDrift] = []
    for response in responses:
        for resource in response.to_object()["resources"]:
            name = resource["resource_name"]
            if resource["error_code"] != 0 or name not in wanted:
                log.warning(
                    "could not read a topic's configs",
                    extra={"topic": name, "error_code": resource["error_code"]},
                )
                continue
            actual = {e["config_names"]: e["config_value"] for e in resource["config_entries"]}
            drift.extend(
                ConfigDrift(name, key, actual.get(key), value)
                for key, value in wanted[name].items()
                if actual.get(key) != value
            )
    return drift


async def ensure_topics(settings: BaseServiceSettings) -> list[str]:
    """Create any missing churnwatch topic; return the names created.

    Missing topics are created with ``KAFKA_TOPIC_PARTITIONS`` partitions,
    ``KAFKA_REPLICATION_FACTOR`` replicas and ``topic_configs``; with
    ``KAFKA_CREATE_TOPICS=false`` they are only reported (Strimzi's Topic Operator
    creates them). Existing topics whose partition count or configs differ are
    reported (a warning each), never altered: a partition count breaks
    co-partitioning, and a retention or ``min.insync.replicas`` on a live topic is
    an operator's decision (docs/deploy.md, "Topic configuration").
    """
    topics = topics_for(settings)
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        # list_topics first: a metadata request naming a missing topic makes some
        # brokers (Tansu, Kafka with auto.create.topics.enable) create it with
        # their default partition count, which would break co-partitioning.
        names = set(await admin.list_topics())
        wanted = [name for name in topics.all() if name in names]
        existing = await admin.describe_topics(wanted) if wanted else []
        present = {t["topic"]: len(t["partitions"]) for t in existing if t["error_code"] == 0}
        for name, partitions in present.items():
            if (
                name not in topics.free_partitioning()
                and partitions != settings.kafka_topic_partitions
            ):
                log.warning(
                    "topic partition count differs from KAFKA_TOPIC_PARTITIONS",
                    extra={
                        "topic": name,
                        "partitions": partitions,
                        "expected": settings.kafka_topic_partitions,
                    },
                )
        await _report_config_drift(admin, settings, list(present))
        missing = [name for name in topics.all() if name not in present]
        if missing and not settings.kafka_create_topics:
            log.error(
                "topics missing and KAFKA_CREATE_TOPICS is false: waiting for them to be created",
                extra={"topics": missing},
            )
            return []
        if missing:
            response = await admin.create_topics(
                [
                    NewTopic(
                        name=name,
                        num_partitions=settings.kafka_topic_partitions,
                        replication_factor=settings.kafka_replication_factor,
                        topic_configs=topic_configs(settings, name),
                    )
                    for name in missing
                ]
            )
            # 36 = TOPIC_ALREADY_EXISTS: another replica won the race; fine.
            for topic_error in response.topic_errors:
                name, code = topic_error[0], topic_error[1]
                if code not in (0, 36):
                    raise RuntimeError(f"could not create topic {name}: error code {code}")
            log.info("created topics", extra={"topics": missing})
        return missing
    finally:
        await admin.close()


async def _report_config_drift(
    admin: AIOKafkaAdminClient, settings: BaseServiceSettings, names: list[str]
) -> None:
    """Log each existing topic config that differs from the settings; alter nothing."""
    try:
        drift = await topic_config_drift(admin, settings, names)
    except Exception as exc:  # a report must never stop a service from starting
        log.warning("could not compare topic configs", extra={"error": repr(exc)})
        return
    for item in drift:
        log.warning(
            "topic config differs from the settings; not altered",
            extra={
                "topic": item.topic,
                "config": item.config,
                "actual": item.actual,
                "expected": item.expected,
            },
        )


async def ping_broker(settings: BaseServiceSettings, *, timeout_s: float = 1.5) -> bool:
    """True if the broker answers a metadata request within ``timeout_s``.

    Bounded: a frozen broker (SIGSTOP) accepts the TCP connection and never
    answers, and the client's own request timeout is far longer than a probe's.
    """
    admin = AIOKafkaAdminClient(**client_options(settings))
    try:
        await asyncio.wait_for(_start_and_describe(admin), timeout_s)
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(admin.close(), timeout_s)
    return True


async def _start_and_describe(admin: AIOKafkaAdminClient) -> None:
    await admin.start()
    await admin.describe_cluster()


async def present_topics(admin: AIOKafkaAdminClient) -> dict[str, int]:
    """Every topic the broker lists, with its partition count.

    One metadata request that names no topic: naming a missing one makes Tansu
    (and Kafka with ``auto.create.topics.enable``) create it with the broker's
    default partition count.
    """
    described = await admin.describe_topics(None)
    return {t["topic"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


@dataclass(frozen=True, slots=True)
class TopicVerdict:
    """Whether the topics a service needs exist with the expected partitions."""

    ok: bool
    reason: str = ""
    """Why not, for logs and 503 bodies; empty when ``ok``."""
    kind: str = "ok"
    """``ok``, ``unreachable``, ``missing`` or ``partitions``: a bounded metric label."""
    missing: tuple[str, ...] = ()
    started_at: float = field(default_factory=time.monotonic)
    """Monotonic time the check began: a verdict speaks for the broker from then on."""


def judge_topics(
    present: dict[str, int], names: list[str], expected: int, *, exempt: tuple[str, ...] = ()
) -> TopicVerdict:
    """The verdict for ``names`` given the broker's ``present`` topics."""
    missing = tuple(n for n in names if n not in present)
    if missing:
        return TopicVerdict(
            False, f"topic(s) missing on the broker: {', '.join(missing)}", "missing", missing
        )
    wrong = [
        f"{n} has {present[n]} partitions, KAFKA_TOPIC_PARTITIONS is {expected}"
        for n in names
        if n not in exempt and present[n] != expected
    ]
    if wrong:
        return TopicVerdict(False, "; ".join(wrong), "partitions")
    return TopicVerdict(True)


class TopicGuard:
    """Checks, with bounded time, that a service's topics exist with the expected partitions.

    One long-lived admin client; concurrent callers share one in-flight check
    (``check(newer_than=...)``); a verdict is cached for ``ttl_s``. A missing
    topic is re-created through ``ensure_topics`` (with the partitions, replicas
    and ``topic_configs`` of a first creation) when ``KAFKA_RECREATE_LOST_TOPICS``
    and ``KAFKA_CREATE_TOPICS`` are on (logged as an error and counted), never
    one with the wrong partition count: that needs an operator. Every change of
    verdict is logged once and exported as ``churnwatch_kafka_topics_ok``.
    """

    def __init__(
        self,
        settings: BaseServiceSettings,
        *,
        service: str,
        names: list[str] | None = None,
        ttl_s: float = 1.0,
        timeout_s: float = 1.0,
    ) -> None:
        self.settings = settings
        self.service = service
        topics = topics_for(settings)
        self.names = names if names is not None else topics.all()
        self._exempt = topics.free_partitioning()  # ensure_topics does not judge them either
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._admin: AIOKafkaAdminClient | None = None
        self._last: TopicVerdict | None = None
        self._inflight: asyncio.Task[TopicVerdict] | None = None
        self._tasks: set[asyncio.Task[TopicVerdict]] = set()
        # One metadata request at a time on the one admin client (two checks racing
        # to create it would leak one).
        self._lock = asyncio.Lock()
        self._inflight_started = 0.0
        self._logged_ok: bool | None = None
        self.recreated_at = float("-inf")
        """Monotonic time this guard last re-created a lost topic."""
        self.unstable_at = float("-inf")
        """Monotonic time of the last check that failed (topics not usable)."""

    @property
    def last(self) -> TopicVerdict | None:
        """The latest verdict, if any."""
        return self._last

    def invalidate(self, *_: object) -> None:
        """Forget the cached verdict (after a produce error or a metadata refresh)."""
        self._last = None

    async def verdict(self) -> TopicVerdict:
        """The cached verdict if younger than ``ttl_s``, else a fresh one."""
        last = self._last
        if last is not None and time.monotonic() - last.started_at < self.ttl_s:
            return last
        return await self.check()

    async def check(
        self, *, newer_than: float | None = None, join_inflight: bool = False
    ) -> TopicVerdict:
        """A verdict from a check that began at or after ``newer_than`` (default: now).

        ``join_inflight``: take the check in flight, if any, whenever it began (two
        probes of one ``/readyz`` share one check this way).
        """
        if join_inflight and self._inflight is not None and not self._inflight.done():
            return await asyncio.shield(self._inflight)
        since = time.monotonic() if newer_than is None else newer_than
        last = self._last
        if last is not None and last.started_at >= since:
            return last
        if self._inflight is None or self._inflight_started < since:
            self._inflight_started = time.monotonic()
            self._inflight = asyncio.create_task(self._check_and_repair())
            self._tasks.add(self._inflight)
            self._inflight.add_done_callback(self._tasks.discard)
        # Shielded: one caller's cancellation must not cancel the check others await.
        return await asyncio.shield(self._inflight)

    async def _check_and_repair(self) -> TopicVerdict:
        verdict = await self._check_once()
        if verdict.kind == "missing" and self.settings.kafka_recreate_lost_topics:
            try:
                created = await asyncio.wait_for(ensure_topics(self.settings), 2 * self.timeout_s)
            except Exception as exc:
                log.error(
                    "could not re-create lost topics",
                    extra={
                        "service": self.service,
                        "topics": list(verdict.missing),
                        "error": repr(exc),
                    },
                )
            else:
                if created:
                    self.recreated_at = self.unstable_at = time.monotonic()
                    metrics.KAFKA_TOPICS_RECREATED.labels(self.service).inc(len(created))
                    log.error(
                        "topics were lost (broker restarted or topic deleted); re-created them "
                        "empty: whatever they held before is gone",
                        extra={"service": self.service, "topics": created},
                    )
                verdict = await self._check_once()
        self._record(verdict)
        return verdict

    async def _check_once(self) -> TopicVerdict:
        async with self._lock:
            return await self._check_locked()

    async def _check_locked(self) -> TopicVerdict:
        started = time.monotonic()
        try:
            present = await asyncio.wait_for(self._present(), self.timeout_s)
        except Exception as exc:
            await self._drop_admin()  # a cancelled request leaves the client in doubt
            reason = f"broker did not answer a metadata request in {self.timeout_s}s"
            if not isinstance(exc, TimeoutError):
                reason = f"broker unreachable: {type(exc).__name__}"
            return TopicVerdict(False, reason, "unreachable", started_at=started)
        verdict = judge_topics(
            present, self.names, self.settings.kafka_topic_partitions, exempt=self._exempt
        )
        return TopicVerdict(verdict.ok, verdict.reason, verdict.kind, verdict.missing, started)

    async def _present(self) -> dict[str, int]:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**client_options(self.settings))
            try:
                await admin.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await admin.close()
                raise
            self._admin = admin
        return await present_topics(self._admin)

    async def _drop_admin(self) -> None:
        admin, self._admin = self._admin, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(admin.close(), self.timeout_s)

    def _record(self, verdict: TopicVerdict) -> None:
        if self._last is None or verdict.started_at >= self._last.started_at:
            self._last = verdict
        metrics.KAFKA_TOPICS_OK.labels(self.service).set(1 if verdict.ok else 0)
        if not verdict.ok:
            self.unstable_at = time.monotonic()
            metrics.KAFKA_TOPIC_CHECKS_FAILED.labels(self.service, verdict.kind).inc()
        # Once per change of state, not per check: a 3 a.m. log must stay readable.
        if verdict.ok != self._logged_ok:
            if verdict.ok:
                if self._logged_ok is not None:
                    log.warning("topics usable again", extra={"service": self.service})
            else:
                log.error(
                    "topics not usable",
                    extra={"service": self.service, "reason": verdict.reason, "kind": verdict.kind},
                )
            self._logged_ok = verdict.ok

    async def run_periodic(self, interval_s: float) -> None:
        """Re-check every ``interval_s`` until cancelled (keeps the gauge and cache fresh)."""
        while True:
            with contextlib.suppress(Exception):
                await self.check()
            await asyncio.sleep(interval_s)

    async def close(self) -> None:
        """Close the admin client (and wait for a check in flight)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        async with self._lock:
            await self._drop_admin()


class OffsetLedger:
    """The last offset the broker acknowledged per partition: acks must move forward.

    A broker acknowledges each record with its offset in the partition's log, and
    the offsets of one partition only grow while the log exists. An acknowledged
    offset at or below one acknowledged before means the log was lost and started
    again: a broker restarted with memory storage, a topic deleted and re-created,
    an unclean leader election. Tansu (memory storage) even acknowledges records for
    a topic it no longer has, storing nothing, at offset 0. Such an acknowledgement
    proves nothing is held: the producer's caller must not report success.

    ``observe`` is called in the order the acks arrive (aiokafka keeps one batch
    per partition in flight), so concurrent requests never look out of order.
    Other producers' records (other replicas) only make the offsets grow faster.
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, int], int] = {}

    def observe(self, topic: str, partition: int, offset: int) -> bool:
        """Record an acknowledged offset; False if it did not move forward.

        After a regression the ledger starts over from the new offset, so the
        next acknowledgement in the new log is judged against the new log.
        """
        key = (topic, partition)
        last = self._last.get(key)
        self._last[key] = offset
        return last is None or offset > last
