"""``churnwatch simulate``: deterministic, valid, telling its story, to files and to ingest."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from churnwatch.cli import app
from churnwatch.embedded import free_port
from churnwatch.simulator import (
    Simulation,
    SimulationConfig,
    Truth,
    default_streaming_end,
    poll_reached,
    stream_to_ingest,
    write_files,
)
from shared.events import derive_id, parse_event
from shared.topics import Topics
from tests.conftest import REPO, Stack, as_environ, fresh_env
from tests.helpers import read_topic, spawn_up

SMALL = SimulationConfig(subscribers=300, days=45, seed=3)
# The story needs enough churners and recoverers to look at: a bigger, richer run.
STORY = SimulationConfig(subscribers=1500, days=90, seed=11, churn_rate=0.1, recovery_share=0.05)


@pytest.fixture(scope="module")
def story() -> tuple[list[dict[str, Any]], dict[str, Truth]]:
    sim = Simulation(STORY)
    events = list(sim.events())
    return events, {t.subscriber_id: t for t in sim.truth()}


def _by_subscriber(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        out[event["subscriber_id"]].append(event)
    return out


def _voice(events: list[dict[str, Any]], since: datetime, until: datetime) -> tuple[int, int]:
    """(calls, calls to competitor networks) in [since, until)."""
    calls = competitor = 0
    for event in events:
        payload = event["payload"]
        if event["event_type"] != "cdr" or payload["service"] != "voice":
            continue
        if since <= datetime.fromisoformat(event["occurred_at"]) < until:
            calls += payload["count"]
            if payload["counterpart_network"] == "competitor":
                competitor += payload["count"]
    return calls, competitor


def test_same_seed_same_events_and_truth() -> None:
    a, b = Simulation(SMALL), Simulation(SMALL)
    assert list(a.events()) == list(b.events())
    assert a.truth() == b.truth()
    c = Simulation(SimulationConfig(subscribers=300, days=45, seed=4))
    ids_a = {e["event_id"] for e in Simulation(SMALL).events()}
    assert not ids_a & {e["event_id"] for e in c.events()}


def test_events_are_valid_sorted_and_ids_are_derive_id() -> None:
    end = default_streaming_end()
    sim = Simulation(SMALL, end=end)
    events = list(sim.events())
    assert events
    for event in events:
        parse_event(event)  # with the clock check: nothing in the future
    times = [datetime.fromisoformat(e["occurred_at"]) for e in events]
    assert times == sorted(times)
    assert sim.start == end - timedelta(days=SMALL.days) and times[-1] < end
    assert len({e["event_id"] for e in events}) == len(events)
    assert {e["source"] for e in events} == {"simulator"}
    first = events[0]
    seen = [e for e in events if e["subscriber_id"] == first["subscriber_id"]]
    # The n-th event a subscriber's story makes has id derive_id(..., n). In time
    # order two of them can swap (a complaint stamped before the payment made ahead
    # of it, on some start dates), so the ids are compared as a set.
    assert {e["event_id"] for e in seen} == {
        str(derive_id("sim", SMALL.seed, first["subscriber_id"], n)) for n in range(len(seen))
    }


def test_tiers_and_account_managers(story: tuple[list[dict[str, Any]], dict[str, Truth]]) -> None:
    events, truth = story
    profiles = [e["payload"] for e in events if e["event_type"] == "subscriber"]
    assert len(profiles) == STORY.subscribers
    tiers = Counter(p["tier"] for p in profiles)
    assert set(tiers) == {"standard", "vip_guest", "silver", "gold", "diamond"}
    assert tiers["standard"] > sum(tiers.values()) / 2
    for p in profiles:
        assert ("account_manager_id" in p) == (p["tier"] != "standard")
    assert len({p["account_manager_id"] for p in profiles if "account_manager_id" in p}) > 1
    assert Counter(t.tier for t in truth.values()) == tiers


def test_weekly_rhythm(story: tuple[list[dict[str, Any]], dict[str, Truth]]) -> None:
    events, _ = story
    per_day: Counter[datetime] = Counter()
    for event in events:
        if event["event_type"] == "cdr" and event["payload"]["service"] == "voice":
            day = datetime.fromisoformat(event["occurred_at"]).replace(hour=0, minute=0, second=0)
            per_day[day] += event["payload"]["count"]
    weekend = [n for d, n in per_day.items() if d.weekday() >= 5]
    weekday = [n for d, n in per_day.items() if d.weekday() < 5]
    assert sum(weekend) / len(weekend) < 0.85 * sum(weekday) / len(weekday)


def test_warned_churners_show_warning_signs_before_churning(
    story: tuple[list[dict[str, Any]], dict[str, Truth]],
) -> None:
    events, truth = story
    by_sub = _by_subscriber(events)
    start = datetime.fromisoformat(events[0]["occurred_at"]).replace(minute=0, second=0)
    warned = [t for t in truth.values() if t.warned]
    assert len(warned) >= 50
    rising = falling = 0
    for t in warned:
        assert t.churn_at is not None and t.warning_from is not None
        low, high = STORY.warning_days
        assert low <= (t.churn_at - t.warning_from).days <= high + 1
        # Its last event is the churn, a port-out or a cancellation.
        last = by_sub[t.subscriber_id][-1]
        assert last["event_type"] == "churn" and last["payload"]["kind"] == t.churn_kind
        base_calls, base_comp = _voice(
            by_sub[t.subscriber_id], start, max(t.warning_from, start + timedelta(days=7))
        )
        late_calls, late_comp = _voice(
            by_sub[t.subscriber_id], t.churn_at - timedelta(days=7), t.churn_at
        )
        base_days = max(7, (t.warning_from - start).days)
        if base_calls and late_calls and late_comp / late_calls > base_comp / base_calls:
            rising += 1
        if base_calls and late_calls / 7 < base_calls / base_days:
            falling += 1
    # Noise and tiny call counts aside, nearly all show both signs.
    assert rising >= 0.8 * len(warned), (rising, len(warned))
    assert falling >= 0.7 * len(warned), (falling, len(warned))


def test_some_churners_give_no_warning(
    story: tuple[list[dict[str, Any]], dict[str, Truth]],
) -> None:
    events, truth = story
    by_sub = _by_subscriber(events)
    silent = [t for t in truth.values() if t.churn_at is not None and not t.warned]
    assert silent
    calls = competitor = 0
    for t in silent:
        assert t.churn_at is not None and t.warning_from is None
        c, k = _voice(by_sub[t.subscriber_id], t.churn_at - timedelta(days=14), t.churn_at)
        calls, competitor = calls + c, competitor + k
    assert competitor / calls < 0.12  # the baseline 2-8%, no ramp


def test_some_at_risk_subscribers_recover(
    story: tuple[list[dict[str, Any]], dict[str, Truth]],
) -> None:
    events, truth = story
    by_sub = _by_subscriber(events)
    recovered = [t for t in truth.values() if t.recovered]
    assert len(recovered) >= 20
    high_then_low = 0
    for t in recovered:
        assert t.churn_at is None and t.warning_from is not None
        assert by_sub[t.subscriber_id][-1]["event_type"] != "churn"
        weeks = []
        mine = by_sub[t.subscriber_id]
        first = datetime.fromisoformat(mine[0]["occurred_at"]).replace(hour=0, minute=0, second=0)
        for w in range(STORY.days // 7):
            c, k = _voice(mine, first + timedelta(days=7 * w), first + timedelta(days=7 * w + 7))
            weeks.append(k / c if c else 0.0)
        peak = max(range(len(weeks)), key=weeks.__getitem__)
        if weeks[peak] >= 0.2 and min(weeks[peak:]) < weeks[peak] / 2:
            high_then_low += 1
    # Some dips start late enough to be still under way when the period ends.
    assert high_then_low >= 0.5 * len(recovered), (high_then_low, len(recovered))


def test_late_payers_fall_into_arrears_then_get_stop_notices(
    story: tuple[list[dict[str, Any]], dict[str, Truth]],
) -> None:
    events, truth = story
    by_sub = _by_subscriber(events)
    with_arrears = {
        s for s, evs in by_sub.items() if any(e["event_type"] == "arrears" for e in evs)
    }
    late = {s for s, t in truth.items() if t.late_payer}
    assert late and len(with_arrears & late) >= 0.5 * len(late)
    # Arrears are mostly late payers' (and warned churners' falling behind).
    assert len(with_arrears - late) < len(with_arrears)
    notices = [(s, e) for s, evs in by_sub.items() for e in evs if e["event_type"] == "stop_notice"]
    assert len(notices) >= 10
    for sid, notice in notices:
        at = datetime.fromisoformat(notice["occurred_at"])
        earlier = [e for e in by_sub[sid] if e["event_type"] == "arrears"]
        assert any(datetime.fromisoformat(e["occurred_at"]) < at for e in earlier), sid
        assert datetime.fromisoformat(notice["payload"]["suspension_at"]) > at


def _in_warning(sim: Simulation, day: int) -> list[Truth]:
    at = sim.start + timedelta(days=day)
    return [
        t
        for t in sim.truth()
        if t.warned and t.warning_from and t.churn_at and t.warning_from < at < t.churn_at
    ]


def test_reached_churner_stays_and_recovers() -> None:
    config = SimulationConfig(subscribers=400, days=60, seed=5, churn_rate=0.2, outreach_effect=1)
    sim = Simulation(config)
    days = sim.days()
    for _ in range(40):
        next(days)
    later = sim.start + timedelta(days=41)
    candidates = [t for t in _in_warning(sim, 40) if t.churn_at and t.churn_at > later]
    assert candidates
    target = candidates[0].subscriber_id
    warning_from = candidates[0].warning_from
    silent = next(t.subscriber_id for t in sim.truth() if t.churn_at and not t.warned)
    assert sim.reach([target, silent, "nobody"]) == [target]
    assert sim.reach([target]) == []  # reported twice: nothing more
    rest = [e for batch in days for e in batch]
    mine = [e for e in rest if e["subscriber_id"] == target]
    assert mine and all(e["event_type"] != "churn" for e in mine)
    assert any(e["event_type"] == "churn" and e["subscriber_id"] == silent for e in rest)
    truth = {t.subscriber_id: t for t in sim.truth()}
    assert truth[target].saved_by_outreach and truth[target].recovered
    assert truth[target].churn_at is None and truth[target].warning_from == warning_from
    # The fade: the final week's competitor share is lower than the week after reach.
    a_calls, a_comp = _voice(mine, sim.start + timedelta(40), sim.start + timedelta(47))
    b_calls, b_comp = _voice(mine, sim.end - timedelta(7), sim.end)
    assert b_comp / max(b_calls, 1) <= a_comp / max(a_calls, 1)


def test_outreach_effect_zero_saves_nobody() -> None:
    config = SimulationConfig(subscribers=200, days=60, seed=5, churn_rate=0.2, outreach_effect=0)
    sim = Simulation(config)
    days = sim.days()
    for _ in range(40):
        next(days)
    assert sim.reach([t.subscriber_id for t in _in_warning(sim, 40)]) == []


def test_cli_writes_ndjson_and_truth(tmp_path: Path) -> None:
    out, truth = tmp_path / "events.ndjson", tmp_path / "truth.csv"
    args = ["simulate", "-n", "80", "--days", "40", "--seed", "9", "--churn-rate", "0.2"]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--truth", str(truth)])
    assert result.exit_code == 0, result.output
    lines = out.read_bytes().splitlines()
    events = [orjson.loads(line) for line in lines]
    for event in events:
        parse_event(event)
    assert events[0]["occurred_at"].startswith("2026-01-01")  # the fixed default start
    rows = list(csv.DictReader(io.StringIO(truth.read_text())))
    assert len(rows) == 80
    assert list(rows[0])[:4] == ["subscriber_id", "churned", "churn_at", "kind"]
    churns = {e["subscriber_id"]: e["occurred_at"] for e in events if e["event_type"] == "churn"}
    assert {r["subscriber_id"]: r["churn_at"] for r in rows if r["churned"] == "1"} == churns
    assert len(churns) == 16
    # Same arguments, same bytes.
    again = tmp_path / "again.ndjson"
    assert CliRunner().invoke(app, [*args, "--out", str(again)]).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_cli_refuses_bad_arguments() -> None:
    result = CliRunner().invoke(app, ["simulate", "--days", "20", "--out", "-"])
    assert result.exit_code == 2  # churners need more than 30 days
    result = CliRunner().invoke(app, ["simulate", "-n", "5", "--days", "40"])
    assert result.exit_code == 2  # neither --out nor --ingest-url


def test_pacing_and_feedback_over_http() -> None:
    """Paced by a fake clock; the outreach poll feeds a reached churner back."""
    config = SimulationConfig(subscribers=150, days=45, seed=2, churn_rate=0.3, outreach_effect=1)
    probe = Simulation(config)
    later = probe.start + timedelta(days=37)
    at_day_35 = [t for t in _in_warning(probe, 35) if t.churn_at and t.churn_at > later]
    target = next(t.subscriber_id for t in at_day_35)
    posted: list[int] = []
    now = [0.0]
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/events":
            batch = json.loads(request.content)
            posted.append(len(batch))
            now[0] += 0.001  # posting takes a moment
            return httpx.Response(202, json={"accepted": len(batch), "rejected": []})
        assert request.url.params["kind"] == "retention"
        items = []
        # Delivered from day 35 on (the clock of the simulation, not the wall's).
        if request.url.params["status"] == "delivered" and len(posted) and sim.day >= 35:
            items = [{"subscriber_id": target}]
        return httpx.Response(200, json={"items": items, "next_cursor": None})

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    sim = Simulation(config)
    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        stats = stream_to_ingest(
            sim,
            "http://ingest",
            rate=2000,
            batch_size=300,
            outreach_url="http://outreach",
            client=client,
            clock=lambda: now[0],
            sleep=sleep,
        )
    assert stats.events == sum(posted) == stats.accepted and stats.rejected == 0
    assert max(posted) <= 300
    # Never ahead of the rate: the last batch started no earlier than (N - last) / rate.
    assert stats.seconds >= (stats.events - posted[-1]) / 2000
    assert stats.rate <= 2000 * 1.05
    assert stats.saved == [target]
    assert {t.subscriber_id for t in sim.truth() if t.saved_by_outreach} == {target}


def test_poll_reached_follows_the_cursor() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        status, cursor = request.url.params["status"], request.url.params.get("cursor")
        if status == "completed":
            return httpx.Response(
                200, json={"items": [{"subscriber_id": "C"}], "next_cursor": None}
            )
        if cursor is None:
            return httpx.Response(200, json={"items": [{"subscriber_id": "A"}], "next_cursor": "x"})
        return httpx.Response(200, json={"items": [{"subscriber_id": "B"}], "next_cursor": None})

    with httpx.Client(transport=httpx.MockTransport(handler)) as client:
        assert poll_reached(client, "http://outreach") == {"A", "B", "C"}


@pytest.fixture(scope="module")
def ingest(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A real ingest process on the session broker: (its URL, its events topic)."""
    settings = fresh_env(stack)
    port = free_port()
    environ = {**os.environ, **as_environ(settings), "PYTHONPATH": str(REPO)}
    environ["INGEST_PORT"] = str(port)
    log = tmp_path_factory.mktemp("ingest") / "ingest.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.ingest"],
            env=environ,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # readiness polling, as tests/test_e2e.py does
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield url, Topics(settings["kafka_topic_prefix"]).events
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_streams_to_a_real_ingest_at_about_the_rate(
    ingest: tuple[str, str], stack: Stack
) -> None:
    url, topic = ingest
    config = SimulationConfig(subscribers=40, days=35, seed=8)
    sim = Simulation(config, end=default_streaming_end())
    rate = 3000.0
    stats = await asyncio.to_thread(stream_to_ingest, sim, url, rate=rate, batch_size=250)
    assert stats.events > 3000 and stats.accepted == stats.events and stats.rejected == 0
    # Honoured approximately: never faster than the rate, and not absurdly slower.
    assert stats.seconds >= (stats.events - 250) / rate
    assert stats.seconds < 10 * stats.events / rate + 30
    records = await read_topic(stack.bootstrap_servers, topic, count=stats.events)
    expected = [e["event_id"] for e in Simulation(config, end=sim.end).events()]
    assert sorted(orjson.loads(r.value)["event_id"] for r in records) == sorted(expected)


