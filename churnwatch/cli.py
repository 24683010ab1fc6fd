"""The ``churnwatch`` command line: up, migrate, train, sms-gateway, sample, schemas, rules."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.console import Console

app = typer.Typer(
    help="churnwatch: churn early warning for telecom operators.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True, soft_wrap=True)

if TYPE_CHECKING:
    from churnwatch.stack import Child, Stack


@app.command()
def up(
    sample: Annotated[bool, typer.Option(help="Feed the built-in sample once ready.")] = False,
    simulate: Annotated[
        int | None,
        typer.Option(
            help="Once ready, stream a simulated operator of N subscribers "
            "(churnwatch simulate) and print a summary.",
            min=1,
        ),
    ] = None,
    simulate_days: Annotated[int, typer.Option(help="Days to simulate.", min=31)] = 90,
    simulate_churn_from_day: Annotated[
        int,
        typer.Option(
            help="First day a simulated churner may leave: 1 is a fresh deployment at an "
            "operator whose subscribers are already leaving (docs/simulator.md).",
            min=0,
        ),
    ] = 1,
    simulate_rate: Annotated[
        float, typer.Option(help="Events per second to stream.", min=1)
    ] = 10_000,
    data_dir: Annotated[Path, typer.Option(help="Embedded data and logs.")] = Path(".churnwatch"),
    broker_port: Annotated[int, typer.Option(help="Embedded broker port.")] = 9092,
    broker_storage: Annotated[
        str,
        typer.Option(
            help="Embedded broker storage: s3 (durable, on SeaweedFS under DATA_DIR/broker) "
            "or memory (faster; lost when the broker stops).",
        ),
    ] = "s3",
    ready_timeout: Annotated[float, typer.Option(help="Seconds to wait for readiness.")] = 90,
    stream_clock: Annotated[
        bool,
        typer.Option(
            help="Give the services the settings --simulate gives them (outreach on the "
            "stream's time), for a separate `churnwatch simulate --stack-dir`.",
        ),
    ] = False,
) -> None:
    """Start the broker, PostgreSQL, the four services and the SMS gateway; Ctrl-C stops all.

    A child that dies is restarted with backoff while the rest keep running
    (docs/operations.md). With KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL set, those
    are used and no embedded broker / database is started.
    """
    from churnwatch.embedded import BROKER_STORAGES
    from churnwatch.stack import Stack

    if broker_storage not in BROKER_STORAGES:
        raise typer.BadParameter("memory or s3", param_hint="--broker-storage")
    stopping = False
    running = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        if not running:
            # Still starting (waiting for readiness, feeding the sample): unwind now;
            # the finally below stops whatever was started.
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)

    environ = dict(os.environ)
    if simulate or stream_clock:
        from churnwatch.simulator import SIMULATION_ENV

        # Outreach on the stream's time, so the simulated months' deadlines are real
        # to it (shared/clock.py); the user's own settings win.
        environ = SIMULATION_ENV | environ
    stack = Stack(
        data_dir,
        broker_storage=broker_storage,
        broker_port=broker_port,
        ready_timeout_s=ready_timeout,
        say=console.print,
        environ=environ,
    )
    try:
        stack.start()
        console.print(
            f"api key     {stack.api_key}\n            (all scopes; saved in "
            f"{stack.data_dir / 'dev-api-key'};"
            " export CHURNWATCH_API_KEY=<it> for curl and churnwatch commands)"
        )
        for child in stack.services:
            console.print(f"{child.name:<11} [green]{child.url}[/] (pid {child.pid})")
        console.print(f"logs        {stack.logs}")
        if sample:
            _feed_sample(stack.services)
        if simulate:
            _feed_simulation(stack, simulate, simulate_days, simulate_rate, simulate_churn_from_day)
        console.print(
            "[bold]churnwatch is up.[/] A child that dies is restarted. Press Ctrl-C to stop."
        )
        running = True
        while not stopping:
            time.sleep(0.2)
    except KeyboardInterrupt:
        console.print("interrupted during start-up")
    finally:
        running = True  # a second Ctrl-C must not interrupt the clean-up
        console.print("stopping...")
        stack.stop()
        console.print("stopped.")


def _feed_sample(children: list[Child]) -> None:
    from churnwatch.keys import api_headers
    from churnwatch.sample import AT_RISK_ID, VIP_ID, sample_events

    urls = {c.name: c.url for c in children}
    events = sample_events()
    from churnwatch.gateway import GatewaySettings, gateway_headers

    # The stand-in's listing wants its token (the one the child was started with).
    gateway = gateway_headers(GatewaySettings().sms_gateway_token)
    with httpx.Client(timeout=30, headers=api_headers()) as client:
        response = client.post(urls["ingest"] + "/v1/events", json=events)
        response.raise_for_status()
        console.print(f"sample      posted {response.json()['accepted']} events")
        deadline = time.monotonic() + 60
        sms: list[Any] = []
        retention: list[Any] = []
        while (not sms or not retention) and time.monotonic() < deadline:
            sms = client.get(urls["sms-gateway"] + "/v1/messages", headers=gateway).json()[
                "messages"
            ]
            retention = client.get(
                urls["outreach"] + "/v1/tasks", params={"kind": "retention"}
            ).json()["items"]
            time.sleep(0.5)
    console.print(f"sample      {len(sms)} SMS at the gateway, {len(retention)} retention task(s)")
    gauth = '-H "Authorization: Bearer ${SMS_GATEWAY_TOKEN:-dev-gateway-token}"'
    console.print(f"  reminder SMS:    curl {gauth} {urls['sms-gateway']}/v1/messages")
    # The APIs want the key: `export CHURNWATCH_API_KEY=<the key printed above>`.
    auth = '-H "Authorization: Bearer $CHURNWATCH_API_KEY"'
    console.print(
        f"  VIP's tasks:     curl {auth} '{urls['outreach']}/v1/tasks?subscriber_id={VIP_ID}'"
    )
    console.print(f"  retention tasks: curl {auth} '{urls['outreach']}/v1/tasks?kind=retention'")
    console.print(
        f"  risk and why:    curl {auth} {urls['scoring']}/v1/subscribers/{AT_RISK_ID}/risk"
    )
    console.print(f"  call queue:      curl {auth} {urls['outreach']}/v1/call-queue")


def _feed_simulation(
    stack: Stack, subscribers: int, days: int, rate: float, churn_from_day: int
) -> None:
    from churnwatch.simulator import (
        Simulation,
        SimulationConfig,
        default_streaming_end,
        stream_with_progress,
        summary,
        wait_for_pipeline,
    )

    urls = {c.name: c.url for c in stack.services}
    sim = Simulation(
        SimulationConfig(subscribers=subscribers, days=days, churn_from_day=churn_from_day),
        end=default_streaming_end(),
    )
    console.print(
        f"simulate    {subscribers:,} subscribers x {days} days "
        f"({sim.start:%Y-%m-%d} to {sim.end:%Y-%m-%d}), up to {rate:,.0f} events/s"
    )
    from churnwatch.agents import CallAgents
    from churnwatch.demo_people import ensure_demo_accounts
    from churnwatch.keys import api_headers

    # Sign-ins for the workbench: a team lead and the simulated managers' own.
    demo = ensure_demo_accounts(stack.env["DATABASE_URL"], sim.manager_ids, stack.data_dir)

    # Simulated account managers work the call queues while the days stream.
    agents = CallAgents(sim, urls["outreach"], headers=api_headers())
    agents.start()
    try:
        stats = stream_with_progress(
            sim, urls["ingest"], console, rate=rate, outreach_url=urls["outreach"]
        )
    except BaseException:
        agents.stop()
        raise
    console.print(
        f"simulate    posted {stats.events:,} events in {stats.seconds:.1f} s "
        f"({stats.rate:,.0f}/s), {stats.rejected} rejected; waiting for the pipeline..."
    )
    waited = time.monotonic()
    try:
        caught_up = wait_for_pipeline(sim, urls)
    finally:
        agents.stop()
    if caught_up:
        console.print(f"simulate    the services caught up {time.monotonic() - waited:.1f} s later")
    else:
        console.print("[yellow]the pipeline has not caught up yet: figures so far[/]")
    for table in summary(sim, stats, urls, agents=agents.stats):
        console.print(table)
    console.print("Look further:")
    for name in ("ingest", "scoring", "alerting", "outreach"):
        console.print(f"  {name:<9} API docs {urls[name]}/docs   metrics {urls[name]}/metrics")
    gauth = '-H "Authorization: Bearer ${SMS_GATEWAY_TOKEN:-dev-gateway-token}"'
    console.print(f"  SMS sent  curl {gauth} {urls['sms-gateway']}/v1/messages")
    auth = '-H "Authorization: Bearer $CHURNWATCH_API_KEY"'  # the key printed at start
    console.print(f"  retention curl {auth} '{urls['outreach']}/v1/tasks?kind=retention'")
    console.print(f"  KPIs      curl {auth} {urls['outreach']}/v1/kpis")
    console.print(
        f"[bold]Workbench[/] {urls['outreach']}/ui/  sign in as [bold]{demo.lead}[/] (team lead) "
        f"or {demo.managers[0]}...{demo.managers[-1]} (account managers), password "
        f"[bold]{demo.password}[/] (saved in {stack.data_dir / 'workbench-demo-password'})"
    )


@app.command()
def migrate() -> None:
    """Apply the database migrations to DATABASE_URL."""
    from churnwatch.migrate import upgrade
    from shared.settings import BaseServiceSettings

    upgrade(BaseServiceSettings().database_url)
    console.print("migrated to head")


@app.command()
def train(
    file: Annotated[Path, typer.Argument(help="NDJSON history of events (our contract).")],
    batch_size: Annotated[int, typer.Option(help="Events per engine batch.")] = 500,
) -> None:
    """Warm-start the scoring model from a history file, through the same engine code.

    Events are replayed in time order through the features, labels and model the
    service uses (in memory), and the model is stored as a new checkpoint that
    scoring replicas resume from (SCORING_MODEL_NAME, SCORING_MODEL).
    """
    import asyncio
    from datetime import UTC, datetime

    import orjson

    from services.scoring import service
    from services.scoring.batch import run_in_memory
    from services.scoring.engine import Scorer
    from services.scoring.settings import ScoringSettings
    from shared.db import create_engine
    from shared.events import parse_event

    settings = ScoringSettings()
    events = []
    with file.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                try:
                    events.append(parse_event(orjson.loads(line)))
                except ValueError as exc:
                    console.print(f"[red]{file}:{number}: {exc}[/]")
                    raise typer.Exit(2) from exc
    events.sort(key=lambda e: e.occurred_at)

    async def _train() -> None:
        engine = create_engine(settings)
        try:
            async with engine.connect() as conn:
                model = await service.load_model(
                    conn, name=settings.scoring_model_name, params=settings.model_params()
                )
            scorer = Scorer(settings.engine_params(), model)
            states = run_in_memory(scorer, events, batch_size=batch_size)
            async with engine.begin() as conn:
                checkpoint = await service.save_checkpoint(
                    conn,
                    name=settings.scoring_model_name,
                    model=scorer.model,
                    now=datetime.now(UTC),
                    keep=settings.scoring_checkpoints_kept,
                )
        finally:
            await engine.dispose()
        quality = scorer.model.quality.summary() if scorer.model.quality else {}
        console.print(
            f"trained on {len(events)} events of {len(states)} subscribers: "
            f"{scorer.model.labels_seen} labels ({scorer.model.positives_seen} churn), "
            f"ROC AUC {quality.get('roc_auc')}, checkpoint {checkpoint}"
        )

    asyncio.run(_train())


@app.command("sms-gateway")
def sms_gateway() -> None:
    """Run the SMS provider stand-in (records messages; never sends a real SMS)."""
    import uvicorn

    from churnwatch.gateway import GatewaySettings, create_gateway_app
    from shared.logging import configure_logging

    settings = GatewaySettings()
    configure_logging(settings.log_level, json=settings.log_json, service="sms-gateway")
    uvicorn.run(
        create_gateway_app(settings),
        host=settings.host,
        port=settings.sms_gateway_port,
        log_config=None,
        access_log=False,
    )


@app.command("sample")
def post_sample(
    ingest_url: Annotated[str, typer.Option(help="Ingest base URL.")] = "http://127.0.0.1:8081",
    api_key: Annotated[
        str | None, typer.Option(envvar="CHURNWATCH_API_KEY", help="API key (events:write).")
    ] = None,
) -> None:
    """Post the built-in sample events to ingest."""
    from churnwatch.keys import api_headers
    from churnwatch.sample import sample_events

    response = httpx.post(
        ingest_url + "/v1/events", json=sample_events(), timeout=30, headers=api_headers(api_key)
    )
    console.print(response.status_code, response.json())


@app.command()
def schemas(
    out: Annotated[Path, typer.Option(help="Directory for the JSON Schema files.")] = Path(
        "docs/schemas"
    ),
) -> None:
    """Write the JSON Schema of every event type to OUT/<type>.json."""
    from shared.events import json_schemas

    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.json").write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
    console.print(f"wrote {len(json_schemas())} schemas to {out}")


rules_app = typer.Typer(help="Alerting rules files.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


def _register_keys() -> None:
    # Imported here, like the other commands' heavy imports, to keep `--help` fast.
    from churnwatch.dlq import dlq_app
    from churnwatch.keys import keys_app
    from churnwatch.people import people_app
    from churnwatch.phonekeys import phone_keys_app

    app.add_typer(keys_app, name="keys")
    app.add_typer(dlq_app, name="dlq")
    app.add_typer(phone_keys_app, name="phone-keys")
    app.add_typer(people_app, name="people")


_register_keys()


@rules_app.command("check")
def rules_check(
    file: Annotated[
        Path | None,
        typer.Argument(help="The rules file (YAML); omitted checks the shipped default."),
    ] = None,
) -> None:
    """Validate a rules file without starting anything; exit 1 naming each bad line."""
    from services.alerting.rules import DEFAULT_RULES_FILE, RulesError, load_rules

    try:
        rules = load_rules(file)
    except RulesError as exc:
        console.print(f"[red]invalid[/red]\n{exc}", markup=True, highlight=False)
        raise typer.Exit(1) from None
    names = ", ".join(r.name for r in rules.rules)
    console.print(f"{file or DEFAULT_RULES_FILE}: ok, {len(rules.rules)} rules ({names})")


@app.command("import-table")
def import_table(
    file: Annotated[Path, typer.Argument(help="The table (CSV).")],
    mapping: Annotated[
        Path,
        typer.Option(help="The mapping (YAML, docs/import.md), or a shipped one by name."),
    ],
    out: Annotated[
        Path | None, typer.Option(help="NDJSON events file ('-' or unset: stdout).")
    ] = None,
    truth: Annotated[
        Path | None, typer.Option(help="Write the ground truth (CSV: who churned, when).")
    ] = None,
    post: Annotated[
        str | None, typer.Option(help="Ingest base URL to POST the events to, in batches.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Read only the first N rows.", min=1)] = None,
    as_of: Annotated[
        str | None,
        typer.Option(help="Override the mapping's timeline.as_of (ISO date or time; UTC)."),
    ] = None,
    summary: Annotated[
        Path | None,
        typer.Option(help="Also write the figures as JSON (rows, rejections by reason, events)."),
    ] = None,
) -> None:
    """Turn a churn table into events of our contract with a declarative YAML mapping.

    Rows that cannot be mapped are reported (row number and reason) and skipped.
    Exit 0 when imported, 1 when no row could be imported or posting failed,
    2 when the mapping or the table cannot be used.
    """
    from churnwatch.importer import run

    code = run(
        file,
        mapping,
        out=out,
        truth=truth,
        post=post,
        limit=limit,
        as_of=as_of,
        console=console,
        summary=summary,
    )
    raise typer.Exit(code)


@app.command()
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


@app.command()
def backtest(
    events: Annotated[list[Path], typer.Argument(help="NDJSON event files (our contract).")],
    report: Annotated[
        Path | None, typer.Option(help="Write metrics.json, charts and index.html here.")
    ] = None,
    rules: Annotated[
        Path | None, typer.Option(help="Alerting rules file (default: the shipped one).")
    ] = None,
    truth: Annotated[
        Path | None, typer.Option(help="Ground truth CSV (from import-table --truth).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Tie-break, subscriber order and baseline.")] = 42,
    capacity: Annotated[
        int | None, typer.Option(help="k of the daily top-k (default: managers x daily calls).")
    ] = None,
    order: Annotated[
        str, typer.Option(help="auto, time or subscriber (docs/backtest.md).")
    ] = "auto",
    window_hours: Annotated[float, typer.Option(help="Event time per batch.", min=0.01)] = 24.0,
) -> None:
    """Replay event files through scoring and alerting in memory; report how well it warns."""
    from churnwatch.backtest_metrics import main as run_backtest

    if order not in ("auto", "time", "subscriber"):
        raise typer.BadParameter("order must be auto, time or subscriber", param_hint="--order")
    code = run_backtest(
        events,
        report=report,
        rules_file=rules,
        truth_file=truth,
        seed=seed,
        capacity=capacity,
        order=order,  # type: ignore[arg-type]
        window_hours=window_hours,
        console=console,
    )
    raise typer.Exit(code)


@app.command("evaluate-table")
def evaluate_table(
    file: Annotated[Path, typer.Argument(help="The table (CSV), one row per subscriber.")],
    mapping: Annotated[
        Path,
        typer.Option(help="The mapping (YAML, docs/import.md), or a shipped one by name."),
    ],
    report: Annotated[Path, typer.Option(help="Write index.html, figures.json and charts here.")],
    seed: Annotated[int, typer.Option(help="Subscriber order, folds and bootstrap.")] = 42,
    folds: Annotated[int, typer.Option(help="Cross-validation folds of the baselines.", min=2)] = 5,
) -> None:
    """Import a churn table, backtest it and compare with models trained on the raw table.

    One score per subscriber, side by side: churnwatch's online score against
    logistic regression and HistGBM cross-validated on the table's own columns,
    with calibration, feature importance, column coverage and rejected rows
    (docs/evaluation.md). Exit 0 when done, 1 when no row could be imported,
    2 when the mapping or the table cannot be used.
    """
    from churnwatch.evaluation.table import evaluate_table as run_evaluation

    code = run_evaluation(file, mapping, report=report, seed=seed, folds=folds, console=console)
    raise typer.Exit(code)


@app.command()
def drill(
    names: Annotated[
        list[str] | None, typer.Argument(help="Drills to run (default: all; see --list).")
    ] = None,
    short: Annotated[bool, typer.Option(help="Only the short run CI does.")] = False,
    list_drills: Annotated[bool, typer.Option("--list", help="List the drills and exit.")] = False,
    rate: Annotated[float, typer.Option(help="Events per second each drill posts.", min=1)] = 1500,
    subscribers: Annotated[
        int | None, typer.Option(help="Simulated subscribers per drill (default: the drill's).")
    ] = None,
    settle_timeout: Annotated[
        float, typer.Option(help="Seconds a drill waits for every effect after its load.")
    ] = 180,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep the stack's data and logs here (default: a temp dir).")
    ] = None,
) -> None:
    """Fault drills on the embedded stack, each counted end to end (docs/faults.md).

    Exits 1 if any drill lost or duplicated anything or left an SMS without a final state.
    """
    from churnwatch.drill import DRILLS, results_table, run, select

    if list_drills:
        for d in DRILLS:
            console.print(
                f"{d.name:<18} {d.description}{'  (short run)' if d.in_short_run else ''}"
            )
        return
    try:
        chosen = select(names or [], short=short)
    except KeyError as exc:
        raise typer.BadParameter(str(exc.args[0])) from exc
    console.print(f"drills      {', '.join(d.name for d in chosen)}")

    def started(stack: Any) -> None:
        console.print(f"stack       up (data and logs in {stack.data_dir})")

    def finished(result: Any) -> None:
        verdict = "[green]pass[/]" if result.passed else "[red]FAIL[/]"
        console.print(f"{result.drill.name:<18} {verdict} in {result.seconds:.0f} s")
        for note in result.notes:
            console.print(f"    {note}")
        if result.error:
            console.print(f"    [red]{result.error}[/]")
        if result.tally is not None and not result.passed:
            console.print(f"    {result.tally}")

    results = run(
        chosen,
        data_dir=data_dir,
        rate=rate,
        settle_timeout_s=settle_timeout,
        subscribers=subscribers,
        on_start=started,
        on_result=finished,
    )
    Console(width=120).print(results_table(results))
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point."""
    app()
