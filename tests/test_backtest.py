"""The backtest: report files, determinism, the live services' scores, the baseline, bad input."""

from __future__ import annotations

import io
import json
import math
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console
from sqlalchemy import select

from churnwatch.backtest import (
    BacktestError,
    Replay,
    Result,
    Truth,
    alerting_messages,
    batches,
    load_events,
    load_truth,
    resolve_order,
    run_backtest,
)
from churnwatch.backtest_command import main
from churnwatch.backtest_metrics import metrics, offline_baseline
from churnwatch.report import write_report
from churnwatch.synth import generate, write_ndjson
from services.alerting.batch import Message
from services.alerting.consumer import AlertingHandler
from services.alerting.rule_engine import RuleEngine
from services.alerting.rules import DEFAULT_RULES_FILE, load_rules, parse_rules
from services.alerting.tables import alerts, tasks
from services.scoring.consumer import ScoringHandler, ScoringInput
from services.scoring.settings import ScoringSettings
from services.scoring.tables import features
from shared.consumer import Inbound
from shared.db import create_engine
from shared.events import OutreachTask, TaskUpdate, parse_event
from shared.kafka import ensure_topics, make_producer
from shared.outbox import Outbox
from shared.topics import Topics

FIGURES = {
    "per_subscriber_roc_auc",
    "per_subscriber_roc_auc_ci",
    "per_subscriber_log_loss",
    "per_subscriber_brier",
    "expected_calibration_error",
    "per_subscriber",
    "calibration",
    "feature_importance",
    "learning_curve",
    "pooled_snapshot_roc_auc",
    "pooled_snapshot_log_loss",
    "pooled_offline_roc_auc",
    "pooled_auc_ratio",
    "pooled_prior_roc_auc",
    "precision_at_capacity",
    "capacity_k",
    "lead_time_median_days",
    "share_alerted_7d",
    "share_alerted_7d_with_warning_signs",
    "reminder_before_suspension_rate",
    "tasks_per_manager_per_day",
    "labels",
    "positive_labels",
    "churners",
    "events",
    "subscribers",
}


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    population = generate(subscribers=150, days=90, seed=21, churn_rate=0.25)
    path = tmp_path_factory.mktemp("bt") / "history.ndjson"
    write_ndjson(population, path)
    return path


@pytest.fixture(scope="module")
def replayed(history: Path) -> tuple[Result, list[float], dict[str, Any]]:
    result = run_backtest([history])
    offline = offline_baseline(result.examples, seed=42)
    return result, offline, metrics(result, offline=offline)


def test_the_report_has_every_file_and_figure(
    replayed: tuple[Result, list[float], dict[str, Any]], tmp_path: Path
) -> None:
    result, offline, figures = replayed
    written = write_report(result, figures, offline, tmp_path)
    names = {p.name for p in written}
    assert {"metrics.json", "index.html", "roc.png", "lead_time.png"} <= names
    for name in (
        "prequential",
        "within_day",
        "roc",
        "gains",
        "calibration",
        "importance",
        "precision_at_k",
        "lead_time",
    ):
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"
        assert f'src="{name}.png"' in (tmp_path / "index.html").read_text()
    stored = json.loads((tmp_path / "metrics.json").read_text())
    assert stored.keys() >= FIGURES
    assert stored["labels"] > 1000 and stored["positive_labels"] > 50
    # A history: the headline is the AUC within each scoring day, with its interval.
    assert stored["per_subscriber"]["method"] == "within_day"
    lo, hi = stored["per_subscriber_roc_auc_ci"]
    assert 0.5 < lo < stored["per_subscriber_roc_auc"] < hi <= 1
    assert 0 <= stored["expected_calibration_error"] < 1
    assert len(stored["calibration"]["bins"]) == 10
    assert stored["feature_importance"]["features"][0]["mean_abs_contribution"] > 0
    assert 0.5 < stored["pooled_snapshot_roc_auc"] <= 1
    assert 0.5 < stored["pooled_offline_roc_auc"] <= 1
    assert stored["pooled_auc_ratio"] == pytest.approx(
        stored["pooled_snapshot_roc_auc"] / stored["pooled_offline_roc_auc"]
    )
    assert "snapshot" in stored["pooled_note"] and stored["not_meaningful_for_a_table"] == []
    assert stored["lead_time_median_days"] > 0
    assert stored["precision_at_capacity"]["mean"] is not None
    # No warning-sign column in this truth: said so, not guessed.
    assert stored["share_alerted_7d_with_warning_signs"] is None


