"""Scoring figures: bare limit, one and two service processes, footprint, cost of growth."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import text

from bench.common import (
    Proc,
    Stack,
    fresh_prefix,
    run,
    send_raw,
    service_setting,
    start,
    table_bytes,
    wait_ready,
)
from churnwatch.embedded import stop_processes
from churnwatch.synth import generate
from services.scoring.batch import run_in_memory
from services.scoring.features import State, apply_event, new_state, vector
from services.scoring.model import ChurnModel, ModelParams
from services.scoring.scorer import EngineParams, Scorer
from services.scoring.service import save_checkpoint
from services.scoring.settings import ScoringSettings
from shared.db import create_engine
from shared.events import Event, parse_event
from shared.kafka import ensure_topics, make_producer
from shared.topics import Topics

Raw = dict[str, Any]


def trained_model() -> bytes:
    """A model trained on a separate history, so every re-score calls a trained pipeline.

    The benchmark's own populations are too short for labels to resolve; without
    this the model would have learned nothing and the service would never call
    it. Once it has learned, every re-score calls ``predict_proba_one`` (for the
    blend and the champion/challenger comparison with the prior), whatever the
    model's current weight in the served score.
    """
    history = generate(subscribers=300, days=75, seed=99, warning_days=(30, 40))
    scorer = Scorer(EngineParams(), ChurnModel(ModelParams()))
    run_in_memory(scorer, [parse_event(e) for e in history.events])
    model = scorer.model
    if not model.positives_seen or model.labels_seen == model.positives_seen:
        raise RuntimeError("the warm-up history gave the model no labels of both classes")
    return model.dumps()


def bare_limit(events: Sequence[Event], blob: bytes) -> float:
    """Events/s of the limit the issue names, with no Kafka and no database.

    Per event: the feature update and the same (trained) River pipeline's
    ``predict_proba_one``.
    """
    pipeline = ChurnModel.loads(ModelParams(), blob).pipeline
    states: dict[str, State] = {}
    begin = time.perf_counter()
    for event in events:
        state = states.get(event.subscriber_id)
        if state is None:
            state = states[event.subscriber_id] = new_state()
        apply_event(state, event)
        pipeline.predict_proba_one(vector(state))
    return len(events) / (time.perf_counter() - begin)


def engine_alone(events: Sequence[Event], blob: bytes) -> float:
    """Events/s of the whole engine in memory (coalescing, labels, learning)."""
    scorer = Scorer(EngineParams(), ChurnModel.loads(ModelParams(), blob))
    begin = time.perf_counter()
    run_in_memory(scorer, list(events), batch_size=2000)
    return len(events) / (time.perf_counter() - begin)


def relabel(raw: Sequence[Raw], tag: str) -> list[Raw]:
    """The same events under fresh subscriber and event ids, so a run starts from empty state."""
    return [
        {
            **e,
            "subscriber_id": f"{tag}-{e['subscriber_id']}",
            "event_id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{tag}|{e['event_id']}")),
        }
        for e in raw
    ]


async def store_model(stack: Stack, prefix: str, blob: bytes) -> None:
    """Store the trained model as the checkpoint the processes under ``prefix`` resume from."""
    settings = stack.settings(prefix)
    engine = create_engine(settings)
    try:
        async with engine.begin() as conn:
            await save_checkpoint(
                conn,
                name=prefix[:64],
                now=datetime.now(UTC),
                model=ChurnModel.loads(ModelParams(), blob),
                keep=1,
            )
    finally:
        await engine.dispose()


async def produce(stack: Stack, prefix: str, raw: Sequence[Raw]) -> list[str]:
    """Produce ``raw`` to ``<prefix>.events``; return the last event id of each partition.

    Scoring consumes each partition in order, so once these ids are in
    ``scoring.processed_events`` (written in the batch's transaction) every
    event before them is stored too.
    """
    settings = stack.settings(prefix)
    await ensure_topics(settings)
    producer = make_producer(settings, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        topic = Topics(prefix).events
        sent = await send_raw(producer, topic, raw)
    finally:
        await producer.stop()
    last: dict[int, tuple[int, str]] = {}
    for meta, e in zip(sent, raw, strict=True):
        if meta.partition not in last or meta.offset > last[meta.partition][0]:
            last[meta.partition] = (meta.offset, e["event_id"])
    return [event_id for _, event_id in last.values()]


@dataclass
class Throughput:
    """One measured scoring run."""

    eps: float
    seconds: float
    peak_rss: int


async def until_done(
    stack: Stack, procs: Sequence[Proc], count: int, tail_ids: Sequence[str]
) -> Throughput:
    """Clock the processes from the moment all of them apply events until the tail is stored.

    Start: the first poll at which every process's ``churnwatch_scoring_events_total``
    is above zero (so start-up and the consumer-group join are not counted; with
    two processes the rebalance is over by then). End: every partition's last
    event id is in ``scoring.processed_events``, i.e. committed.
    """
    engine = create_engine(stack.settings())
    query = text("SELECT count(*) FROM scoring.processed_events WHERE event_id = ANY(:ids)")
    ids = [uuid.UUID(i) for i in tail_ids]
    first_at: float | None = None
    first_count = 0.0
    peak = 0
    deadline = time.monotonic() + 900
    try:
        async with engine.connect() as conn, httpx.AsyncClient(timeout=5) as client:
            while True:
                counts = [await _scrape(client, p.url) for p in procs]
                now = time.perf_counter()
                peak = max(peak, sum(p.rss() for p in procs))
                if first_at is None and all(c > 0 for c in counts):
                    first_at, first_count = now, sum(counts)
                if first_at is not None and sum(counts) >= count:
                    done = int(await conn.scalar(query, {"ids": ids}) or 0)
                    await conn.commit()  # a fresh snapshot for the next poll
                    if done == len(ids):
                        break
                for proc in procs:
                    if proc.process.poll() is not None:
                        raise RuntimeError(f"{proc.name} exited during the benchmark")
                if time.monotonic() > deadline:
                    raise TimeoutError("scoring did not finish the benchmark in 15 minutes")
                await asyncio.sleep(0.05)  # poll interval of the clock, not synchronisation
    finally:
        await engine.dispose()
    assert first_at is not None
    seconds = max(now - first_at, 1e-9)
    return Throughput(eps=(count - first_count) / seconds, seconds=seconds, peak_rss=peak)


async def _scrape(client: httpx.AsyncClient, url: str) -> float:
    """Events scoring has handled so far (applied or duplicate), from its /metrics."""
    total = 0.0
    for line in (await client.get(url + "/metrics")).text.splitlines():
        if line.startswith("churnwatch_scoring_events_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def service_run(
    stack: Stack,
    raw: Sequence[Raw],
    blob: bytes,
    *,
    processes: int = 1,
    label: str = "scoring",
    extra_env: dict[str, str] | None = None,
) -> Throughput:
    """Events/s through ``processes`` ``python -m services.scoring`` processes in one group.

    The events are on the topic before the processes start, so the figure is the
    service's own pace, not the producer's.
    """
    prefix = fresh_prefix(label)
    run(store_model(stack, prefix, blob))
    tail_ids = run(produce(stack, prefix, raw))
    environ = stack.environ(prefix, **(extra_env or {}))
    procs = [start(stack, "scoring", environ) for _ in range(processes)]
    try:
        wait_ready(procs)
        result: Throughput = run(until_done(stack, procs, len(raw), tail_ids))
        return result
    finally:
        stop_processes(procs)


# --- footprint and cost of growth: many subscribers with realistic stored state ------


def template_events(days: int, subscribers: int) -> tuple[list[Raw], dict[str, list[Raw]]]:
    """A short synthetic history and, per subscriber, its last events shifted a day later.

    The history gives realistic stored states to copy; the shifted events are what
    the copies receive in the footprint and growth runs.
    """
    raw = generate(subscribers=subscribers, days=days, seed=11, id_prefix="TPL").events
    follow: dict[str, list[Raw]] = {}
    for e in reversed(raw):
        mine = follow.setdefault(e["subscriber_id"], [])
        if len(mine) < 3 and e["event_type"] != "churn":
            shifted = datetime.fromisoformat(e["occurred_at"]) + timedelta(days=1)
            mine.append({**e, "occurred_at": shifted.isoformat()})
    return raw, follow


async def populate(stack: Stack, *, templates: str, copies: str, count: int) -> None:
    """Insert ``count`` feature rows ``<copies>-<n>``, each a copy of a stored template state.

    Done inside PostgreSQL (INSERT ... SELECT over generate_series), so a million
    subscribers take seconds rather than a million events through the service.
    Copy ``n`` gets template ``n mod T`` (templates ordered by subscriber id).
    """
    engine = create_engine(stack.settings())
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO scoring.features "
                    "(subscriber_id, state, blob, events_applied, score, updated_at) "
                    "SELECT :copies || '-' || g, t.state, t.blob, 0, t.score, now() "
                    "FROM generate_series(0, :count - 1) AS g "
                    "JOIN (SELECT row_number() OVER (ORDER BY subscriber_id) - 1 AS k, "
                    "state, blob, score FROM scoring.features WHERE subscriber_id LIKE :like) AS t "
                    "ON t.k = g % (SELECT count(*) FROM scoring.features "
                    "WHERE subscriber_id LIKE :like) "
                    "ON CONFLICT (subscriber_id) DO NOTHING"
                ),
                {"copies": copies, "count": count, "like": f"{templates}-%"},
            )
            await conn.execute(text("ANALYZE scoring.features"))
    finally:
        await engine.dispose()


def copy_events(
    follow: dict[str, list[Raw]],
    *,
    copies: str,
    targets: Sequence[int],
) -> list[Raw]:
    """One event per entry of ``targets`` (copy numbers), from that copy's template."""
    names = sorted(follow)  # the order populate() numbers the templates in
    out = []
    for j, n in enumerate(targets):
        source = follow[names[n % len(names)]]
        e = source[j % len(source)]
        out.append(
            {
                **e,
                "subscriber_id": f"{copies}-{n}",
                "event_id": str(uuid.uuid4()),
            }
        )
    return out


@dataclass
class Templates:
    """Stored template states under subscriber ids ``<tag>-TPL-...``."""

    tag: str
    follow: dict[str, list[Raw]]


def make_templates(stack: Stack, blob: bytes, *, subscribers: int, days: int) -> Templates:
    """Run a short history through the service once, leaving realistic stored states."""
    raw, follow = template_events(days, subscribers)
    tag = fresh_prefix("tpl")
    service_run(stack, relabel(raw, tag), blob, label="tpl")
    return Templates(tag, {f"{tag}-{sid}": events for sid, events in follow.items()})


def footprint_warm_up() -> int:
    """Events before the first RSS reading: two of the scoring process's largest batches.

    A batch's working set (its parsed events, decoded states, feature vectors,
    the fetch buffers: about 40 MB at 5,000 events of distinct subscribers) is
    allocated once and reused by every later batch, but the allocators keep it
    after the batch, so it is in RSS from the largest batch on. With a warm-up
    smaller than a batch (2,000 events until 2026-12-07) it was counted as if it
    grew with the subscribers: 1,139 bytes a subscriber against 731 with this
    warm-up, the same code (docs/performance.md).
    """
    return 2 * int(service_setting(ScoringSettings, "scoring_batch_max_records", os.environ))


def footprint_run(
    stack: Stack, blob: bytes, templates: Templates, *, subscribers: int, warm: int | None = None
) -> dict[str, float]:
    """RSS and PostgreSQL bytes per tracked subscriber.

    ``subscribers`` copies of the template states are stored, then one scoring
    process (state cache big enough to keep them all) receives one event for each:
    ``warm`` of them first (default ``footprint_warm_up()``: so that one-off
    allocations, the batch's working set among them, are not counted), then the
    rest. RSS growth over the rest, divided by their number, is the per-subscriber
    cost.
    """
    warm = footprint_warm_up() if warm is None else warm
    prefix = fresh_prefix("foot")
    copies = f"{prefix}-c"
    before = run(table_bytes(stack, ["scoring"]))
    run(populate(stack, templates=templates.tag + "-TPL", copies=copies, count=subscribers + warm))
    order = list(range(subscribers + warm))
    random.Random(3).shuffle(order)
    first = copy_events(templates.follow, copies=copies, targets=order[:warm])
    rest = copy_events(templates.follow, copies=copies, targets=order[warm:])
    run(store_model(stack, prefix, blob))
    first_tail = run(produce(stack, prefix, first))
    environ = stack.environ(prefix, SCORING_STATE_CACHE_SIZE=str(subscribers + warm + 1000))
    [proc] = procs = [start(stack, "scoring", environ)]
    try:
        wait_ready(procs)
        run(until_done(stack, procs, len(first), first_tail))
        rss_before = proc.rss()
        rest_tail = run(produce(stack, prefix, rest))
        run(until_done(stack, procs, len(first) + len(rest), rest_tail))
        rss_after = proc.rss()
    finally:
        stop_processes(procs)
    after = run(table_bytes(stack, ["scoring"]))
    return {
        "rss_bytes_per_subscriber": (rss_after - rss_before) / subscribers,
        "rss_before": float(rss_before),
        "rss_after": float(rss_after),
        "pg_bytes_per_subscriber": (after - before) / (subscribers + warm),
    }


@dataclass(frozen=True)
class WalCounters:
    """PostgreSQL's WAL position in bytes and full-page images written so far."""

    position: int
    full_pages: int

    def __sub__(self, other: WalCounters) -> WalCounters:
        return WalCounters(self.position - other.position, self.full_pages - other.full_pages)


async def wal_counters(stack: Stack, *, checkpoint: bool = False) -> WalCounters:
    """The WAL written so far (the difference of two is a run's), after a checkpoint if asked.

    ``checkpoint``: start a checkpoint cycle first, so that the next run pays a
    full-page image for the first change of every page it touches (the worst
    case; docs/capacity.md derives the steady state from it). Full-page images
    are counted by ``pg_stat_wal``, which a backend updates when it exits: the
    caller reads after the run's processes are stopped, and this waits for their
    backends to be gone.
    """
    engine = create_engine(stack.settings())
    try:
        async with engine.connect() as conn:
            others = text(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
            for _ in range(200):
                if not await conn.scalar(others):
                    break
                await asyncio.sleep(0.05)
            if checkpoint:
                await conn.execute(text("CHECKPOINT"))
                await conn.commit()
            row = (
                await conn.execute(
                    text(
                        "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, "
                        "(SELECT wal_fpi FROM pg_stat_wal)"
                    )
                )
            ).one()
            return WalCounters(int(row[0]), int(row[1]))
    finally:
        await engine.dispose()


async def set_full_page_writes(stack: Stack, *, on: bool) -> None:
    """Turn ``full_page_writes`` on or off (a reload; the benchmark's own server only).

    Off, the WAL holds only the records themselves: what a run writes then is
    the WAL per event without full-page images.
    """
    engine = create_engine(stack.settings())
    try:
        async with engine.connect() as conn:
            # ALTER SYSTEM refuses a transaction block.
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            value = "RESET full_page_writes" if on else "SET full_page_writes = off"
            await conn.execute(text(f"ALTER SYSTEM {value}"))
            await conn.execute(text("SELECT pg_reload_conf()"))
    finally:
        await engine.dispose()


def growth_events(
    templates: Templates, *, copies: str, population: int, events: int, seed: int
) -> list[Raw]:
    """``events`` events, each to a subscriber drawn uniformly from ``population`` copies."""
    rng = random.Random(seed)
    targets = [rng.randrange(population) for _ in range(events)]
    return copy_events(templates.follow, copies=copies, targets=targets)


def growth_populate(stack: Stack, templates: Templates, size: int) -> str:
    """Store ``size`` copies of the template states; return their id prefix."""
    copies = f"{templates.tag}-g{size}"
    run(populate(stack, templates=templates.tag + "-TPL", copies=copies, count=size))
    return copies
