"""Backtest: replay event files through the services' own scoring and alerting code.

No Kafka, no database: the same ``Scorer`` (features, snapshots, labels, model,
prior blend) the scoring service runs, batch by batch as its handler does
(step every subscriber of a batch, then learn the labels that resolved), and
the same alerting ``Engine`` over ``SubscriberView``s, with the managers' daily
capacity fitted as alerting's consumer does. The result holds every labelled
snapshot (the score served before its label was known: prequential), every
task, every subscriber's final score and the ground truth; ``metrics`` turns
it into the figures of ``docs/backtest.md`` and ``churnwatch.report`` into a
page with charts.
"""

from __future__ import annotations

import csv
import math
import random
import statistics
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import ValidationError

from services.alerting.engine import (
    Effects,
    Engine,
    Profile,
    SubscriberView,
    allocate,
    capacity_day,
)
from services.alerting.rules import RulesFile, load_rules
from services.alerting.settings import AlertingSettings
from services.scoring.engine import DAY, Scorer, Snapshot
from services.scoring.model import ChurnModel
from services.scoring.settings import ScoringSettings
from shared.events import (
    Event,
    OutreachTask,
    RiskScore,
    ScoreReason,
    StopNoticeEvent,
    SubscriberEvent,
    TaskKind,
    derive_id,
    parse_event,
)

Order = Literal["auto", "time", "subscriber"]
LEAD_WINDOW_DAYS = 60.0
"""Only a retention alert at most this long before a churn counts as warning it."""
EARLY_DAYS = 7.0
"""The "alerted at least this many days ahead" threshold."""


class BacktestError(ValueError):
    """Input the backtest cannot use; the message names the file (and line)."""


# --- input ----------------------------------------------------------------------


def load_events(paths: Sequence[Path]) -> list[Event]:
    """Parse NDJSON event files (our contract, one event per line; blank lines skipped).

    Raises ``BacktestError`` naming the file and line of the first bad one.
    Duplicate ``event_id``s are kept here; the replay applies each id once, as
    the services do.
    """
    events: list[Event] = []
    for path in paths:
        try:
            handle = path.open("rb")
        except OSError as exc:
            raise BacktestError(f"{path}: cannot read: {exc.strerror}") from None
        with handle:
            for lineno, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    events.append(parse_event(line, check_clock=False))
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first.get("loc", ()))
                    what = f"{where}: {first['msg']}" if where else first["msg"]
                    raise BacktestError(f"{path}:{lineno}: not a valid event: {what}") from None
    if not events:
        raise BacktestError(f"no events in {', '.join(str(p) for p in paths)}")
    return events


@dataclass(frozen=True, slots=True)
class Truth:
    """Ground truth from a CSV (``churnwatch import-table --truth``) for one subscriber."""

    churned: bool
    churn_at: datetime | None
    warning_signs: bool | None = None  # an optional column; None when absent