def test_same_input_same_metrics_whatever_the_file_order(
    history: Path, replayed: tuple[Result, list[float], dict[str, Any]], tmp_path: Path
) -> None:
    lines = history.read_text().splitlines()
    shuffled = tmp_path / "shuffled.ndjson"
    shuffled.write_text("\n".join(reversed(lines)) + "\n")
    again = run_backtest([shuffled])
    figures = metrics(again, offline=offline_baseline(again.examples, seed=42))
    assert orjson.dumps(figures, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
        replayed[2], option=orjson.OPT_SORT_KEYS
    )
    assert again.final_scores == replayed[0].final_scores
    # Every event twice (the same file given again): applied once, as the services do.
    doubled = run_backtest([shuffled, history])
    assert doubled.duplicates == len(lines)
    assert doubled.final_scores == replayed[0].final_scores


def test_the_offline_baseline_gives_out_of_fold_probabilities(
    replayed: tuple[Result, list[float], dict[str, Any]],
) -> None:
    result, offline, _ = replayed
    assert len(offline) == len(result.examples)
    assert all(0.0 <= p <= 1.0 for p in offline)
    assert len(set(offline)) > 10  # really fitted, not the base rate


def test_one_moment_table_is_replayed_subscriber_by_subscriber(tmp_path: Path) -> None:
    population = generate(subscribers=40, days=60, seed=4, churn_rate=0.3)
    events = tmp_path / "t.ndjson"
    write_ndjson(population, events)
    truth = tmp_path / "truth.csv"
    rows = ["subscriber_id,churned,churn_at,kind"]
    for s in population.subscribers:
        at = population.churn_at.get(s)
        rows.append(f"{s},{int(at is not None)},{at.isoformat() if at else ''},port_out")
    truth.write_text("\n".join(rows) + "\n")
    assert load_truth(truth)[population.subscribers[0]].churned in (True, False)
    result = run_backtest([events], truth_file=truth, order="subscriber")
    assert result.order == "subscriber"
    # Every non-churner's pending snapshot closes as an end-of-data negative.
    assert result.unresolved == 0
    ends = [e for e in result.examples if e.source == "end"]
    assert ends and not any(e.label for e in ends)
    # The same truth on a history in time order: a non-churner's snapshot younger
    # than the horizon at the end stays unlabelled (they may churn afterwards).
    history = run_backtest([events], truth_file=truth)
    assert history.order == "time" and history.unresolved > 0
    last = history.end.timestamp()
    assert all(last - e.at > history.horizon_s for e in history.examples if e.source == "end")


def test_auto_order_tells_a_one_moment_table_from_a_history(tmp_path: Path) -> None:
    population = generate(subscribers=30, days=60, seed=4, churn_rate=0.3)
    events = [parse_event(e) for e in population.events]
    assert resolve_order("auto", events, None) == "time"  # churns spread over time
    moment = datetime(2026, 7, 1, tzinfo=UTC)
    table = {
        s: Truth(True, moment) if i % 3 == 0 else Truth(False, None)
        for i, s in enumerate(population.subscribers)
    }
    no_churn_events = [e for e in events if e.event_type != "churn"]
    assert resolve_order("auto", no_churn_events, table) == "subscriber"
    assert resolve_order("time", no_churn_events, table) == "time"
    # The simulator's truth names the warning-sign column "warned".
    path = _write(
        tmp_path / "sim.csv",
        ["subscriber_id,churned,churn_at,kind,tier,warned", "A,1,2026-02-01T00:00:00Z,x,gold,1"],
    )
    assert load_truth(path)["A"] == Truth(True, datetime(2026, 2, 1, tzinfo=UTC), True)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_input_names_the_file_and_line(history: Path, tmp_path: Path) -> None:
    with pytest.raises(BacktestError, match=r"nope\.ndjson: cannot read"):
        load_events([tmp_path / "nope.ndjson"])
    good = history.read_text().splitlines()[0]
    bad = _write(tmp_path / "bad.ndjson", [good, '{"event_type": "cdr"}'])
    with pytest.raises(BacktestError, match=r"bad\.ndjson:2: not a valid event"):
        load_events([bad])
    broken = _write(tmp_path / "broken.ndjson", [good, "", "{not json"])
    with pytest.raises(BacktestError, match=r"broken\.ndjson:3: not a valid event"):
        load_events([broken])
    truth = _write(tmp_path / "truth.csv", ["subscriber_id,churned,churn_at", "A,1,"])
    with pytest.raises(BacktestError, match=r"truth\.csv:2: churned without a churn_at"):
        load_truth(truth)
    out = io.StringIO()
    code = main(
        [bad],
        report=None,
        rules_file=None,
        truth_file=None,
        seed=1,
        capacity=None,
        order="auto",
        window_hours=24,
        console=Console(file=out, width=200),
    )
    assert code == 2 and "bad.ndjson:2" in out.getvalue()


