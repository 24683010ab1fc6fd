"""``python -m bench [--quick]``: run the benchmarks, write bench/results.{json,md}.

Each figure is the median of several repetitions and stands beside the limit it
is measured against in the same run, because absolute times on a shared
machine drift.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import psutil
from sqlalchemy import func, select

from churnwatch.embedded import EmbeddedBroker, EmbeddedPostgres, free_port
from churnwatch.migrate import upgrade
from churnwatch.synth import generate
from services.scoring.engine import EngineParams, Scorer, run_in_memory
from services.scoring.features import State, apply_event, new_state, vector
from services.scoring.model import ChurnModel, ModelParams
from services.scoring.models import features
from services.scoring.service import save_checkpoint
from services.scoring.settings import ScoringSettings
from shared.db import create_engine
from shared.events import Event, parse_event
from shared.kafka import ensure_topics, make_producer
from shared.topics import Topics

ROOT = Path(__file__).resolve().parent.parent


def trained_model() -> bytes:
    """A model trained on a separate history, so every run scores with a real model.

    The benchmark's own populations are too short for labels to resolve; without
    this the service would score with the prior alone and never call the model.
    """
    history = generate(subscribers=600, days=100, seed=99, warning_days=(30, 40))
    scorer = Scorer(EngineParams(), ChurnModel(ModelParams()))
    run_in_memory(scorer, [parse_event(e) for e in history.events])
    assert scorer.model.weight > 0, "the warm-up model learned nothing"
    return scorer.model.dumps()


def bare_limit(events: list[Event], blob: bytes) -> float:
    """Events/s of the limit the issue names, with no Kafka and no database.

    Per event: the feature update and the same (trained) River pipeline's
    ``predict_proba_one``.
    """
    pipeline = ChurnModel.loads(ModelParams(), blob).pipeline
    states: dict[str, State] = {}
    start = time.perf_counter()
    for event in events:
        state = states.get(event.subscriber_id)
        if state is None:
            state = states[event.subscriber_id] = new_state()
        apply_event(state, event)
        pipeline.predict_proba_one(vector(state))
    return len(events) / (time.perf_counter() - start)


def engine_alone(events: list[Event], blob: bytes) -> float:
    """Events/s of the whole engine in memory (coalescing, labels, learning)."""
    scorer = Scorer(EngineParams(), ChurnModel.loads(ModelParams(), blob))
    start = time.perf_counter()
    run_in_memory(scorer, events, batch_size=2000)
    return len(events) / (time.perf_counter() - start)


async def _produce(settings: ScoringSettings, raw: list[dict[str, Any]], blob: bytes) -> None:
    await ensure_topics(settings)
    engine = create_engine(settings)
    try:
        async with engine.begin() as conn:  # the service resumes from this checkpoint
            await save_checkpoint(
                conn,
                name=settings.scoring_model_name,
                now=datetime.now(UTC),
                model=ChurnModel.loads(settings.model_params(), blob),
                keep=1,
            )
    finally:
        await engine.dispose()
    producer = make_producer(settings, linger_ms=20, max_batch_size=256 * 1024)
    await producer.start()
    try:
        topic = Topics(settings.kafka_topic_prefix).events
        futures = [
            await producer.send(
                topic,
                key=e["subscriber_id"].encode(),
                value=orjson.dumps(e),
                headers=[("event_type", e["event_type"].encode())],
            )
            for e in raw
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def _wait_applied(
    settings: ScoringSettings, process: subprocess.Popen[bytes], base: int, target: int
) -> dict[str, float]:
    """Poll the applied-event count (one connection, every 0.1 s) until ``target``."""
    engine = create_engine(settings)
    query = select(func.coalesce(func.sum(features.c.events_applied), 0))
    peak_rss, first_at, first_count = 0, None, 0
    deadline = time.monotonic() + 600
    try:
        async with engine.connect() as conn:
            while True:
                count = int(await conn.scalar(query) or 0)
                await conn.commit()  # a fresh snapshot for the next poll
                now = time.perf_counter()
                peak_rss = max(peak_rss, psutil.Process(process.pid).memory_info().rss)
                if first_at is None and count > base:
                    first_at, first_count = now, count
                if count >= target:
                    break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("scoring did not finish the benchmark")
                await asyncio.sleep(0.1)
    finally:
        await engine.dispose()
    assert first_at is not None
    return {"eps": (target - first_count) / max(now - first_at, 1e-9), "rss": float(peak_rss)}


def scoring_service(
    env: dict[str, str], raw: list[dict[str, Any]], base: int, blob: bytes
) -> dict[str, float]:
    """Events/s through one `python -m services.scoring` process with PostgreSQL.

    The events are on the topic before the process starts; the clock runs from
    the first applied event to the last, so start-up and the group join are not
    counted. Also reports the process's peak resident memory.
    """
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    environ = {
        **os.environ,
        **env,
        "KAFKA_TOPIC_PREFIX": prefix,
        "SCORING_CONSUMER_GROUP": f"g-{prefix}",
        "SCORING_MODEL_NAME": prefix,
        "SCORING_PORT": str(free_port()),
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }
    fields: dict[str, Any] = {
        k.lower(): v for k, v in environ.items() if k.lower() in ScoringSettings.model_fields
    }
    settings = ScoringSettings(**fields)
    asyncio.run(_produce(settings, raw, blob))
    target = base + len(raw)
    process = subprocess.Popen(
        [sys.executable, "-m", "services.scoring"],
        env=environ,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return asyncio.run(_wait_applied(settings, process, base, target))
    finally:
        process.terminate()
        process.wait(60)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    return {
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def commit() -> str:
    """The commit measured (with '+dirty' when the tree has changes)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return head + ("+dirty" if dirty else "")


