"""``churnwatch simulate`` watching the pipeline: the operator-scale run (docs/simulator.md).

While the simulation streams to ingest, a :class:`~churnwatch.monitor.Monitor`
samples every service's ``/metrics`` (and this process's own memory and posted
events, as the service ``simulate``) every ``every_s`` seconds; a live display
shows the posting progress and rate above a table of each service's events/s,
consumer lag and resident memory. After the last post the monitor keeps going
until every lag is 0 in :data:`CATCH_UP_ROUNDS` rounds in a row (the services
refresh their lag gauge every few seconds, so one zero may be stale) or a
timeout, then the summary: events posted, wall time, posting rate, each
service's peaks, and how long after the last post the pipeline caught up.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from prometheus_client import CollectorRegistry, Counter, ProcessCollector, generate_latest
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from churnwatch.monitor import MONITORED, Monitor, Sample, Source, write_csv_rows
from churnwatch.simulator import Simulation, StreamStats, stream_to_ingest
from churnwatch.stack import SERVICES_FILE, published_services

__all__ = [
    "CATCH_UP_ROUNDS",
    "MonitoredRun",
    "Targets",
    "resolve_targets",
    "stream_monitored",
    "summary_tables",
]

CATCH_UP_ROUNDS = 2
"""Rounds in a row with every lag 0 that say the pipeline has caught up."""

LOCAL = "simulate"
"""The name this process goes by in the samples."""

RATE_WINDOW_S = 5.0  # the "now" in the posting rate


@dataclass(frozen=True)
class Targets:
    """Where to stream and what to watch, from ``--stack-dir`` and ``--monitor``."""

    services: dict[str, str]
    """Service name -> base URL whose ``/metrics`` the monitor samples."""
    ingest_url: str | None
    api_key: str | None
    """The stack's development key (``DATA_DIR/dev-api-key``), if it has one."""


def resolve_targets(stack_dir: Path | None, monitors: Iterable[str]) -> Targets:
    """Read a running ``churnwatch up``'s URLs from ``stack_dir`` and add ``NAME=URL`` specs.

    The stack publishes them in ``DATA_DIR/services.json`` once every service is
    ready. A ``--monitor`` spec overrides the stack's URL of the same name.
    Raises ValueError with a message for the user.
    """
    services: dict[str, str] = {}
    ingest_url = api_key = None
    if stack_dir is not None:
        published = published_services(stack_dir)
        if published is None:
            raise ValueError(
                f"no running `churnwatch up` in {stack_dir} ({stack_dir / SERVICES_FILE} is "
                "missing: it is written once every service is ready)"
            )
        services = {name: published[name] for name in MONITORED if name in published}
        ingest_url = published.get("ingest")
        key_file = stack_dir / "dev-api-key"
        if key_file.is_file():
            api_key = key_file.read_text(encoding="utf-8").strip() or None
    for spec in monitors:
        name, sep, url = spec.partition("=")
        if not sep or not name.strip() or not url.strip().startswith(("http://", "https://")):
            raise ValueError(f"--monitor wants SERVICE=URL (http://...), not {spec!r}")
        if name.strip() == LOCAL:
            raise ValueError(f"--monitor: {LOCAL!r} is this process's own name in the samples")
        services[name.strip()] = url.strip()
    return Targets(services, ingest_url, api_key)


@dataclass
class MonitoredRun:
    """What a monitored stream did and saw."""

    stats: StreamStats
    monitor: Monitor
    services: list[str]
    """The monitored services (without ``simulate``)."""
    last_post_s: float
    """When the last event was posted, on the samples' time axis."""
    caught_up_after_s: float | None
    """From the last post to the first of the rounds with every lag 0 (None: not seen)."""
    waited_s: float
    """How long it watched after the last post."""
    interrupted: bool = False
    csv_path: Path | None = None


def _bytes(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e9:.2f} GB" if x >= 1e9 else f"{x / 1e6:.0f} MB"