@pytest.mark.asyncio(loop_scope="session")
async def test_the_backtest_and_the_live_service_give_the_same_scores(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """The same batches through scoring's real handler (PostgreSQL, Kafka) and the backtest."""
    population = generate(subscribers=40, days=80, seed=9, churn_rate=0.3)
    path = tmp_path / "live.ndjson"
    write_ndjson(population, path)
    # A low min_labels: the champion/challenger check judges the model early in this
    # short history, so the learned model's own predictions are compared too.
    settings = ScoringSettings(
        **env, scoring_model_name=f"bt-{uuid.uuid4().hex[:8]}", scoring_min_labels=30
    )
    events = load_events([path])
    result = run_backtest([path], settings=settings, events=events)
    # The stream part of the replay alone (run_backtest also learns end-of-data
    # labels), to compare the prequential record with the live service's.
    replay = Replay(settings, load_rules(None))
    for batch in batches(
        events,
        order="time",
        seed=42,
        window_s=24 * 3600,
        batch_size=settings.scoring_batch_max_records,
    ):
        replay.step_batch(batch)

    await ensure_topics(settings)
    engine = create_engine(settings)
    producer = make_producer(settings)
    await producer.start()
    try:
        handler = ScoringHandler(settings, Topics(settings.kafka_topic_prefix))
        await handler.load(engine)
        cut = batches(
            events,
            order="time",
            seed=42,
            window_s=24 * 3600,
            batch_size=settings.scoring_batch_max_records,
        )
        for batch in cut:
            items: list[Inbound[ScoringInput]] = [
                Inbound(e, "t", 0, n, 0) for n, e in enumerate(batch)
            ]
            async with engine.begin() as conn:
                outbox = Outbox(producer)
                await handler(conn, items, outbox)
                await outbox.flush()
        async with engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(features.c.subscriber_id, features.c.score).where(
                        features.c.subscriber_id.in_(population.subscribers)
                    )
                )
            ).all()
    finally:
        await producer.stop()
        await engine.dispose()

    live = {r.subscriber_id: r.score for r in rows if r.score is not None}
    # The same labels learnt: step labels by the model, horizon labels by the quality.
    assert handler.model.labels_seen == replay.scorer.model.labels_seen > 0
    stream_examples = [e for e in result.examples if e.source == "stream"]
    assert handler.model.quality.resolved == replay.scorer.model.quality.resolved > 0
    assert len(stream_examples) > 0
    # The same prequential record, down to the model's and the prior's rolling AUCs
    # (prior_lead): the learned model predicted the same for every labelled snapshot.
    assert handler.model.quality is not None and replay.scorer.model.quality is not None
    # (Floats to 1e-9, as the scores below: the rolling sums may add in another order.)
    live_summary, replay_summary = (
        handler.model.quality.summary(),
        replay.scorer.model.quality.summary(),
    )
    assert live_summary.keys() == replay_summary.keys()
    for key, value in live_summary.items():
        if isinstance(value, float):
            assert math.isclose(value, replay_summary[key], rel_tol=1e-9), key
        else:
            assert value == replay_summary[key], key
    assert handler.model.quality.prior_lead() is not None
    assert live.keys() == result.final_scores.keys() and len(live) > 30
    for subscriber, score in live.items():
        assert math.isclose(score, result.final_scores[subscriber], rel_tol=0, abs_tol=1e-9), (
            subscriber
        )