def test_truth_csv_in_memory() -> None:
    sim = Simulation(SimulationConfig(subscribers=30, days=35, seed=1))
    out, truth = io.StringIO(), io.StringIO()
    n = write_files(sim, out, truth)
    assert n == len(out.getvalue().splitlines())
    rows = list(csv.DictReader(io.StringIO(truth.getvalue())))
    assert [r["subscriber_id"] for r in rows] == sim.subscriber_ids
    assert all(datetime.fromisoformat(r["churn_at"]).tzinfo == UTC for r in rows if r["churn_at"])


@pytest.mark.e2e
def test_up_simulate_prints_the_summary(tmp_path: Path, stack: Stack) -> None:
    """``churnwatch up --simulate`` (what ``make run`` does), small; Ctrl-C stops it.

    On the session's broker and PostgreSQL (``up`` starts no embedded ones when
    KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are set; tests/test_up.py covers those).
    """
    import signal

    environ = {**os.environ, **as_environ(fresh_env(stack))}
    environ["COLUMNS"] = "200"  # rich wraps tables at the terminal's width
    output = tmp_path / "up.log"
    command = ["--simulate", "60", "--simulate-days", "35", "--data-dir", str(tmp_path / "data")]
    command += ["--broker-port", str(free_port())]
    process, environ = spawn_up(command, environ, output)
    try:
        deadline = time.monotonic() + 150
        text = ""
        while "churnwatch is up" not in text:  # polling the output, as tests/test_up.py does
            assert process.poll() is None, text
            assert time.monotonic() < deadline, text
            time.sleep(0.5)
            text = output.read_text(errors="replace")
        for title in ("Events posted", "Scores", "Outreach tasks", "Outcomes", "Top 10 at-risk"):
            assert title in text, text
        assert "0 rejected" in text and "/docs" in text and "/metrics" in text, text
        assert "not caught up" not in text, text
        # The simulated managers worked the queues, and the workbench is offered.
        assert "calls worked by the simulated managers" in text, text
        assert "/ui/" in text and "sign in as lead" in text, text
        assert (tmp_path / "data" / "workbench-demo-password").is_file()
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(90) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
