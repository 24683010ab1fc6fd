"""The pipeline monitor (churnwatch.monitor) and ``churnwatch simulate --monitor``.

Real expositions over real HTTP: each fake service is a ``prometheus_client``
registry behind a local ``http.server``; only the monitor's clock is ours.
"""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from typer.testing import CliRunner

from churnwatch.cli import app
from churnwatch.monitor import CSV_COLUMNS, Monitor, Sample, write_csv_rows
from churnwatch.scalerun import resolve_targets
from churnwatch.stack import SERVICES_FILE


class FakeService:
    """A registry served at ``/metrics``; POST /v1/events counts ingest's accepted events."""

    def __init__(self, service: str, port: int = 0) -> None:
        self.registry = CollectorRegistry()
        self.lag = Gauge(
            "churnwatch_consumer_lag",
            "lag",
            ["service", "topic", "partition"],
            registry=self.registry,
        )
        self.rss = Gauge("process_resident_memory_bytes", "rss", registry=self.registry)
        self.ingest = Counter(
            "churnwatch_ingest_events", "ingest", ["event_type", "result"], registry=self.registry
        )
        self.scoring = Counter(
            "churnwatch_scoring_events", "scoring", ["result"], registry=self.registry
        )
        self.records = Counter(
            "churnwatch_consumer_records", "records", ["service", "topic"], registry=self.registry
        )
        self.service = service
        self.auth: list[str] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = port
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = generate_latest(owner.registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                events = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.auth.append(self.headers.get("Authorization", ""))
                for event in events:
                    owner.ingest.labels(event["event_type"], "accepted").inc()
                body = json.dumps({"accepted": len(events), "rejected": []}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


@pytest.fixture
def services() -> Iterator[dict[str, FakeService]]:
    made = {name: FakeService(name) for name in ("ingest", "scoring", "outreach")}
    yield made
    for service in made.values():
        service.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _by_service(found: list[Sample]) -> dict[str, Sample]:
    return {s.service: s for s in found}


def test_rates_lag_sums_and_rss_from_real_expositions(services: dict[str, FakeService]) -> None:
    ingest, scoring, outreach = services["ingest"], services["scoring"], services["outreach"]
    ingest.ingest.labels("cdr", "accepted").inc(1000)
    ingest.ingest.labels("cdr", "rejected").inc(70)  # never reached the pipeline: not counted
    ingest.rss.set(150e6)
    scoring.scoring.labels("applied").inc(400)
    scoring.scoring.labels("duplicate").inc(100)
    for partition, lag in enumerate((10, 20, 30)):
        scoring.lag.labels("scoring", "churnwatch.events", str(partition)).set(lag)
    scoring.rss.set(2.5e9)
    outreach.records.labels("outreach", "churnwatch.tasks").inc(5)
    outreach.lag.labels("outreach", "churnwatch.tasks", "0").set(0)
    clock = Clock()
    monitor = Monitor({name: s.url for name, s in services.items()}, clock=clock)
    try:
        first = _by_service(monitor.sample())
        assert all(s.up and s.elapsed_s == 0.0 for s in first.values())
        assert first["ingest"].events_per_s is None  # nothing to compare with yet
        assert first["ingest"].lag is None  # no consumer: no lag
        assert first["ingest"].rss_bytes == 150e6
        assert first["scoring"].lag == 60  # summed over the partitions
        assert first["scoring"].rss_bytes == 2.5e9
        assert first["outreach"].lag == 0

        ingest.ingest.labels("cdr", "accepted").inc(400)
        ingest.ingest.labels("billing", "accepted").inc(100)
        scoring.scoring.labels("applied").inc(180)
        scoring.scoring.labels("duplicate").inc(20)  # consumed all the same
        scoring.lag.labels("scoring", "churnwatch.events", "1").set(0)
        outreach.records.labels("outreach", "churnwatch.task-updates").inc(15)
        clock.now += 10.0
        second = _by_service(monitor.sample())
        assert second["ingest"].elapsed_s == 10.0
        assert second["ingest"].events_per_s == pytest.approx(50.0)
        assert second["scoring"].events_per_s == pytest.approx(20.0)
        assert second["scoring"].lag == 40
        assert second["outreach"].events_per_s == pytest.approx(1.5)
        assert monitor.peak("scoring", "lag") == 60
        assert monitor.peak("scoring", "rss_bytes") == 2.5e9
        assert monitor.peak("ingest", "events_per_s") == pytest.approx(50.0)
        assert monitor.peak("ingest", "lag") is None
        assert not monitor.caught_up(monitor.rounds[-1])

        scoring.lag.clear()
        scoring.lag.labels("scoring", "churnwatch.events", "0").set(0)
        clock.now += 10.0
        assert monitor.caught_up(monitor.sample())  # ingest never had a lag: it counts as 0
        assert len(monitor.rounds) == 3 and len(monitor.samples) == 9
    finally:
        monitor.stop()


def test_a_service_down_is_a_gap_and_its_rate_resumes(services: dict[str, FakeService]) -> None:
    scoring = services["scoring"]
    scoring.scoring.labels("applied").inc(1000)
    scoring.lag.labels("scoring", "churnwatch.events", "0").set(0)
    clock = Clock()
    monitor = Monitor({"scoring": scoring.url}, clock=clock, timeout_s=1.0)
    try:
        monitor.sample()
        scoring.stop()
        clock.now += 10.0
        (down,) = monitor.sample()  # no exception
        assert not down.up and down.error
        assert (down.events_per_s, down.lag, down.rss_bytes) == (None, None, None)
        assert not monitor.caught_up([down])

        scoring.scoring.labels("applied").inc(600)
        scoring.start()  # back on the same port
        clock.now += 20.0
        (back,) = monitor.sample()
        assert back.up
        assert back.events_per_s == pytest.approx(20.0)  # 600 over the 30 s since the last good
        assert monitor.caught_up([back])
    finally:
        monitor.stop()


def test_a_counter_that_went_back_is_a_restarted_process(services: dict[str, FakeService]) -> None:
    outreach = services["outreach"]
    outreach.records.labels("outreach", "churnwatch.tasks").inc(500)
    outreach.lag.labels("outreach", "churnwatch.tasks", "0").set(3)
    clock = Clock()
    monitor = Monitor({"outreach": outreach.url}, clock=clock)
    try:
        monitor.sample()
        port = outreach.port
        outreach.stop()
        restarted = FakeService("outreach", port)  # a new process: counters from zero
        try:
            restarted.records.labels("outreach", "churnwatch.tasks").inc(40)
            clock.now += 4.0
            (found,) = monitor.sample()
            assert found.events_per_s == pytest.approx(10.0)
            # It had a lag before and has none now (not yet assigned): not drained.
            assert found.lag is None and not monitor.caught_up([found])
        finally:
            restarted.stop()
    finally:
        monitor.stop()


def test_a_source_answering_garbage_or_raising_is_a_gap() -> None:
    def broken() -> str:
        raise RuntimeError("no exposition")

    monitor = Monitor({"garbage": lambda: "this is not {an exposition", "broken": broken})
    try:
        found = _by_service(monitor.sample())
        assert not found["garbage"].up and not found["broken"].up
        assert "no exposition" in found["broken"].error
    finally:
        monitor.stop()


def test_csv_rows_leave_a_gap_empty() -> None:
    out = io.StringIO()
    write_csv_rows(out, [], header=True)
    write_csv_rows(
        out,
        [
            Sample(1.5, "scoring", True, 2209.26, 1200.0, 2.5e9),
            Sample(1.5, "alerting", False, None, None, None, error="refused"),
            Sample(1.5, "ingest", True, None, None, 1.5e8),
        ],
    )
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1:] == [
        ["1.500", "scoring", "2209.3", "1200", "2500000000"],
        ["1.500", "alerting", "", "", ""],
        ["1.500", "ingest", "", "", "150000000"],
    ]


def test_the_thread_samples_every_interval(services: dict[str, FakeService]) -> None:
    monitor = Monitor({"scoring": services["scoring"].url})
    seen: list[list[Sample]] = []
    fourth = threading.Event()

    def on_round(found: list[Sample]) -> None:
        seen.append(found)
        if len(seen) >= 4:
            fourth.set()

    monitor.on_round = on_round
    monitor.start(0.05)
    assert len(monitor.rounds) == 1  # the first round before start() returns
    assert fourth.wait(5), "the monitor's thread did not sample four rounds in 5 s"
    monitor.stop()
    rounds = monitor.rounds
    assert len(rounds) >= 4 and len(seen) == len(rounds)
    times = [r[0].elapsed_s for r in rounds]
    assert times == sorted(times) and times[-1] >= 0.1


def test_targets_from_a_stack_dir_and_monitor_options(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no running `churnwatch up`"):
        resolve_targets(tmp_path, [])
    urls = {
        "sms-gateway": "http://127.0.0.1:8085",
        "ingest": "http://127.0.0.1:8081",
        "scoring": "http://127.0.0.1:8082",
    }
    (tmp_path / SERVICES_FILE).write_text(json.dumps(urls))
    (tmp_path / "dev-api-key").write_text("cw_dev_key\n")
    targets = resolve_targets(tmp_path, ["scoring=http://127.0.0.1:9999", "extra=http://h:1"])
    assert targets.services == {
        "ingest": "http://127.0.0.1:8081",  # the gateway stand-in serves no /metrics
        "scoring": "http://127.0.0.1:9999",
        "extra": "http://h:1",
    }
    assert (targets.ingest_url, targets.api_key) == ("http://127.0.0.1:8081", "cw_dev_key")
    for bad in ("scoring", "scoring=localhost:1", "=http://h:1", "simulate=http://h:1"):
        with pytest.raises(ValueError, match="--monitor"):
            resolve_targets(None, [bad])


def test_simulate_with_the_monitor_streams_waits_and_reports(
    services: dict[str, FakeService], tmp_path: Path
) -> None:
    ingest, scoring = services["ingest"], services["scoring"]
    ingest.rss.set(120e6)
    scoring.lag.labels("scoring", "churnwatch.events", "0").set(0)
    (tmp_path / SERVICES_FILE).write_text(json.dumps({"ingest": ingest.url}))
    (tmp_path / "dev-api-key").write_text("cw_the_stacks_key\n")
    out = tmp_path / "monitor.csv"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            *("-n", "30", "--days", "1", "--churn-from-day", "0"),
            *("--stack-dir", str(tmp_path), "--monitor", f"scoring={scoring.url}"),
            *("--monitor-every", "0.1", "--monitor-out", str(out), "--monitor-timeout", "20"),
        ],
        env={"CHURNWATCH_API_KEY": "", "COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    (family,) = ingest.ingest.collect()
    posted = int(sum(s.value for s in family.samples if s.name == "churnwatch_ingest_events_total"))
    assert posted > 30  # profiles and a day of usage
    assert set(ingest.auth) == {"Bearer cw_the_stacks_key"}
    assert "Operator-scale run" in result.output
    assert f"{posted:,} ({posted:,} accepted, 0 rejected)" in result.output
    assert "s after the last post" in result.output  # every lag 0, twice in a row
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["service"] for r in rows} == {"ingest", "scoring", "simulate"}
    assert {r["lag"] for r in rows if r["service"] == "scoring"} == {"0"}
    assert all(r["rss_bytes"] for r in rows)
    assert {r["rss_bytes"] for r in rows if r["service"] == "ingest"} == {"120000000"}


def test_simulate_refuses_monitoring_files_or_without_services(tmp_path: Path) -> None:
    runner = CliRunner()
    args = ["simulate", "-n", "5", "--days", "1", "--churn-from-day", "0"]
    result = runner.invoke(
        app, [*args, "--out", str(tmp_path / "e.ndjson"), "--monitor", "a=http://h:1"]
    )
    assert result.exit_code == 2 and "for streaming" in result.output
    result = runner.invoke(
        app, [*args, "--ingest-url", "http://h:1", "--monitor-out", str(tmp_path / "m.csv")]
    )
    assert result.exit_code == 2 and "--monitor-out needs" in result.output
    result = runner.invoke(app, [*args, "--stack-dir", str(tmp_path)])
    assert result.exit_code == 2 and "no running `churnwatch up`" in result.output


def test_a_stack_publishes_its_services_while_it_runs(tmp_path: Path) -> None:
    from churnwatch.embedded import Launch
    from churnwatch.stack import Child, Stack, published_services

    stack = Stack(tmp_path, broker_storage="memory", broker_port=1, ready_timeout_s=1, say=print)
    for name, port in (("sms-gateway", 8085), ("ingest", 18081)):
        stack.services.append(
            Child(name, port, lambda: Launch([], {}), lambda: True, tmp_path / f"{name}.log")
        )
    assert published_services(tmp_path) is None
    stack._publish_services()  # what start() does once every service is ready
    assert published_services(tmp_path) == {
        "sms-gateway": "http://127.0.0.1:8085",
        "ingest": "http://127.0.0.1:18081",
    }
    assert resolve_targets(tmp_path, []).services == {"ingest": "http://127.0.0.1:18081"}
    stack.stop()
    assert published_services(tmp_path) is None
