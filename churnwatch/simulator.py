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

import itertools
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

if TYPE_CHECKING:
    from churnwatch.agents import AgentStats
from churnwatch.gateway import GatewaySettings, gateway_headers
from churnwatch.keys import api_headers
from churnwatch.simulation import (
    ID_TAG,
    RECOVERY_DAYS,
    SOURCE,
    TRUTH_COLUMNS,
    Simulation,
    SimulationConfig,
    Truth,
    default_streaming_end,
    write_files,
    write_truth,
    write_truth_file,
)
from churnwatch.simulator_stream import (
    REACHED_STATUSES,
    StreamStats,
    poll_reached,
    stream_to_ingest,
)
from services.scoring.model import PRIOR_VERSION

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
# The simulation itself is in churnwatch/simulation.py and the streaming in
# churnwatch/simulator_stream.py; the names this module used to define are still
# importable from here.
__all__ += [
    "ID_TAG",
    "REACHED_STATUSES",
    "RECOVERY_DAYS",
    "SOURCE",
    "TRUTH_COLUMNS",
    "Truth",
    "write_truth",
    "write_truth_file",
]


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