def main() -> None:
    """Run the benchmarks and write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller population")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions (median reported)")
    args = parser.parse_args()
    subscribers, days = (2000, 35) if args.quick else (5000, 45)

    blob = trained_model()
    raw = generate(subscribers=subscribers, days=days, seed=5).events
    events = [parse_event(e) for e in raw]
    print(f"population: {subscribers} subscribers x {days} days = {len(raw)} events", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        broker = None if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") else EmbeddedBroker().start()
        postgres = (
            None
            if os.environ.get("DATABASE_URL")
            else EmbeddedPostgres(Path(tmp) / "pg", delete_on_stop=True).start()
        )
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
            or (broker.bootstrap_servers if broker else ""),
            "DATABASE_URL": os.environ.get("DATABASE_URL") or (postgres.url if postgres else ""),
        }
        try:
            upgrade(env["DATABASE_URL"])
            limits, engines, service, rss = [], [], [], []
            base = 0
            for run in range(args.repeat):
                limits.append(bare_limit(events, blob))
                engines.append(engine_alone(events, blob))
                # Fresh subscriber ids each run, so every run starts from empty state.
                run_raw = [
                    {
                        **e,
                        "subscriber_id": f"r{run}-{e['subscriber_id']}",
                        "event_id": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{run}|{e['event_id']}")),
                    }
                    for e in raw
                ]
                result = scoring_service(env, run_raw, base, blob)
                base += len(run_raw)
                service.append(result["eps"])
                rss.append(result["rss"])
                print(
                    f"run {run + 1}: bare limit {limits[-1]:,.0f} ev/s, engine alone "
                    f"{engines[-1]:,.0f} ev/s, service {service[-1]:,.0f} ev/s",
                    flush=True,
                )
        finally:
            if broker:
                broker.stop()
            if postgres:
                postgres.stop()

    scoring_eps, limit_eps = statistics.median(service), statistics.median(limits)
    results = {
        "scoring_eps": round(scoring_eps),
        "scoring_limit_eps": round(limit_eps),
        "scoring_ratio": round(scoring_eps / limit_eps, 3),
        "scoring_target_eps": 10_000,
        "scoring_target_ratio": 0.4,
        "scoring_runs_eps": [round(v) for v in service],
        "scoring_limit_runs_eps": [round(v) for v in limits],
        "scoring_engine_alone_eps": round(statistics.median(engines)),
        "scoring_rss_bytes_per_subscriber": round(statistics.median(rss) / subscribers),
        "events": len(raw),
        "subscribers": subscribers,
        "repetitions": args.repeat,
        "quick": args.quick,
        "machine": machine(),
        "commit": commit(),
    }
    out = ROOT / "bench"
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(
        "# Benchmark results\n\n"
        f"Commit `{results['commit']}`, {results['machine']['cores']} cores, "
        f"{results['events']:,} events of {subscribers:,} subscribers, "
        f"median of {args.repeat} runs{' (quick)' if args.quick else ''}.\n\n"
        "| figure | value | limit (same run) | ratio | target |\n|---|---|---|---|---|\n"
        f"| scoring, one process with PostgreSQL (events/s) | {scoring_eps:,.0f} | "
        f"{limit_eps:,.0f} (per event: feature update + predict_proba_one; no Kafka, no DB) "
        f"| {scoring_eps / limit_eps:.2f} | ≥ 10,000 ev/s and ≥ 0.4 |\n"
        f"| scoring engine alone, in memory (events/s) | "
        f"{results['scoring_engine_alone_eps']:,} | | | for reference |\n"
        f"| scoring resident memory per tracked subscriber (bytes) | "
        f"{results['scoring_rss_bytes_per_subscriber']:,} | | | |\n"
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
