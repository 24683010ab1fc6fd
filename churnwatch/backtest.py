"""Backtest: replay event files through the services' own scoring and alerting code.

No Kafka, no database: each service's own batch core on an in-memory store.
Scoring's (``services.scoring.batch``: features, snapshots, labels, model,
prior blend) steps every subscriber of a batch, then learns the labels that
resolved; alerting's (``services.alerting.batch``) stores the batch's profiles,
runs the rules engine on each message and fits calls into the managers' days,
as alerting's consumer does. The result holds every labelled
snapshot (the score served before its label was known: prequential), every
task, every subscriber's final score and the ground truth; ``metrics`` turns
it into the figures of ``docs/backtest.md`` and ``churnwatch.report`` into a
page with charts.
"""

from __future__ import annotations

import csv
import math
import random
import sys
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from services.alerting import batch as alerting_batch
from services.alerting.batch import Decisions, Message, message_time, sweep_due
from services.alerting.rule_engine import Effects, RuleEngine, SubscriberView
from services.alerting.rules import RulesFile, ScoreTrigger, load_rules
from services.alerting.settings import AlertingSettings
from services.scoring.batch import Learnt, MemoryStore, learn, process_batch, run_sync
from services.scoring.model import ChurnModel
from services.scoring.scorer import Scorer
from services.scoring.settings import ScoringSettings
from shared.events import (
    Event,
    RiskScore,
    StopNoticeEvent,
    SubscriberEvent,
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
    model: ChurnModel | None = None  # the model as it stood at the end of the replay


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
        # The scoring service's own batch core, on an in-memory store.
        self.store = MemoryStore()
        self.duplicates = 0
        self.examples: list[Example] = []
        self.final_scores: dict[str, float] = {}
        self.day_scores: dict[date, dict[str, float]] = defaultdict(dict)
        self.alerting = RuleEngine(
            rules, control_percent=control_percent, control_salt=control_salt
        )
        # Alerting's own batch core, on an in-memory store with the tables' semantics.
        self.alert_store = alerting_batch.MemoryStore()
        self.min_dwell = min(
            (trigger.dwell for _, trigger in rules.triggered(ScoreTrigger)), default=None
        )
        self.tasks: dict[uuid.UUID, TaskRecord] = {}
        self.vip_notices: list[tuple[str, uuid.UUID, datetime, datetime]] = []
        self.managers: set[str] = set()

    @property
    def states(self) -> dict[str, Any]:
        """Every subscriber's feature state."""
        return self.store.states

    # scoring: the live consumer's batch core (services.scoring.batch)
    def step_batch(self, batch: list[Event]) -> tuple[list[Event], list[RiskScore]]:
        """One handler batch through ``process_batch``, as the scoring service runs it.

        Returns the batch's new events (an ``event_id`` already applied is
        dropped, as both services do) and the scores published (stamped with
        their cause's event time).
        """
        outcome = run_sync(
            process_batch(
                batch, store=self.store, scorer=self.scorer, settings=self.settings, now=None
            )
        )
        self.duplicates += outcome.duplicates
        for sid, scored in outcome.scored:
            self.final_scores[sid] = scored.score
            day = scored.cause.occurred_at.astimezone(UTC).date()
            self.day_scores[day][sid] = scored.score
        self._record(outcome.learnt, source="stream")
        return outcome.fresh, outcome.published

    def _record(self, learnt: list[Learnt], *, source: str) -> None:
        for item in learnt:
            if item.kind == "step":
                continue  # the model counts its own (labels_seen)
            snap = item.snapshot
            self.examples.append(
                Example(
                    item.subscriber_id,
                    snap.at,
                    snap.x,
                    snap.predicted,
                    snap.prior,
                    snap.model,
                    item.label,
                    len(self.examples),
                    source,
                )
            )

    # alerting: the live consumer's batch core (services.alerting.batch)
    def alert_batch(self, batch: list[Event], scores: list[RiskScore]) -> list[Decisions]:
        """One batch's events and scores through ``process_batch``, as alerting runs it.

        The messages go in event time (``alerting_messages``). The sweeper's
        periodic dwell pass is emulated in event time: before each message (a
        dwell that elapsed before it fires first) and at the batch's end.
        Returns what the batch, then the end-of-batch sweep, decided.
        """
        messages = alerting_messages(batch, scores)
        if not messages:
            return []
        for message in messages:
            if isinstance(message, SubscriberEvent) and message.payload.account_manager_id:
                self.managers.add(message.payload.account_manager_id)
        end = max(message_time(m) for m in messages)
        decided = [
            run_sync(
                alerting_batch.process_batch(
                    messages,
                    store=self.alert_store,
                    engine=self.alerting,
                    now=end,
                    before_each=self._before_each,
                )
            )
        ]
        if self.min_dwell is not None:
            decided.append(
                run_sync(
                    sweep_due(
                        store=self.alert_store,
                        engine=self.alerting,
                        now=end,
                        pending_before=end - self.min_dwell,
                        limit=sys.maxsize,
                    )
                )
            )
        for decisions in decided:
            self._record_tasks(decisions)
        return decided

    def _before_each(self, message: Message, view: SubscriberView, effects: Effects) -> None:
        if isinstance(message, StopNoticeEvent) and view.profile.tier.is_vip:
            self.vip_notices.append(
                (
                    message.subscriber_id,
                    message.event_id,
                    message.occurred_at,
                    message.payload.suspension_at,
                )
            )
        # The sweeper in event time: a dwell that elapsed before this message fires first.
        self.alerting.tick(view, effects, silences=[], now=message_time(message))

    def _record_tasks(self, decisions: Decisions) -> None:
        held = {t.task_id for t in decisions.effects.held_out}
        for task in [*decisions.tasks, *decisions.effects.held_out]:
            self.tasks[task.task_id] = TaskRecord(
                task.task_id,
                task.subscriber_id,
                task.kind.value,
                task.channel.value,
                task.rule,
                task.queue,
                task.created_at,
                task.task_id in held,
                task.cause_event_id,
            )
        for update in decisions.reroutes:
            self.tasks[update.task_id] = replace(self.tasks[update.task_id], queue=update.queue)

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
        for sid in sorted({sid for sid, _ in self.store.snapshots}):
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
        params = self.scorer.params
        t_end = end.timestamp()
        state: Mapping[str, Any] = self.store.states.get(sid) or {}
        stepping = set(state.get("stepping", state.get("pending")) or [])
        resolved: list[tuple[str, float, bool | None]] = []
        settled: list[tuple[str, float, bool | None]] = []
        for at in sorted(at for s, at in self.store.snapshots if s == sid):
            for within, labels in ((params.horizon_s, settled), (params.step_s, resolved)):
                if labels is resolved and at not in stepping:
                    continue  # its step label was learnt already
                label: bool | None
                if churn is not None:
                    c = churn.timestamp()
                    label = None if at > c else c - at <= within
                elif table and truth is not None and sid in truth:
                    label = False
                else:
                    label = False if t_end - at > within else None
                labels.append((sid, at, label))
        learnt = run_sync(learn(self.store, self.scorer, resolved=resolved, settled=settled))
        for key in [(s, at) for s, at, label in settled if label is None]:
            self.store.snapshots.pop(key, None)
        self._record(learnt, source="end")
        return sum(1 for _, _, label in settled if label is None)

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


def alerting_messages(events: Sequence[Event], scores: Sequence[RiskScore]) -> list[Message]:
    """What alerting consumes for a batch: its events and scores in event time.

    Of equal times, events before scores (a score follows its cause). Usage
    records are left out, as alerting's parser skips them by their header.
    """
    messages: list[tuple[datetime, int, Message]] = [
        (e.occurred_at, 0, e) for e in events if e.event_type != "cdr"
    ]
    messages.extend((s.event_time, 1, s) for s in scores)
    messages.sort(key=lambda m: (m[0], m[1]))
    return [m for _, _, m in messages]


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
    if mode == "subscriber":
        # A table's labels are all known when each subscriber's data ends: none waits
        # to mature (the calibration's order guard is for a live stream's delays).
        replay.scorer.advance(math.inf)
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
        model=replay.scorer.model,
    )
