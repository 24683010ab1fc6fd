"""``churnwatch simulate``: a synthetic operator, streamed to ingest or written to files.

The generative story is in ``docs/simulator.md``. In short: the population and its
day-by-day events come from :mod:`churnwatch.synth` (tiers with account managers,
daily usage with a weekly rhythm, monthly bills and payments, late payers with
arrears and stop-notices, complaints, churners whose warning signs ramp up for
2-5 weeks before a port-out, silent churners, mild false alarms); the simulator
adds **recoverers** (subscribers who show a churner's full warning signs, then
come back to normal without leaving) and **outreach feedback**: when streaming,
it asks outreach which at-risk subscribers a retention task reached, and a
reached churner stays (and recovers) with probability ``outreach_effect``.

Determinism: one seed fixes the population, every random draw and every event id
(``derive_id("sim", seed, subscriber_id, n)`` for a subscriber's n-th event), so
writing files twice gives the same bytes, and streaming twice posts the same ids
(ingest and the services drop the repeats). Only the feedback depends on what
the live pipeline did, and the decision for a reached subscriber is drawn from a
generator seeded by (seed, subscriber), not by when the answer came.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from random import Random
from typing import IO, TYPE_CHECKING, Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from churnwatch import synth

if TYPE_CHECKING:
    from churnwatch.agents import AgentStats
from churnwatch.gateway import GatewaySettings, gateway_headers
from churnwatch.keys import api_headers
from services.scoring.model import PRIOR_VERSION
from shared.events import TASK_NAMESPACE

__all__ = [
    "Simulation",
    "SimulationConfig",
    "StreamStats",
    "default_streaming_end",
    "poll_reached",
    "stream_to_ingest",
    "stream_with_progress",
    "summary",
    "wait_for_pipeline",
    "write_files",
]

ID_TAG = "sim|"
"""Event ids are ``derive_id("sim", seed, subscriber_id, n)`` (shared.events)."""

SOURCE = "simulator"
"""The events' ``source``."""

RECOVERY_DAYS = 14  # a subscriber saved by outreach returns to normal over two weeks
REACHED_STATUSES = ("delivered", "completed")  # retention tasks that reached the subscriber