class RecordingOutbox(Outbox):
    """An ``Outbox`` that also keeps what it sent, to compare with the backtest's decisions."""

    def __init__(self, *args: Any, sent: list[Any], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent = sent

    async def send(self, topic: str, *, key: Any, value: Any, headers: Any = None) -> None:
        self.sent.append(value)
        await super().send(topic, key=key, value=value, headers=headers)


ALERT_COLUMNS = (
    "alert_id",
    "subscriber_id",
    "rule",
    "kind",
    "severity",
    "status",
    "held_out",
    "cause_id",
    "fired_at",
    "open_until",
    "amount_due",
    "paid",
    "end_reason",
)


def _comparable(message: OutreachTask | TaskUpdate) -> dict[str, Any]:
    # The live service seals a plain phone before storing the profile; the backtest keeps it.
    return message.model_dump(exclude={"phone"})


@pytest.mark.asyncio(loop_scope="session")
async def test_the_backtest_and_the_live_service_give_the_same_alerts(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """The same events and scores, batch by batch, through alerting's real handler
    (PostgreSQL, Kafka) and the backtest's alerting: the same tasks, updates and alerts."""
    tag = uuid.uuid4().hex[:6].upper()
    population = generate(subscribers=60, days=80, seed=11, churn_rate=0.3, id_prefix=f"AL{tag}")
    path = tmp_path / "alerts.ndjson"
    write_ndjson(population, path)
    # Managers of this test's own: their days' capacity is shared with other tests' tasks.
    path.write_text(path.read_text().replace('"AM-', f'"AM{tag}-'))
    events = load_events([path])
    # No dwell: a dwell rule then fires on the score itself. The backtest's dwell ticks
    # emulate the live sweeper's timer in event time, which a batch handler alone has not.
    # One call a manager a day, so calls spill and bump to the overflow queue.
    text = DEFAULT_RULES_FILE.read_text()
    for old, new in (
        ("dwell: 30m", "dwell: 0s"),
        ("dwell: 2h", "dwell: 0s"),
        ("default_daily_calls: 10", "default_daily_calls: 1"),
    ):
        assert old in text
        text = text.replace(old, new)
    rules = parse_rules(text, source="test")
    settings = ScoringSettings(**env)
    replay = Replay(settings, rules)
    inputs: list[list[Message]] = []
    decided: list[OutreachTask | TaskUpdate] = []
    for batch in batches(
        events,
        order="time",
        seed=42,
        window_s=24 * 3600,
        batch_size=settings.scoring_batch_max_records,
    ):
        fresh, scores = replay.step_batch(batch)  # the scores the backtest's scoring published
        inputs.append(alerting_messages(fresh, scores))
        for decisions in replay.alert_batch(fresh, scores):
            decided.extend(decisions.publish)

    await ensure_topics(settings)
    engine = create_engine(settings)
    producer = make_producer(settings)
    await producer.start()
    sent: list[Any] = []
    try:
        handler = AlertingHandler(RuleEngine(rules), Topics(settings.kafka_topic_prefix))
        for messages in inputs:
            items: list[Inbound[Message | None]] = [
                Inbound(m, "t", 0, n, 0) for n, m in enumerate(messages)
            ]
            async with engine.begin() as conn:
                outbox = RecordingOutbox(producer, sent=sent)
                await handler(conn, items, outbox)
                await outbox.flush()
        async with engine.connect() as conn:
            ids = population.subscribers
            task_rows = await conn.execute(select(tasks).where(tasks.c.subscriber_id.in_(ids)))
            alert_rows = await conn.execute(select(alerts).where(alerts.c.subscriber_id.in_(ids)))
            live_tasks = {r.task_id: r for r in task_rows}
            live_alerts = {
                r.alert_id: tuple(getattr(r, c) for c in ALERT_COLUMNS) for r in alert_rows
            }
    finally:
        await producer.stop()
        await engine.dispose()

    # Every task and update published, in the same order, field for field.
    assert [_comparable(m) for m in sent] == [_comparable(m) for m in decided]
    # Every task stored: the backtest's record (queue after capacity) and the live table.
    assert {
        (t.task_id, t.subscriber_id, t.kind, t.channel, t.rule, t.queue, t.held_out)
        for t in replay.tasks.values()
    } == {
        (r.task_id, r.subscriber_id, r.kind, r.channel, r.rule, r.queue, r.status == "held_out")
        for r in live_tasks.values()
    }
    stored = replay.alert_store.tasks
    assert {k: r.status for k, r in stored.items()} == {k: r.status for k, r in live_tasks.items()}
    # Every alert stored, with how it ended.
    assert {
        a.alert_id: tuple(getattr(a, c) for c in ALERT_COLUMNS)
        for a in replay.alert_store.alerts.values()
    } == live_alerts
    # Non-trivially many, of several kinds, with calls spilled and bumped by capacity.
    records = list(replay.tasks.values())
    assert len(records) > 40 and len(live_alerts) > 40
    assert len({t.kind for t in records}) >= 3
    assert {r.status for r in live_tasks.values()} > {"published"}
    assert any(t.queue == rules.capacity.overflow_queue for t in records)
    assert any(isinstance(m, TaskUpdate) and m.cause.value == "capacity" for m in sent)


def test_the_command_prints_the_headline_and_writes_the_report(
    history: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from churnwatch.cli import app

    done = CliRunner().invoke(
        app, ["backtest", str(history), "--report", str(tmp_path / "r"), "--capacity", "5"]
    )
    assert done.exit_code == 0, done.output
    assert "per_subscriber_roc_auc" in done.output and "pooled_auc_ratio" in done.output
    # The per-subscriber figures come first; the pooled ones are labelled secondary.
    assert done.output.index("per_subscriber_roc_auc") < done.output.index("pooled")
    assert "secondary" in done.output
    stored = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert stored["capacity_k"] == 5
    assert (tmp_path / "r" / "index.html").is_file()
    bad = CliRunner().invoke(app, ["backtest", str(tmp_path / "missing.ndjson")])
    assert bad.exit_code == 2 and "missing.ndjson: cannot read" in bad.output
