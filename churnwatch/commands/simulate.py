"""``churnwatch simulate``: a simulated operator, written to files or streamed to ingest."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from churnwatch.commands import console


def simulate(
    subscribers: Annotated[
        int, typer.Option("--subscribers", "-n", help="Subscribers.", min=0)
    ] = 2000,
    days: Annotated[int, typer.Option(help="Days (more than 30 when anyone churns).", min=1)] = 60,
    seed: Annotated[int, typer.Option(help="Fixes the population, the events and their ids.")] = 7,
    churn_rate: Annotated[float, typer.Option(help="Share who churn without outreach.")] = 0.08,
    churn_from_day: Annotated[
        int,
        typer.Option(
            help="First day (0-based) a churner may leave; earlier churners' warning signs "
            "began before the first day.",
            min=0,
        ),
    ] = 30,
    silent_share: Annotated[float, typer.Option(help="Share of churners with no warning.")] = 0.10,
    recovery_share: Annotated[
        float, typer.Option(help="Share of the others who show warning signs, then recover.")
    ] = 0.04,
    outreach_effect: Annotated[
        float, typer.Option(help="Chance a churner reached by a retention task stays.")
    ] = 0.5,
    out: Annotated[
        Path | None, typer.Option(help="Write the events as NDJSON here ('-': stdout).")
    ] = None,
    truth: Annotated[Path | None, typer.Option(help="Write the ground truth (CSV) here.")] = None,
    ingest_url: Annotated[
        str | None, typer.Option(help="Stream to this ingest (POST /v1/events) instead.")
    ] = None,
    outreach_url: Annotated[
        str | None,
        typer.Option(help="Streaming: poll this outreach for reached subscribers (feedback)."),
    ] = None,
    rate: Annotated[
        float | None, typer.Option(help="Streaming: at most this many events/s.", min=1)
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Streaming: events per POST.", min=1)] = 1000,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="CHURNWATCH_API_KEY",
            help="Streaming: API key (events:write, and tasks:read with --outreach-url).",
        ),
    ] = None,
    end: Annotated[
        str | None,
        typer.Option(
            help="ISO time the period ends at, or 'now' (the last midnight UTC). "
            "Default: files start on 2026-01-01; streams end at the last midnight UTC."
        ),
    ] = None,
    stack_dir: Annotated[
        Path | None,
        typer.Option(
            help="Stream into the `churnwatch up` running on this data dir and monitor its "
            "services (its ingest URL and dev API key are the defaults).",
        ),
    ] = None,
    monitor: Annotated[
        list[str] | None,
        typer.Option(help="Streaming: sample SERVICE=URL's /metrics (repeatable)."),
    ] = None,
    monitor_every: Annotated[float, typer.Option(help="Seconds between samples.", min=0.1)] = 10,
    monitor_out: Annotated[
        Path | None,
        typer.Option(
            help="Write the samples as CSV (elapsed_s,service,events_per_s,lag,rss_bytes)."
        ),
    ] = None,
    monitor_timeout: Annotated[
        float, typer.Option(help="Seconds to wait after the last post for every lag to be 0.")
    ] = 3600,
) -> None:
    """Simulate an operator (docs/simulator.md): write NDJSON files or stream to ingest.

    With --stack-dir or --monitor, the services' events/s, lag and memory are
    shown while it streams, and the run waits for every lag to reach 0
    (docs/simulator.md, "Operator-scale run").
    """
    from datetime import UTC, datetime

    from churnwatch.scalerun import resolve_targets
    from churnwatch.simulator import (
        Simulation,
        SimulationConfig,
        default_streaming_end,
        stream_with_progress,
        write_files,
        write_truth_file,
    )

    try:
        targets = resolve_targets(stack_dir, monitor or [])
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    ingest_url = ingest_url or (targets.ingest_url if out is None else None)
    api_key = api_key or targets.api_key
    if (out is None) == (ingest_url is None):
        console.print("[red]give exactly one of --out and --ingest-url (or --stack-dir)[/]")
        raise typer.Exit(2)
    if out is not None and (targets.services or monitor_out):
        console.print("[red]--stack-dir, --monitor and --monitor-out are for streaming[/]")
        raise typer.Exit(2)
    if monitor_out is not None and not targets.services:
        console.print("[red]--monitor-out needs --monitor or --stack-dir[/]")
        raise typer.Exit(2)
    try:
        config = SimulationConfig(
            subscribers=subscribers,
            days=days,
            seed=seed,
            churn_rate=churn_rate,
            churn_from_day=churn_from_day,
            silent_churn_share=silent_share,
            recovery_share=recovery_share,
            outreach_effect=outreach_effect,
        )
        if end == "now" or (end is None and ingest_url is not None):
            end_at: datetime | None = default_streaming_end()
        elif end is not None:
            end_at = datetime.fromisoformat(end)
            end_at = end_at if end_at.tzinfo else end_at.replace(tzinfo=UTC)
        else:
            end_at = None
        sim = Simulation(config, end=end_at)
    except ValueError as exc:
        console.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from exc
    started = time.monotonic()
    if out is not None:
        if str(out) == "-":
            n = write_files(sim, sys.stdout)
        else:
            with out.open("w", encoding="utf-8") as handle:
                n = write_files(sim, handle)
        seconds = time.monotonic() - started
        console.print(f"wrote {n:,} events in {seconds:.1f} s ({n / max(seconds, 1e-9):,.0f}/s)")
    elif targets.services:
        assert ingest_url is not None
        from churnwatch.scalerun import stream_monitored, summary_tables

        run = stream_monitored(
            sim,
            ingest_url,
            console,
            targets.services,
            every_s=monitor_every,
            csv_path=monitor_out,
            catch_up_timeout_s=monitor_timeout,
            rate=rate,
            batch_size=batch_size,
            outreach_url=outreach_url,
            api_key=api_key,
        )
        for table in summary_tables(run, sim):
            console.print(table)
    else:
        assert ingest_url is not None
        stats = stream_with_progress(
            sim,
            ingest_url,
            console,
            rate=rate,
            batch_size=batch_size,
            outreach_url=outreach_url,
            api_key=api_key,
        )
        console.print(
            f"posted {stats.events:,} events in {stats.seconds:.1f} s ({stats.rate:,.0f}/s): "
            f"{stats.accepted:,} accepted, {stats.rejected:,} rejected, "
            f"{len(stats.saved)} saved by outreach"
        )
    if truth is not None:
        write_truth_file(sim, truth)
        console.print(f"truth: {truth}")