SIMULATION_ENV: dict[str, str] = {
    # Outreach acts on the stream's time: a reminder due before a suspension on
    # simulated day 40 is due while day 40 streams, not weeks before the wall clock.
    "OUTREACH_CLOCK": "stream",
    # Timeouts for crashed work (a claim never finished, an SMS stuck in sending,
    # a receipt that never came) count stream time too; a simulated day passes
    # in seconds, so they are set to weeks to catch only what is really stuck.
    "OUTREACH_ASSIGNMENT_TIMEOUT_S": str(14 * 86_400),
    "OUTREACH_SENDING_STALE_S": str(14 * 86_400),
    "SMS_RECONCILE_AFTER_S": str(14 * 86_400),
    "SMS_FINAL_STATE_DEADLINE_S": str(28 * 86_400),
}
"""Settings ``churnwatch up --simulate`` gives the services (the user's environment wins)."""


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. The defaults are sized for ``make run``."""

    subscribers: int = 2000
    days: int = 60
    seed: int = 7
    churn_rate: float = 0.08
    """Share of subscribers who would churn during the period without outreach."""
    silent_churn_share: float = 0.10
    """Share of churners who give no warning at all."""
    recovery_share: float = 0.04
    """Share of non-churners who show a churner's full warning signs, then recover."""
    outreach_effect: float = 0.5
    """Probability that a churner reached by a retention task stays (streaming only)."""
    id_prefix: str = "SIM"
    warning_days: tuple[int, int] = (28, 56)
    """How many days before their churn a churner's warning signs begin (low, high)."""
    ramp_power: float = 0.5
    """Shape of the warning ramp: intensity = (share of the ramp elapsed) ** ramp_power."""
    churn_from_day: int = synth.CHURN_AFTER_DAY
    """The first day (0-based) a churner may churn; earlier churns began warning before day 0."""

    def __post_init__(self) -> None:
        for name in ("recovery_share", "outreach_effect"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")


def default_streaming_end(now: datetime | None = None) -> datetime:
    """The last midnight (UTC) at or before ``now``: a streamed period ends there.

    Ingest refuses events more than an hour ahead of its clock, and the last day's
    usage is stamped up to 23:59, so the period ends at the start of today.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    return now.replace(hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True, slots=True)
class Truth:
    """Ground truth about one subscriber."""

    subscriber_id: str
    tier: str
    account_manager_id: str | None
    churn_at: datetime | None
    churn_kind: str
    warned: bool
    """A churner whose warning signs ramped up before the churn (not a silent one)."""
    warning_from: datetime | None
    """When the warning ramp (or a recoverer's dip) began."""
    recovered: bool
    """Showed strong warning signs and stayed: a recoverer, or saved by outreach."""
    saved_by_outreach: bool
    late_payer: bool


class Simulation:
    """One simulated operator; :meth:`days` generates it one day at a time.

    Between two days the caller may report subscribers reached by outreach with
    :meth:`reach`; that changes what the following days hold.
    """

    def __init__(self, config: SimulationConfig, *, end: datetime | None = None) -> None:
        """Plan the population. ``end`` (aware) is where the period ends.

        Without ``end`` the period starts at ``synth.DEFAULT_START`` (2026-01-01),
        so files are the same on every run and every day.
        """
        self.config = config
        start = None if end is None else end.astimezone(UTC) - timedelta(days=config.days)
        plan = synth._make_plan(
            subscribers=config.subscribers,
            days=config.days,
            seed=config.seed,
            start=start,
            churn_rate=config.churn_rate,
            silent_churn_share=config.silent_churn_share,
            id_prefix=config.id_prefix,
            warning_days=config.warning_days,
            ramp_power=config.ramp_power,
            churn_from_day=config.churn_from_day,
        )
        self._plan = dataclasses.replace(
            plan, id_namespace=TASK_NAMESPACE, id_tag=ID_TAG, source=SOURCE
        )
        self.start: datetime = plan.start
        self.end: datetime = plan.start + timedelta(days=config.days)
        self._index = {s.sid: i for i, s in enumerate(plan.subs)}
        self._recoverers: set[str] = set()
        self._saved: dict[str, int] = {}  # saved subscriber -> first day of their warning ramp
        self._mild: set[str] = {s.sid for s in plan.subs if s.false_alarm}
        self._add_recoverers()
        self._day = 0
        self.events_by_type: Counter[str] = Counter()

    def _add_recoverers(self) -> None:
        # A generator of its own, so that the synth population is the same with or
        # without recoverers; the day-by-day draws come after, from the plan's.
        rng = Random(f"{self.config.seed}|recoverers")
        low, high = self.config.warning_days
        for sub in self._plan.subs:
            if sub.churn_day is not None or sub.false_alarm:
                continue
            if rng.random() >= self.config.recovery_share:
                continue
            # The same signs as a churner's ramp (synth._intensity's triangle for a
            # false alarm): up for half the dip, back down for the other half.
            sub.false_alarm = True
            sub.ramp_len = 2 * rng.randint(low, high)
            sub.ramp_start = rng.randint(0, max(0, self.config.days - sub.ramp_len))
            sub.voice_floor = rng.uniform(0.3, 0.5)
            sub.comp_target = rng.uniform(0.3, 0.6)
            self._recoverers.add(sub.sid)

    @property
    def subscriber_ids(self) -> list[str]:
        """Every subscriber id, in generation order."""
        return [s.sid for s in self._plan.subs]

    @property
    def day(self) -> int:
        """The index of the next day :meth:`days` will generate."""
        return self._day

    def days(self) -> Iterator[list[dict[str, Any]]]:
        """Each day's events (JSON-ready dicts of the contract), sorted by time."""
        for batch in synth._days(self._plan):
            self.events_by_type.update(e["event_type"] for e in batch)
            self._day += 1
            yield batch

    def events(self) -> Iterator[dict[str, Any]]:
        """All events, in time order (no feedback)."""
        for batch in self.days():
            yield from batch

    def reach(self, subscriber_ids: Iterable[str]) -> list[str]:
        """Outreach reached these subscribers (before the next day); return those saved.

        A churner in their warning weeks whose churn is still ahead stays with
        probability ``outreach_effect``: their churn is called off and the warning
        signs fade over ``RECOVERY_DAYS``. Reporting a subscriber again changes
        nothing; the decision is drawn from (seed, subscriber), so it does not
        depend on the order or the moment of the reports.
        """
        saved: list[str] = []
        d = self._day
        for sid in subscriber_ids:
            if sid in self._saved or not self.churning(sid) or not self.persuaded(sid):
                continue
            sub = self._plan.subs[self._index[sid]]
            # Freeze the signs where they are today, then fade them: a false-alarm
            # triangle peaking today with today's level as its height.
            k = synth._intensity(sub, d)
            sub.voice_floor = 1.0 - k * (1.0 - sub.voice_floor)
            sub.comp_target = sub.comp_share + k * (sub.comp_target - sub.comp_share)
            self._saved[sid] = sub.ramp_start
            sub.ramp_start = d - RECOVERY_DAYS
            sub.ramp_len = 2 * RECOVERY_DAYS
            sub.false_alarm = True
            sub.churn_day = None
            sub.downgrades = sub.arrears = False
            saved.append(sid)
        return saved

    def churning(self, subscriber_id: str) -> bool:
        """True for a churner whose churn is still ahead and who shows warning signs."""
        i = self._index.get(subscriber_id)
        if i is None:
            return False
        sub = self._plan.subs[i]
        return sub.churn_day is not None and not sub.silent and sub.churn_day >= self._day

    def persuaded(self, subscriber_id: str) -> bool:
        """Whether a retention contact keeps this subscriber (the draw :meth:`reach` makes)."""
        draw = Random(f"{self.config.seed}|{subscriber_id}|saved").random()
        return draw < self.config.outreach_effect

    @property
    def manager_ids(self) -> list[str]:
        """The account managers' ids (the VIP profiles' ``account_manager_id``)."""
        return [f"AM-{n:03d}" for n in range(1, synth.manager_count(self.config.subscribers) + 1)]

    def truth(self) -> list[Truth]:
        """Ground truth for every subscriber, as it stands (feedback so far included)."""
        out = []
        for sub, profile in zip(self._plan.subs, self._plan.profiles, strict=True):
            churned = sub.churn_day is not None
            churn_at = (
                self.start + timedelta(days=sub.churn_day, seconds=sub.churn_offset)
                if sub.churn_day is not None
                else None
            )
            warned = churned and not sub.silent and sub.ramp_len > 0
            strong = warned or sub.sid in self._recoverers or sub.sid in self._saved
            ramp_start = self._saved.get(sub.sid, sub.ramp_start)
            out.append(
                Truth(
                    subscriber_id=sub.sid,
                    tier=sub.tier,
                    account_manager_id=profile.get("account_manager_id"),
                    churn_at=churn_at,
                    churn_kind=sub.churn_payload.get("kind", "") if churned else "",
                    warned=warned,
                    warning_from=self.start + timedelta(days=ramp_start) if strong else None,
                    recovered=sub.sid in self._recoverers or sub.sid in self._saved,
                    saved_by_outreach=sub.sid in self._saved,
                    late_payer=sub.late_payer,
                )
            )
        return out


TRUTH_COLUMNS = (
    "subscriber_id",
    "churned",
    "churn_at",
    "kind",
    "tier",
    "account_manager_id",
    "warned",
    "warning_from",
    "recovered",
    "saved_by_outreach",
    "late_payer",
)


def write_truth(truth: Iterable[Truth], out: IO[str]) -> None:
    """Ground truth as CSV; the first four columns are ``import-table --truth``'s."""

    def flag(x: bool) -> int:
        return 1 if x else 0

    writer = csv.writer(out)
    writer.writerow(TRUTH_COLUMNS)
    for t in truth:
        writer.writerow(
            [
                t.subscriber_id,
                flag(t.churn_at is not None),
                t.churn_at.isoformat() if t.churn_at else "",
                t.churn_kind,
                t.tier,
                t.account_manager_id or "",
                flag(t.warned),
                t.warning_from.isoformat() if t.warning_from else "",
                flag(t.recovered),
                flag(t.saved_by_outreach),
                flag(t.late_payer),
            ]
        )


def write_files(sim: Simulation, out: IO[str], truth: IO[str] | None = None) -> int:
    """Write the events as NDJSON to ``out`` (and the truth as CSV); return the count.

    File mode has no outreach feedback: nobody is reached, nobody is saved.
    """
    n = 0
    for batch in sim.days():
        out.writelines(json.dumps(e, separators=(",", ":")) + "\n" for e in batch)
        n += len(batch)
    if truth is not None:
        write_truth(sim.truth(), truth)
    return n


@dataclass
class StreamStats:
    """What a stream to ingest did."""

    events: int = 0
    accepted: int = 0
    rejected: int = 0
    batches: int = 0
    seconds: float = 0.0
    saved: list[str] = dataclasses.field(default_factory=list)

    @property
    def rate(self) -> float:
        """Events per second, end to end."""
        return self.events / self.seconds if self.seconds > 0 else 0.0


def poll_reached(client: httpx.Client, outreach_url: str) -> set[str]:
    """Subscribers with a retention task that was delivered (SMS) or completed (call)."""
    reached: set[str] = set()
    for status in REACHED_STATUSES:
        cursor: str | None = None
        while True:
            params: dict[str, str | int] = {"kind": "retention", "status": status, "limit": 200}
            if cursor:
                params["cursor"] = cursor
            response = client.get(outreach_url + "/v1/tasks", params=params)
            response.raise_for_status()
            body = response.json()
            reached.update(item["subscriber_id"] for item in body["items"])
            cursor = body.get("next_cursor")
            if not cursor:
                break
    return reached


def _post(client: httpx.Client, url: str, batch: list[dict[str, Any]], attempts: int = 5) -> Any:
    # A 503 means the broker did not acknowledge: resending is safe (same event ids).
    for attempt in range(attempts):
        response = client.post(url, json=batch)
        if response.status_code == 503 and attempt < attempts - 1:
            time.sleep(min(30.0, float(response.headers.get("Retry-After", "1"))))
            continue
        response.raise_for_status()
        return response.json()
    raise AssertionError("unreachable")  # pragma: no cover


def stream_to_ingest(
    sim: Simulation,
    ingest_url: str,
    *,
    rate: float | None = None,
    batch_size: int = 1000,
    outreach_url: str | None = None,
    on_day: Callable[[int, StreamStats], None] | None = None,
    on_batch: Callable[[StreamStats, int, int], None] | None = None,
    client: httpx.Client | None = None,
    api_key: str | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> StreamStats:
    """POST the simulation to ``{ingest_url}/v1/events`` day by day, in batches.

    ``rate`` (events/s) paces the batches: batch k is sent no earlier than the
    moment the events before it would have taken at that rate, so the average
    rate never exceeds it (a slow ingest only makes it lower). With
    ``outreach_url``, retention tasks that reached a subscriber are polled after
    each day and fed back with :meth:`Simulation.reach`. ``on_day(day, stats)`` is
    called after each day (the progress bar); ``on_batch(stats, done, total)`` after
    each POST, with the events of the current day posted so far and in all (a
    one-day run of a million subscribers is a single day).
    """
    if rate is not None and rate <= 0:
        raise ValueError("rate must be > 0")
    stats = StreamStats()
    own = client is None
    http = client or httpx.Client(timeout=60, headers=api_headers(api_key))
    url = ingest_url.rstrip("/") + "/v1/events"
    t0 = clock()
    try:
        for batch in sim.days():
            for k in range(0, len(batch), batch_size):
                chunk = batch[k : k + batch_size]
                if rate is not None:
                    wait = t0 + stats.events / rate - clock()
                    if wait > 0:
                        sleep(wait)
                body = _post(http, url, chunk)
                stats.accepted += int(body.get("accepted", 0))
                stats.rejected += len(body.get("rejected", []))  # [{index, error}, ...]
                stats.events += len(chunk)
                stats.batches += 1
                if on_batch is not None:
                    stats.seconds = clock() - t0
                    on_batch(stats, k + len(chunk), len(batch))
            if outreach_url is not None:
                stats.saved += sim.reach(sorted(poll_reached(http, outreach_url.rstrip("/"))))
            stats.seconds = clock() - t0
            if on_day is not None:
                on_day(sim.day, stats)
    finally:
        if own:
            http.close()
    stats.seconds = clock() - t0
    return stats


def write_truth_file(sim: Simulation, path: Path) -> None:
    """Write the ground truth CSV to ``path``."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        write_truth(sim.truth(), handle)


# --- make run: the progress bar and the summary ---------------------------------------


def stream_with_progress(
    sim: Simulation,
    ingest_url: str,
    console: Console,
    *,
    rate: float | None = None,
    batch_size: int = 1000,
    outreach_url: str | None = None,
    api_key: str | None = None,
) -> StreamStats:
    """:func:`stream_to_ingest` with a rich progress bar over the simulated days."""
    columns = (
        TextColumn("[bold]simulate[/]"),
        BarColumn(),
        TextColumn("day {task.completed:.0f}/{task.total:.0f}"),
        TextColumn("{task.fields[events]:>9,} events  {task.fields[rate]:>7,.0f} ev/s"),
        TextColumn("{task.fields[saved]} saved by outreach"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("days", total=sim.config.days, events=0, rate=0.0, saved=0)

        def on_day(day: int, stats: StreamStats) -> None:
            progress.update(
                task, completed=day, events=stats.events, rate=stats.rate, saved=len(stats.saved)
            )

        return stream_to_ingest(
            sim,
            ingest_url,
            rate=rate,
            batch_size=batch_size,
            outreach_url=outreach_url,
            on_day=on_day,
            api_key=api_key,
        )


def _all_tasks(client: httpx.Client, outreach_url: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, str | int] = {"limit": 200}
        if cursor:
            params["cursor"] = cursor
        response = client.get(outreach_url + "/v1/tasks", params=params)
        response.raise_for_status()
        body = response.json()
        items += body["items"]
        cursor = body.get("next_cursor")
        if not cursor:
            return items


def wait_for_pipeline(sim: Simulation, urls: dict[str, str], *, timeout_s: float = 120.0) -> bool:
    """Wait until scoring has scored the last simulated day and the tasks stop changing.

    Probes a few subscribers who are still there at the end: scoring has caught up
    when their latest score's ``event_time`` is in the last day. Returns False on
    a timeout (the summary then shows what is there so far).
    """
    last_day = sim.end - timedelta(days=1)
    probes = [t.subscriber_id for t in sim.truth() if t.churn_at is None][-5:]
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=10, headers=api_headers()) as client:
        while probes and time.monotonic() < deadline:
            response = client.get(f"{urls['scoring']}/v1/subscribers/{probes[0]}/risk")
            if (
                response.status_code == 200
                and datetime.fromisoformat(response.json()["event_time"]) >= last_day
            ):
                probes.pop(0)
                continue
            time.sleep(0.5)
        if probes:
            return False
        # Alerting and outreach follow scoring by a moment: wait for two equal counts.
        seen = -1
        while time.monotonic() < deadline:
            count = len(_all_tasks(client, urls["outreach"]))
            if count == seen:
                return True
            seen = count
            time.sleep(2.0)
    return False


def _risks(urls: dict[str, str], subscriber_ids: list[str]) -> dict[str, dict[str, Any]]:
    def one(client: httpx.Client, sid: str) -> tuple[str, dict[str, Any] | None]:
        response = client.get(f"{urls['scoring']}/v1/subscribers/{sid}/risk")
        return sid, response.json() if response.status_code == 200 else None

    with httpx.Client(timeout=10, headers=api_headers()) as client, ThreadPoolExecutor(8) as pool:
        found = pool.map(lambda sid: one(client, sid), subscriber_ids)
        return {sid: risk for sid, risk in found if risk is not None}


def _model_table(urls: dict[str, str], risks: dict[str, dict[str, Any]]) -> Table:
    """Who scores: the model's weight now, and the share of current scores it served."""
    with httpx.Client(timeout=10, headers=api_headers()) as client:
        response = client.get(f"{urls['scoring']}/v1/model")
    table = Table(title="The model")
    table.add_column("figure")
    table.add_column("value", justify="right")
    if response.status_code == 200:
        model = response.json()
        table.add_row("kind", str(model.get("kind")))
        table.add_row("weight in the score (the prior has the rest)", f"{model['weight']:.2f}")
        table.add_row(
            "labels learnt (churns)", f"{model['labels_seen']:,} ({model['positives_seen']:,})"
        )
        quality = model.get("quality") or {}
        for key in ("roc_auc", "prior_lead"):
            if quality.get(key) is not None:
                table.add_row(f"horizon labels: {key}", f"{quality[key]:.3f}")
    served = sum(1 for r in risks.values() if r.get("model_version") != PRIOR_VERSION)
    share = served / len(risks) if risks else 0.0
    table.add_row(
        "current scores served by the model", f"{served:,} of {len(risks):,} ({share:.0%})"
    )
    return table


def _months(start: datetime, end: datetime) -> list[str]:
    months, d = [], start.replace(day=1)
    while d < end:
        months.append(f"{d.year:04d}-{d.month:02d}")
        d = (d + timedelta(days=32)).replace(day=1)
    return months


def summary(
    sim: Simulation,
    stats: StreamStats | None,
    urls: dict[str, str],
    *,
    agents: AgentStats | None = None,
) -> list[Table]:
    """The tables ``make run`` prints, from the services' APIs and the ground truth.

    ``agents``: what the simulated account managers did (``churnwatch.agents``).
    """
    truth = {t.subscriber_id: t for t in sim.truth()}
    tables: list[Table] = []

    events = Table(title="Events posted", show_footer=True)
    events.add_column("type", footer="total")
    events.add_column("events", justify="right", footer=f"{sum(sim.events_by_type.values()):,}")
    for event_type, n in sim.events_by_type.most_common():
        events.add_row(event_type, f"{n:,}")
    tables.append(events)

    risks = _risks(urls, sim.subscriber_ids)
    scores = Table(title=f"Scores ({len(risks):,} subscribers scored)")
    scores.add_column("score")
    scores.add_column("subscribers", justify="right")
    scores.add_column("of them churned", justify="right")
    edges = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0001)
    for lo, hi in itertools.pairwise(edges):
        sids = [s for s, r in risks.items() if lo <= r["score"] < hi]
        churned = sum(1 for s in sids if truth[s].churn_at is not None)
        scores.add_row(f"{lo:.1f}-{min(hi, 1.0):.1f}", f"{len(sids):,}", f"{churned:,}")
    bands = Counter(r["band"] for r in risks.values())
    scores.add_row("bands", ", ".join(f"{b} {bands[b]:,}" for b in ("high", "medium", "low")), "")
    tables.append(scores)
    tables.append(_model_table(urls, risks))

    with httpx.Client(timeout=30, headers=api_headers()) as client:
        all_tasks = _all_tasks(client, urls["outreach"])
        messages = client.get(
            urls["sms-gateway"] + "/v1/messages",
            params={"limit": 10_000},
            headers=gateway_headers(GatewaySettings().sms_gateway_token),  # the stand-in's token
        )
        kpis = [
            client.get(urls["outreach"] + "/v1/kpis", params={"period": m}).json()
            for m in _months(sim.start, sim.end + timedelta(days=1))
        ]
    tasks = Table(title=f"Outreach tasks ({len(all_tasks):,})")
    tasks.add_column("kind")
    tasks.add_column("channel")
    tasks.add_column("tasks", justify="right")
    tasks.add_column("by status")
    by_kind: dict[tuple[str, str], Counter[str]] = {}
    for item in all_tasks:
        by_kind.setdefault((item["kind"], item["channel"]), Counter())[item["status"]] += 1
    for (kind, channel), statuses in sorted(by_kind.items()):
        detail = ", ".join(f"{s} {n}" for s, n in statuses.most_common())
        tasks.add_row(kind, channel, f"{sum(statuses.values()):,}", detail)
    tables.append(tasks)

    outcomes = Table(title="Outcomes")
    outcomes.add_column("figure")
    outcomes.add_column("value", justify="right")
    sms_delivered = sum(
        1 for t in all_tasks if t["channel"] == "sms" and t["status"] == "delivered"
    )
    outcomes.add_row("SMS tasks delivered", f"{sms_delivered:,}")
    if messages.status_code == 200:
        outcomes.add_row("SMS at the gateway stand-in", f"{len(messages.json()['messages']):,}")
    for kpi in kpis:
        rbs = kpi.get("reminder_before_suspension", {}).get("overall", {})
        if rbs:
            outcomes.add_row(
                f"reminded before suspension, VIPs, {kpi['period']}",
                f"{rbs['numerator']}/{rbs['denominator']}",
            )
    churners = [t for t in truth.values() if t.churn_at is not None]
    outcomes.add_row("churners (ground truth)", f"{len(churners):,}")
    outcomes.add_row("  with warning signs", f"{sum(t.warned for t in churners):,}")
    retention = {t["subscriber_id"] for t in all_tasks if t["kind"] == "retention"}
    outcomes.add_row(
        "  of them given a retention task",
        f"{sum(1 for t in churners if t.warned and t.subscriber_id in retention):,}",
    )
    if agents is not None:
        outcomes.add_row("calls worked by the simulated managers", f"{agents.claimed:,}")
        for outcome, n in agents.outcomes.most_common():
            outcomes.add_row(f"  {outcome}", f"{n:,}")
    if stats is not None:
        outcomes.add_row("saved by outreach (feedback)", f"{len(stats.saved):,}")
        outcomes.add_row("streamed", f"{stats.events:,} events in {stats.seconds:.1f} s")
    tables.append(outcomes)

    top = Table(title="Top 10 at-risk subscribers (not churned)")
    for column in ("subscriber", "tier", "score", "band", "reasons"):
        top.add_column(column)
    active = [(s, r) for s, r in risks.items() if truth[s].churn_at is None]
    active.sort(key=lambda x: (-x[1]["score"], x[0]))
    for sid, risk in active[:10]:
        reasons = "; ".join(r["text_en"] for r in risk.get("reasons", []))
        top.add_row(sid, truth[sid].tier, f"{risk['score']:.3f}", risk["band"], reasons)
    tables.append(top)
    return tables
