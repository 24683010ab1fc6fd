"""``churnwatch up``: the broker, PostgreSQL, the services and the SMS gateway, until Ctrl-C.

With ``--sample`` or ``--simulate``, the stack is fed once it is ready, and what
it did is printed (the sample's SMS and tasks, the simulation's summary).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer

from churnwatch.commands import console

if TYPE_CHECKING:
    from churnwatch.stack import Child, Stack


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