def load_truth(path: Path) -> dict[str, Truth]:
    """Read ``subscriber_id,churned,churn_at[,kind][,warning_signs|warned]``; errors name the line.

    Other columns (the simulator writes more) are ignored.
    """
    out: dict[str, Truth] = {}
    try:
        handle = path.open(encoding="utf-8", newline="")
    except OSError as exc:
        raise BacktestError(f"{path}: cannot read: {exc.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = {"subscriber_id", "churned"} - set(reader.fieldnames or ())
        if missing:
            raise BacktestError(f"{path}:1: missing column(s) {', '.join(sorted(missing))}")
        for row in reader:
            line = reader.line_num
            try:
                churned = row["churned"].strip() in {"1", "true", "True", "yes"}
                at_text = (row.get("churn_at") or "").strip()
                churn_at = datetime.fromisoformat(at_text) if at_text else None
                if churn_at is not None and churn_at.tzinfo is None:
                    churn_at = churn_at.replace(tzinfo=UTC)
                # ``warned`` is the simulator's name for the same column.
                signs_text = (row.get("warning_signs") or row.get("warned") or "").strip()
                signs = None if not signs_text else signs_text in {"1", "true", "yes"}
            except ValueError as exc:
                raise BacktestError(f"{path}:{line}: {exc}") from None
            if churned and churn_at is None:
                raise BacktestError(f"{path}:{line}: churned without a churn_at")
            out[row["subscriber_id"]] = Truth(churned, churn_at, signs)
    return out


def resolve_order(
    order: Order, events: Sequence[Event], truth: dict[str, Truth] | None
) -> Literal["time", "subscriber"]:
    """``auto``: ``subscriber`` for a one-moment table, else ``time``.

    A one-moment table (``import-table`` output) puts every churn at the same
    instant (its ``as_of``): at least two churns are known (``churn`` events or
    the truth table) and they all share one time. A simulator's or an
    operator's history has churns spread over time.
    """
    if order != "auto":
        return order
    moments = {e.occurred_at for e in events if e.event_type == "churn"}
    churns = sum(1 for e in events if e.event_type == "churn")
    for t in (truth or {}).values():
        if t.churn_at is not None:
            moments.add(t.churn_at)
            churns += 1
    return "subscriber" if churns >= 2 and len(moments) == 1 else "time"


def _tie_key(seed: int, event: Event) -> str:
    # Seeded, stable tie-break between events at the same instant: the data has no
    # order among them, and the file order must not decide the result.
    return str(derive_id("backtest", seed, event.event_id))


def batches(
    events: list[Event],
    *,
    order: Literal["time", "subscriber"],
    seed: int,
    window_s: float,
    batch_size: int,
) -> list[list[Event]]:
    """Cut the stream into the batches the scoring handler would get.

    ``time``: every event by ``occurred_at`` (seeded tie-break), cut at each
    ``window_s`` boundary of event time and at ``batch_size`` events: what a
    live stream gives a consumer that keeps up. ``subscriber``: subscribers in
    a seeded shuffled order, each one's events by time, cut the same way, so a
    table whose rows share one moment is replayed one subscriber after another.
    """
    ordered = sorted(events, key=lambda e: (e.occurred_at, _tie_key(seed, e)))
    groups: list[list[Event]]
    if order == "subscriber":
        by_sub: dict[str, list[Event]] = defaultdict(list)
        for e in ordered:
            by_sub[e.subscriber_id].append(e)
        ids = sorted(by_sub)
        random.Random(seed).shuffle(ids)
        groups = [by_sub[s] for s in ids]
    else:
        groups = [ordered]
    out: list[list[Event]] = []
    for group in groups:
        current: list[Event] = []
        bucket: float | None = None
        for e in group:
            b = math.floor(e.occurred_at.timestamp() / window_s)
            if current and (b != bucket or len(current) >= batch_size):
                out.append(current)
                current = []
            bucket = b
            current.append(e)
        if current:
            out.append(current)
    return out


# --- the replay -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Example:
    """One labelled snapshot: the score served before its label was known."""

    subscriber_id: str
    at: float
    x: dict[str, float]
    predicted: float
    prior: float
    model: float | None
    label: bool
    order: int  # when the label resolved (0, 1, ...)
    source: str  # "stream" (the engine resolved it) or "end" (end of the data)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """A task alerting created (after the managers' capacity was fitted)."""

    task_id: uuid.UUID
    subscriber_id: str
    kind: str
    channel: str
    rule: str | None
    queue: str | None
    created_at: datetime
    held_out: bool
    cause_id: uuid.UUID


@dataclass
class Result:
    """Everything the metrics and the report are computed from."""

    events: int
    duplicates: int
    subscribers: int
    batches: int
    order: str
    examples: list[Example]
    unresolved: int
    final_scores: dict[str, float]
    day_scores: dict[date, dict[str, float]]
    tasks: list[TaskRecord]
    churn_at: dict[str, datetime]
    warning_signs: dict[str, bool]
    stop_notices: list[tuple[str, uuid.UUID, datetime, datetime]]  # VIP: id, at, suspension
    managers: set[str]
    start: datetime
    end: datetime
    horizon_s: float
    min_labels: int
    daily_calls: int
    model_summary: dict[str, Any] = field(default_factory=dict)


class Replay:
    """The services' engines over batches, in memory."""

    def __init__(
        self,
        settings: ScoringSettings,
        rules: RulesFile,
        *,
        control_percent: float = 0.0,
        control_salt: str = "churnwatch",
    ) -> None:
        self.settings = settings
        self.scorer = Scorer(settings.engine_params(), ChurnModel(settings.model_params()))
        self.pending: dict[str, dict[float, Snapshot]] = defaultdict(dict)
        self.states: dict[str, Any] = {}
        self.seen: set[uuid.UUID] = set()
        self.duplicates = 0
        self.examples: list[Example] = []
        self.final_scores: dict[str, float] = {}
        self.day_scores: dict[date, dict[str, float]] = defaultdict(dict)
        self.alerting = Engine(rules, control_percent=control_percent, control_salt=control_salt)
        self.views: dict[str, SubscriberView] = {}
        self.dwelling: set[str] = set()
        self.load: dict[tuple[str, date], list[tuple[uuid.UUID, float]]] = defaultdict(list)
        self.tasks: dict[uuid.UUID, TaskRecord] = {}
        self.vip_notices: list[tuple[str, uuid.UUID, datetime, datetime]] = []
        self.managers: set[str] = set()

    # scoring, as ScoringHandler._apply_events does it
    def step_batch(self, batch: list[Event]) -> tuple[list[Event], list[RiskScore]]:
        """One handler batch: step each subscriber once, then learn.

        Returns the batch's new events (an ``event_id`` already applied is
        dropped, as both services do) and the scores published.
        """
        fresh = []
        for e in batch:
            if e.event_id in self.seen:
                self.duplicates += 1
                continue
            self.seen.add(e.event_id)
            fresh.append(e)
        by_sub: dict[str, list[Event]] = defaultdict(list)
        for e in fresh:
            by_sub[e.subscriber_id].append(e)
        resolved: list[tuple[str, float, bool | None]] = []
        new: list[tuple[str, Snapshot]] = []
        scores: list[RiskScore] = []
        for sid, sub_events in by_sub.items():
            step = self.scorer.step(self.states.get(sid), sub_events)
            self.states[sid] = step.state
            resolved.extend((sid, at, label) for at, label in step.resolved)
            if step.snapshot is not None:
                new.append((sid, step.snapshot))
            if step.scored is not None:
                s = step.scored
                self.final_scores[sid] = s.score
                day = s.cause.occurred_at.astimezone(UTC).date()
                self.day_scores[day][sid] = s.score
                scored = step.state.setdefault("scored", {})
                last = scored.get("published_score")
                if self.settings.worth_publishing(last, s.score):
                    scored["published_score"] = s.score
                    scores.append(
                        RiskScore(
                            score_id=derive_id("score", s.cause.event_id),
                            subscriber_id=sid,
                            score=s.score,
                            previous_score=last,
                            band=self.settings.band(s.score),
                            model_version=s.version,
                            # Explained by the model of this moment, as the handler does.
                            reasons=[
                                ScoreReason(
                                    code=r.code,
                                    text_en=r.text_en,
                                    text_zh=r.text_zh,
                                    contribution=r.contribution,
                                )
                                for r in self.scorer.model.explain(s.x)
                            ],
                            cause_event_id=s.cause.event_id,
                            event_time=s.cause.occurred_at,
                            scored_at=s.cause.occurred_at,
                        )
                    )
        self._learn(resolved, source="stream")
        for sid, snap in new:
            self.pending[sid][snap.at] = snap
        return fresh, scores

    def _learn(self, resolved: list[tuple[str, float, bool | None]], *, source: str) -> None:
        examples = []
        for sid, at, label in resolved:
            snap = self.pending[sid].pop(at, None)
            if snap is not None and label is not None:
                examples.append((snap, label))
                self.examples.append(
                    Example(
                        sid,
                        at,
                        snap.x,
                        snap.predicted,
                        snap.prior,
                        snap.model,
                        label,
                        len(self.examples),
                        source,
                    )
                )
        self.scorer.learn(examples)

    # alerting, as AlertingHandler and the sweeper do it
    def alert_batch(self, batch: list[Event], scores: list[RiskScore]) -> None:
        """Run the batch's events and scores through the rules, in event time."""
        messages: list[tuple[datetime, int, Event | RiskScore]] = []
        for e in batch:
            if e.event_type == "cdr":
                continue  # alerting skips CDRs by header
            messages.append((e.occurred_at, 0, e))
        messages.extend((s.event_time, 1, s) for s in scores)
        messages.sort(key=lambda m: (m[0], m[1]))
        effects = Effects()
        for t, _, message in messages:
            view = self.views.get(message.subscriber_id)
            if view is None:
                view = self.views[message.subscriber_id] = SubscriberView(message.subscriber_id)
            if isinstance(message, SubscriberEvent):
                p = message.payload
                view.profile = Profile(
                    tier=p.tier,
                    monthly_value=p.monthly_value,
                    account_manager_id=p.account_manager_id,
                    phone=p.phone,
                    language=p.language,
                    name=p.name,
                    marketing_opt_out=p.marketing_opt_out,
                )
                if p.account_manager_id:
                    self.managers.add(p.account_manager_id)
            if isinstance(message, StopNoticeEvent) and view.profile.tier.is_vip:
                self.vip_notices.append(
                    (
                        message.subscriber_id,
                        message.event_id,
                        message.occurred_at,
                        message.payload.suspension_at,
                    )
                )
            # The sweeper: a dwell that elapsed before this message fires first.
            self.alerting.tick(view, effects, silences=[], now=t)
            self.alerting.handle(message, view, effects, silences=[], now=t)
            if _dwelling(view):
                self.dwelling.add(view.subscriber_id)
        end = max(m[0] for m in messages) if messages else None
        if end is not None:
            # Only views with a pending dwell (kept as a set: scanning every view
            # after each batch would be quadratic in subscriber order).
            for sid in sorted(self.dwelling):
                view = self.views[sid]
                self.alerting.tick(view, effects, silences=[], now=end)
                if not _dwelling(view):
                    self.dwelling.discard(sid)
        self._apply(effects)

    def _apply(self, effects: Effects) -> None:
        held = {t.task_id for t in effects.held_out}
        tasks = [m for m in effects.outbound if isinstance(m, OutreachTask)]
        tasks += list(effects.held_out)
        capacity = self.alerting.rules.capacity
        for task in tasks:
            queue = task.queue
            manager = task.account_manager_id
            if (
                task.task_id in effects.capacity_tasks
                and manager
                and queue
                and task.task_id not in held
            ):
                day = capacity_day(task.created_at, self.alerting.rules)
                load = self.load[(manager, day)]
                joins, bumped = allocate(
                    load, capacity=capacity.daily_calls(manager), priority=task.priority
                )
                if bumped is not None:
                    load[:] = [item for item in load if item[0] != bumped]
                    self.tasks[bumped] = replace(self.tasks[bumped], queue=capacity.overflow_queue)
                if joins:
                    load.append((task.task_id, task.priority))
                else:
                    queue = capacity.overflow_queue
            self.tasks[task.task_id] = TaskRecord(
                task.task_id,
                task.subscriber_id,
                task.kind.value,
                task.channel.value,
                task.rule,
                queue,
                task.created_at,
                task.task_id in held,
                task.cause_event_id,
            )

    def finish(
        self, truth: dict[str, Truth] | None, end: datetime, *, table: bool
    ) -> tuple[dict[str, datetime], int]:
        """Resolve what is still pending at the end of the data; return churn times, unresolved.

        A churner's pending snapshot (churn known only from the truth table) is
        positive when taken within the horizon before the churn. A non-churner's
        is negative when ``table`` (a one-moment table, replayed in subscriber
        order) and the truth says they never churned: an end-of-data negative.
        Otherwise (a history in time order, truth or not) it is negative when
        older than the horizon at the end of the data, and younger ones stay
        unlabelled: they might still churn after the data ends.
        """
        churn_at = self.churn_times(truth)
        unresolved = 0
        for sid in sorted(self.pending):
            unresolved += self.close(sid, churn_at.get(sid), truth, end, table=table)
        return churn_at, unresolved

    def close(
        self,
        sid: str,
        churn: datetime | None,
        truth: dict[str, Truth] | None,
        end: datetime,
        *,
        table: bool,
    ) -> int:
        """Resolve one subscriber's pending snapshots at the end of their data (``finish``).

        Learned like any label, so in subscriber order the next subscribers are
        scored by a model that learnt this one. Returns how many stay unlabelled.
        """
        h = self.scorer.params.horizon_s
        t_end = end.timestamp()
        resolved: list[tuple[str, float, bool | None]] = []
        for at in sorted(self.pending.get(sid, {})):
            label: bool | None
            if churn is not None:
                c = churn.timestamp()
                label = None if at > c else c - at <= h
            elif table and truth is not None and sid in truth:
                label = False
            else:
                label = False if t_end - at > h else None
            resolved.append((sid, at, label))
        self._learn(resolved, source="end")
        return sum(1 for _, _, label in resolved if label is None)

    def churn_times(
        self, truth: dict[str, Truth] | None, *, only: str | None = None
    ) -> dict[str, datetime]:
        """Churn events in the data, then the truth table's churners not in it."""
        out: dict[str, datetime] = {}
        ids = list(self.states) if only is None else [only]
        for sid in ids:
            churned = (self.states.get(sid, {}).get("latest") or {}).get("churned")
            if churned:
                out[sid] = datetime.fromtimestamp(float(churned[1]), UTC)
        table = truth or {}
        rows = table.items() if only is None else [(only, table[only])] if only in table else []
        for sid, t in rows:
            if t.churned and t.churn_at is not None and sid not in out:
                out[sid] = t.churn_at
        return out


def _dwelling(view: SubscriberView) -> bool:
    return any(s.pending_since is not None for s in view.states.values())


def run_backtest(
    paths: Sequence[Path],
    *,
    rules_file: Path | None = None,
    truth_file: Path | None = None,
    seed: int = 42,
    order: Order = "auto",
    window_hours: float = 24.0,
    settings: ScoringSettings | None = None,
    progress: Callable[[int, int], None] | None = None,
    events: list[Event] | None = None,
) -> Result:
    """Replay the files (or ``events``) and return everything the metrics need."""
    settings = settings or ScoringSettings()
    rules = load_rules(rules_file)
    truth = load_truth(truth_file) if truth_file is not None else None
    events = events if events is not None else load_events(paths)
    mode = resolve_order(order, events, truth)
    cut = batches(
        events,
        order=mode,
        seed=seed,
        window_s=window_hours * 3600,
        batch_size=settings.scoring_batch_max_records,
    )
    alerting = AlertingSettings()
    replay = Replay(
        settings,
        rules,
        control_percent=alerting.alerting_control_group_percent,
        control_salt=alerting.alerting_control_group_salt,
    )
    done = 0
    start = min(e.occurred_at for e in events)
    end = max(e.occurred_at for e in events)
    closed = 0
    for i, batch in enumerate(cut):
        fresh, scores = replay.step_batch(batch)
        replay.alert_batch(fresh, scores)
        sid = batch[0].subscriber_id
        if mode == "subscriber" and (i + 1 == len(cut) or cut[i + 1][0].subscriber_id != sid):
            # The end of this subscriber's data: their pending snapshots get their
            # end-of-data labels now, learnt before the next subscriber is scored.
            churn = replay.churn_times(truth, only=sid).get(sid)
            closed += replay.close(sid, churn, truth, end, table=True)
        done += len(batch)
        if progress is not None:
            progress(done, len(events))
    churn_at, unresolved = replay.finish(truth, end, table=mode == "subscriber")
    unresolved += closed
    quality = replay.scorer.model.quality
    return Result(
        events=len(events),
        duplicates=replay.duplicates,
        subscribers=len({e.subscriber_id for e in events}),
        batches=len(cut),
        order=mode,
        examples=replay.examples,
        unresolved=unresolved,
        final_scores=dict(replay.final_scores),
        day_scores=dict(replay.day_scores),
        tasks=list(replay.tasks.values()),
        churn_at=churn_at,
        warning_signs={
            s: t.warning_signs for s, t in (truth or {}).items() if t.warning_signs is not None
        },
        stop_notices=replay.vip_notices,
        managers=replay.managers,
        start=start,
        end=end,
        horizon_s=replay.scorer.params.horizon_s,
        min_labels=settings.scoring_min_labels,
        daily_calls=rules.capacity.default_daily_calls,
        model_summary=quality.summary() if quality is not None else {},
    )


# --- metrics --------------------------------------------------------------------


def roc_auc(y: Sequence[bool], p: Sequence[float]) -> float | None:
    """ROC AUC (ties count half); None with one class only."""
    from sklearn.metrics import roc_auc_score

    if len(set(y)) < 2:
        return None
    return float(roc_auc_score(list(y), list(p)))


def log_loss(y: Sequence[bool], p: Sequence[float]) -> float | None:
    """Mean log loss, probabilities clipped to [1e-9, 1 - 1e-9]; None when empty."""
    if not y:
        return None
    total = 0.0
    for label, q in zip(y, p, strict=True):
        q = min(1 - 1e-9, max(1e-9, q))
        total -= math.log(q if label else 1 - q)
    return total / len(y)


def offline_baseline(examples: Sequence[Example], *, seed: int, folds: int = 5) -> list[float]:
    """Out-of-fold churn probabilities from an analyst's model on the same snapshots.

    scikit-learn's HistGradientBoostingClassifier (defaults, ``random_state=seed``)
    with ``folds``-fold cross-validation, stratified by label and grouped by
    subscriber: all of one subscriber's snapshots fall in the same fold. Plain
    k-fold over snapshots would put a subscriber's neighbouring days in both
    train and test, and the trees would recognise the subscriber (tenure,
    monthly value) instead of churn: measured AUC 0.999 on synthetic data, a
    leak, not a model. It still sees every label at once, in hindsight, which
    the online model never can.
    """
    import numpy as np
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.array([e.label for e in examples], dtype=int)
    names = sorted({k for e in examples for k in e.x})
    x = np.array([[e.x.get(k, 0.0) for k in names] for e in examples], dtype=float)
    oof = np.full(len(examples), float(y.mean()) if len(y) else 0.0)
    if len(set(y.tolist())) < 2 or min(int(y.sum()), int(len(y) - y.sum())) < folds:
        return [float(v) for v in oof]
    groups = [e.subscriber_id for e in examples]
    split = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in split.split(x, y, groups):
        model = HistGradientBoostingClassifier(random_state=seed)
        model.fit(x[train], y[train])
        oof[test] = model.predict_proba(x[test])[:, 1]
    return [float(v) for v in oof]


def metrics(
    result: Result, *, offline: Sequence[float], capacity: int | None = None
) -> dict[str, Any]:
    """The report's figures (``docs/backtest.md`` says what each one is).

    ``offline``: the baseline's out-of-fold probabilities, one per example
    (``offline_baseline``). ``capacity``: k of the daily top-k; default the
    number of account managers x the rules file's ``default_daily_calls``.
    """
    ex = result.examples
    after = [e for e in ex if e.order >= result.min_labels]
    y_all = [e.label for e in ex]
    oof = list(offline)
    oof_after = [oof[e.order] for e in after]
    online_auc = roc_auc([e.label for e in after], [e.predicted for e in after])
    offline_auc = roc_auc([e.label for e in after], oof_after)
    k = capacity if capacity is not None else max(1, len(result.managers)) * result.daily_calls

    lead = lead_times(result)
    churners = sorted(result.churn_at)
    early = [s for s in churners if (lead.get(s) or -1.0) >= EARLY_DAYS]
    warned = [s for s in churners if result.warning_signs.get(s)]
    early_warned = [s for s in warned if (lead.get(s) or -1.0) >= EARLY_DAYS]
    reminders = reminder_rate(result)
    per_manager = tasks_per_manager_day(result)
    precision = precision_at_capacity(result, k)
    return {
        "events": result.events,
        "duplicate_events": result.duplicates,
        "subscribers": result.subscribers,
        "churners": len(churners),
        "order": result.order,
        "batches": result.batches,
        "start": result.start.isoformat(),
        "end": result.end.isoformat(),
        "labels": len(ex),
        "positive_labels": sum(y_all),
        "labels_at_end_of_data": sum(1 for e in ex if e.source == "end"),
        "unlabelled_at_end": result.unresolved,
        "warmup_labels": result.min_labels,
        "online_roc_auc": online_auc,
        "online_roc_auc_all": roc_auc(y_all, [e.predicted for e in ex]),
        "online_log_loss": log_loss([e.label for e in after], [e.predicted for e in after]),
        "prior_roc_auc": roc_auc([e.label for e in after], [e.prior for e in after]),
        "offline_roc_auc": offline_auc,
        "offline_roc_auc_all": roc_auc(y_all, oof),
        "auc_ratio": (online_auc / offline_auc if online_auc is not None and offline_auc else None),
        "capacity_k": k,
        "precision_at_capacity": precision,
        "lead_time_median_days": statistics.median(lead.values()) if lead else None,
        "churners_alerted": len(lead),
        "share_alerted_7d": len(early) / len(churners) if churners else None,
        "churners_with_warning_signs": len(warned) if result.warning_signs else None,
        "share_alerted_7d_with_warning_signs": (
            len(early_warned) / len(warned) if warned else None
        ),
        "vip_stop_notices": reminders[1],
        "reminder_before_suspension_rate": reminders[0],
        "tasks": len(result.tasks),
        "tasks_by_kind": _count(t.kind for t in result.tasks),
        "tasks_by_channel": _count(t.channel for t in result.tasks),
        "managers": len(result.managers),
        "tasks_per_manager_per_day": per_manager,
        "model": result.model_summary,
    }


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for item in items:
        out[item] += 1
    return dict(sorted(out.items()))


def lead_times(result: Result) -> dict[str, float]:
    """Days from each churner's first retention alert to the churn.

    Any retention alert (held out or not: the system did warn) at most
    ``LEAD_WINDOW_DAYS`` before the churn; churners with none are left out.
    """
    first: dict[str, datetime] = {}
    for t in result.tasks:
        churn = result.churn_at.get(t.subscriber_id)
        if t.kind != TaskKind.RETENTION.value or churn is None:
            continue
        if churn - timedelta(days=LEAD_WINDOW_DAYS) <= t.created_at <= churn:
            prev = first.get(t.subscriber_id)
            first[t.subscriber_id] = t.created_at if prev is None else min(prev, t.created_at)
    return {s: (result.churn_at[s] - at).total_seconds() / DAY for s, at in first.items()}


def reminder_rate(result: Result) -> tuple[float | None, int]:
    """Share of VIP stop-notices whose reminder task was sent before the suspension."""
    reminded = {
        t.cause_id
        for t in result.tasks
        if t.kind == TaskKind.PRE_SUSPENSION_REMINDER.value and not t.held_out
    }
    due = [(eid, at, susp) for _, eid, at, susp in result.stop_notices if susp > at]
    if not due:
        return None, 0
    return sum(1 for eid, _, _ in due if eid in reminded) / len(due), len(due)


def tasks_per_manager_day(result: Result) -> dict[str, float | int | None]:
    """Calls in account managers' own queues per manager per day (after capacity)."""
    counts: dict[tuple[str, date], int] = defaultdict(int)
    for t in result.tasks:
        if t.queue and t.queue.startswith("am:") and not t.held_out:
            counts[(t.queue[3:], t.created_at.astimezone(UTC).date())] += 1
    days = (result.end.date() - result.start.date()).days + 1
    managers = len(result.managers)
    total = sum(counts.values())
    return {
        "mean": total / (managers * days) if managers else None,
        "max": max(counts.values(), default=0),
        "overflow_calls": sum(
            1 for t in result.tasks if t.channel == "call" and t.queue == "general"
        ),
    }


def precision_at_capacity(result: Result, k: int) -> dict[str, Any]:
    """Churners among each day's k riskiest subscribers, averaged over the days.

    At the end of each day every subscriber not yet churned is ranked by their
    latest score so far (what the retention team would see); a hit churns
    within the horizon after that day. Days with fewer than k candidates are
    skipped.
    """
    precisions: list[float] = []
    series: list[list[str | float]] = []
    current: dict[str, float] = {}
    for day in sorted(result.day_scores):
        current.update(result.day_scores[day])
        day_end = datetime.combine(day, datetime.min.time(), UTC) + timedelta(days=1)
        candidates = [
            (score, sid)
            for sid, score in current.items()
            if sid not in result.churn_at or result.churn_at[sid] >= day_end
        ]
        if len(candidates) < k:
            continue
        top = sorted(candidates, reverse=True)[:k]
        hits = sum(
            1
            for _, sid in top
            if sid in result.churn_at
            and (result.churn_at[sid] - day_end).total_seconds() <= result.horizon_s
        )
        precisions.append(hits / k)
        series.append([day.isoformat(), hits / k])
    return {
        "k": k,
        "days": len(precisions),
        "mean": statistics.fmean(precisions) if precisions else None,
        "by_day": series,
    }


def to_json(data: dict[str, Any]) -> bytes:
    """``metrics.json`` text (sorted keys, indented, NaN-free)."""
    return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def main(
    paths: Sequence[Path],
    *,
    report: Path | None,
    rules_file: Path | None,
    truth_file: Path | None,
    seed: int,
    capacity: int | None,
    order: Order,
    window_hours: float,
    console: Any,
) -> int:
    """``churnwatch backtest``: replay with a progress bar, print the headline, write the report.

    Returns the exit code: 0 done, 2 unusable input (named with file and line).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from services.alerting.rules import RulesError

    try:
        with Progress(
            TextColumn("replaying"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("events"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar:
            task = bar.add_task("replay", total=None)

            def progress(done: int, total: int) -> None:
                bar.update(task, completed=done, total=total)

            result = run_backtest(
                paths,
                rules_file=rules_file,
                truth_file=truth_file,
                seed=seed,
                order=order,
                window_hours=window_hours,
                progress=progress,
            )
    except (BacktestError, RulesError) as exc:
        console.print(f"[red]error[/red] {exc}", markup=True, highlight=False)
        return 2
    console.print("training the offline baseline (5-fold cross-validation)...")
    offline = offline_baseline(result.examples, seed=seed)
    figures = metrics(result, offline=offline, capacity=capacity)
    for key in (
        "events",
        "subscribers",
        "churners",
        "labels",
        "online_roc_auc",
        "offline_roc_auc",
        "auc_ratio",
        "lead_time_median_days",
        "share_alerted_7d",
        "share_alerted_7d_with_warning_signs",
        "reminder_before_suspension_rate",
    ):
        value = figures[key]
        console.print(f"{key}: {value:.4f}" if isinstance(value, float) else f"{key}: {value}")
    console.print(f"precision_at_capacity: {figures['precision_at_capacity']['mean']}")
    console.print(f"tasks_per_manager_per_day: {figures['tasks_per_manager_per_day']['mean']}")
    if report is not None:
        from churnwatch.report import write_report

        write_report(result, figures, offline, report)
        console.print(f"report: {report / 'index.html'}")
    return 0