def _number(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _services_table(latest: Mapping[str, Sample], names: list[str], every_s: float) -> Table:
    table = Table(title=f"pipeline (/metrics every {every_s:g} s)", title_justify="left")
    table.add_column("service")
    table.add_column("events/s", justify="right")
    table.add_column("lag", justify="right")
    table.add_column("RSS", justify="right")
    for name in names:
        s = latest.get(name)
        if s is None:
            table.add_row(name, "", "", "")
        elif not s.up:
            table.add_row(name, "[red]unreachable[/]", "", "")
        else:
            table.add_row(name, _number(s.events_per_s), _number(s.lag), _bytes(s.rss_bytes))
    return table


def _local_source() -> tuple[Source, Counter]:
    """The exposition of this process: its memory and a counter of the events it posted."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)  # process_resident_memory_bytes, on Linux
    posted = Counter(
        "churnwatch_simulate_events_posted", "Events posted to ingest", registry=registry
    )
    return (lambda: generate_latest(registry).decode()), posted


def _round_line(found: list[Sample]) -> str:
    """One round on one line, for a console that is not a terminal."""
    parts = []
    for s in found:
        if not s.up:
            parts.append(f"{s.service} unreachable")
        else:
            parts.append(
                f"{s.service} {_number(s.events_per_s)} ev/s lag {_number(s.lag)} "
                f"{_bytes(s.rss_bytes)}"
            )
    elapsed = found[0].elapsed_s if found else 0.0
    return f"monitor {elapsed:>7,.0f} s  " + " | ".join(parts)


def stream_monitored(
    sim: Simulation,
    ingest_url: str,
    console: Console,
    services: Mapping[str, str],
    *,
    every_s: float = 10.0,
    csv_path: Path | None = None,
    catch_up_timeout_s: float = 3600.0,
    rate: float | None = None,
    batch_size: int = 1000,
    outreach_url: str | None = None,
    api_key: str | None = None,
) -> MonitoredRun:
    """Stream ``sim`` to ingest under the monitor and a live display; wait for the lags.

    Ctrl-C while waiting for the lags ends the wait (``interrupted``); the
    summary still follows. Ctrl-C while posting stops the run.
    """
    csv_file: IO[str] | None = None
    if csv_path is not None:  # first: a path that cannot be written stops the run here
        csv_file = csv_path.open("w", encoding="utf-8", newline="")
        write_csv_rows(csv_file, [], header=True)
    local, posted = _local_source()
    names = list(services)
    monitor = Monitor({**services, LOCAL: local})
    # Not a terminal (a log file, CI): no live display, a line per round instead.
    live = console.is_terminal

    def on_round(found: list[Sample]) -> None:
        if csv_file is not None:
            write_csv_rows(csv_file, found)
            csv_file.flush()  # a long run that dies keeps what it saw
        if not live:
            console.print(_round_line(found), highlight=False)

    monitor.on_round = on_round

    progress = Progress(
        TextColumn("[bold]simulate[/]"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%  day {task.fields[day]}/{task.total:.0f}"),
        TextColumn("{task.fields[events]:>11,} posted"),
        TextColumn("{task.fields[now]:>7,.0f} ev/s now  {task.fields[avg]:>7,.0f} avg"),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("days", total=sim.config.days, day=1, events=0, now=0.0, avg=0.0)
    status = ["generating day 1 (a large day takes a while before its first post)"]
    window: deque[tuple[float, int]] = deque()

    def view() -> RenderableType:
        latest = monitor.latest()
        return Group(
            progress, _services_table(latest, [*names, LOCAL], every_s), f"[dim]{status[0]}[/]"
        )

    def on_batch(stats: StreamStats, done: int, total: int) -> None:
        posted.inc(stats.events - (window[-1][1] if window else 0))
        now = time.monotonic()
        window.append((now, stats.events))
        while len(window) > 2 and window[0][0] < now - RATE_WINDOW_S:
            window.popleft()
        span = window[-1][0] - window[0][0]
        current = (window[-1][1] - window[0][1]) / span if span > 0 else 0.0
        progress.update(
            task,
            completed=sim.day - 1 + done / max(total, 1),
            day=sim.day,
            events=stats.events,
            now=current,
            avg=stats.rate,
        )
        status[0] = f"posting day {sim.day} of {sim.config.days}"

    def on_day(day: int, stats: StreamStats) -> None:
        progress.update(task, completed=day)
        if day < sim.config.days:
            status[0] = f"generating day {day + 1}"

    monitor.start(every_s)
    interrupted = False
    try:
        display = (
            Live(console=console, get_renderable=view, refresh_per_second=2)
            if live
            else contextlib.nullcontext()
        )
        with display:
            stats = stream_to_ingest(
                sim,
                ingest_url,
                rate=rate,
                batch_size=batch_size,
                outreach_url=outreach_url,
                on_day=on_day,
                on_batch=on_batch,
                api_key=api_key,
            )
            last_post = monitor.elapsed()
            status[0] = "all posted; waiting for every lag to reach 0"
            if not live:
                console.print(f"posted {stats.events:,} events; {status[0]}")
            try:
                caught_up = _wait_for_lags(
                    monitor, last_post, catch_up_timeout_s if names else 0.0, status
                )
            except KeyboardInterrupt:
                caught_up, interrupted = None, True
            waited = monitor.elapsed() - last_post
            status[0] = (
                f"every lag 0 {caught_up:,.1f} s after the last post"
                if caught_up is not None
                else f"stopped watching {waited:,.0f} s after the last post"
            )
    finally:
        monitor.stop()
        if csv_file is not None:
            csv_file.close()
    return MonitoredRun(stats, monitor, names, last_post, caught_up, waited, interrupted, csv_path)


def _wait_for_lags(
    monitor: Monitor, last_post: float, timeout_s: float, status: list[str]
) -> float | None:
    """Seconds from the last post to the first of CATCH_UP_ROUNDS drained rounds, or None."""
    deadline = time.monotonic() + timeout_s
    seen = 0
    streak: list[float] = []
    while True:
        rounds = monitor.rounds
        for found in rounds[seen:]:
            if not found or found[0].elapsed_s < last_post:
                continue  # sampled while events were still being posted
            if monitor.caught_up(found):
                streak.append(found[0].elapsed_s)
                if len(streak) >= CATCH_UP_ROUNDS:
                    return streak[0] - last_post
            else:
                streak.clear()
        seen = len(rounds)
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        status[0] = (
            f"all posted {monitor.elapsed() - last_post:,.0f} s ago; waiting for every lag "
            f"to reach 0 ({left:,.0f} s left; Ctrl-C stops waiting)"
        )
        time.sleep(0.2)


def summary_tables(run: MonitoredRun, sim: Simulation) -> list[Table]:
    """The run's figures, and each service's peaks."""
    stats = run.stats
    figures = Table(title="Operator-scale run")
    figures.add_column("figure")
    figures.add_column("value", justify="right")
    figures.add_row(
        "simulated",
        f"{sim.config.subscribers:,} subscribers x {sim.config.days} day(s)",
    )
    figures.add_row(
        "events posted",
        f"{stats.events:,} ({stats.accepted:,} accepted, {stats.rejected:,} rejected)",
    )
    figures.add_row("wall time (generating and posting)", f"{stats.seconds:,.1f} s")
    figures.add_row("events/s posted", f"{stats.rate:,.0f}")
    if not run.services:
        caught = "not watched (no service monitored)"
    elif run.caught_up_after_s is not None:
        caught = f"{run.caught_up_after_s:,.1f} s after the last post"
    elif run.interrupted:
        caught = f"[yellow]not yet[/] (stopped waiting after {run.waited_s:,.0f} s)"
    else:
        caught = f"[yellow]not within {run.waited_s:,.0f} s[/] of the last post"
    figures.add_row("every lag 0", caught)
    if run.csv_path is not None:
        figures.add_row("samples (CSV)", str(run.csv_path))

    peaks = Table(title="Per service, over the run")
    peaks.add_column("service")
    for column in ("peak RSS", "peak lag", "peak events/s", "unreachable samples"):
        peaks.add_column(column, justify="right")
    samples = run.monitor.samples
    for name in [*run.services, LOCAL]:
        down = sum(1 for s in samples if s.service == name and not s.up)
        peaks.add_row(
            name,
            _bytes(run.monitor.peak(name, "rss_bytes")),
            _number(run.monitor.peak(name, "lag")),
            _number(run.monitor.peak(name, "events_per_s")),
            str(down),
        )
    return [figures, peaks]
