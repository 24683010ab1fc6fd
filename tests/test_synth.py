"""The synthetic population: deterministic, valid against the contract, and telling the story."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from churnwatch.synth import NAMESPACE, Population, generate, iter_events, write_ndjson
from shared.events import parse_event

SMALL: dict[str, Any] = {"subscribers": 60, "days": 45, "churn_rate": 0.2}


@pytest.fixture(scope="module")
def population() -> Population:
    return generate(subscribers=1000, days=90)


def _by_subscriber(events: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        out[event["subscriber_id"]].append(event)
    return out


def _competitor_share(events: list[dict[str, Any]], since: datetime, until: datetime) -> float:
    """Competitor calls / all calls, from the voice cdr records in [since, until)."""
    calls = competitor = 0
    for event in events:
        if event["event_type"] != "cdr" or event["payload"]["service"] != "voice":
            continue
        if not since <= datetime.fromisoformat(event["occurred_at"]) < until:
            continue
        calls += event["payload"]["count"]
        if event["payload"]["counterpart_network"] == "competitor":
            competitor += event["payload"]["count"]
    return competitor / calls if calls else 0.0


def test_same_seed_same_events() -> None:
    assert generate(**SMALL, seed=3) == generate(**SMALL, seed=3)


def test_different_seed_different_events() -> None:
    a, b = generate(**SMALL, seed=3), generate(**SMALL, seed=4)
    assert a.events != b.events
    assert not {e["event_id"] for e in a.events} & {e["event_id"] for e in b.events}


def test_stream_is_the_same_as_the_list() -> None:
    assert list(iter_events(**SMALL, seed=5)) == generate(**SMALL, seed=5).events


def test_every_event_parses_with_the_contract() -> None:
    population = generate(**SMALL)
    types = set()
    for event in population.events:
        parsed = parse_event(event)
        assert str(parsed.event_id) == event["event_id"]
        types.add(event["event_type"])
        # Round trip through JSON too, as ingest receives them.
        parse_event(json.dumps(event))
    assert {"subscriber", "cdr", "billing", "payment", "churn"} <= types


def test_rarer_event_types_parse(population: Population) -> None:
    seen: dict[str, dict[str, Any]] = {}
    for event in population.events:
        seen.setdefault(event["event_type"], event)
    assert set(seen) == {
        "subscriber",
        "cdr",
        "billing",
        "payment",
        "arrears",
        "stop_notice",
        "complaint",
        "churn",
    }
    for event in seen.values():
        parse_event(event)
    downgrades = [
        e
        for e in population.events
        if e["event_type"] == "billing" and e["payload"].get("plan_change") == "downgrade"
    ]
    assert downgrades
    parse_event(downgrades[0])


def test_event_ids_are_unique_uuid5(population: Population) -> None:
    ids = [e["event_id"] for e in population.events]
    assert len(set(ids)) == len(ids)
    first = population.events[0]
    assert first["event_id"] == str(uuid.uuid5(NAMESPACE, f"7|{first['subscriber_id']}|0"))


def test_events_are_sorted_by_occurred_at(population: Population) -> None:
    times = [datetime.fromisoformat(e["occurred_at"]) for e in population.events]
    assert times == sorted(times)
    assert times[0] >= datetime(2026, 1, 1, tzinfo=UTC)
    assert times[-1] < datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=90)


def test_start_moves_everything() -> None:
    start = datetime(2025, 6, 1, 12, tzinfo=UTC)
    population = generate(**SMALL, start=start)
    times = [datetime.fromisoformat(e["occurred_at"]) for e in population.events]
    assert start <= min(times)
    assert max(times) < start + timedelta(days=SMALL["days"])


def test_every_subscriber_starts_with_a_profile(population: Population) -> None:
    by_sub = _by_subscriber(population.events)
    assert set(by_sub) == set(population.subscribers)
    for events in by_sub.values():
        assert events[0]["event_type"] == "subscriber"
        assert sum(e["event_type"] == "subscriber" for e in events) == 1


def test_churners_events_stop_at_their_churn_event(population: Population) -> None:
    by_sub = _by_subscriber(population.events)
    for subscriber, events in by_sub.items():
        churns = [e for e in events if e["event_type"] == "churn"]
        if subscriber not in population.churn_at:
            assert not churns
            continue
        assert len(churns) == 1
        assert events[-1] is churns[0]
        churn_at = datetime.fromisoformat(churns[0]["occurred_at"])
        assert churn_at == population.churn_at[subscriber]
        assert churn_at >= datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=30)


def test_churn_share_is_roughly_the_churn_rate(population: Population) -> None:
    share = len(population.churn_at) / len(population.subscribers)
    assert share == pytest.approx(0.15, abs=0.02)
    assert set(population.churn_at) <= set(population.subscribers)


def test_churners_drift_to_competitors_before_churning() -> None:
    """Churners' competitor share in the 14 days before churn is well above non-churners'
    (over the period's last 14 days). No silent churners here: they show no drift.
    """
    population = generate(subscribers=600, days=75, silent_churn_share=0.0)
    by_sub = _by_subscriber(population.events)
    end = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=75)
    churners = [
        _competitor_share(by_sub[s], at - timedelta(days=14), at)
        for s, at in population.churn_at.items()
    ]
    others = [
        _competitor_share(by_sub[s], end - timedelta(days=14), end)
        for s in population.subscribers
        if s not in population.churn_at
    ]
    churner_avg = sum(churners) / len(churners)
    other_avg = sum(others) / len(others)
    assert churner_avg > 0.2
    assert other_avg < 0.1
    assert churner_avg > 3 * other_avg


def test_silent_churners_show_no_drift() -> None:
    population = generate(subscribers=400, days=60, churn_rate=0.25, silent_churn_share=1.0)
    by_sub = _by_subscriber(population.events)
    shares = [
        _competitor_share(by_sub[s], at - timedelta(days=14), at)
        for s, at in population.churn_at.items()
    ]
    assert sum(shares) / len(shares) < 0.1


def test_no_churn_without_churn_rate() -> None:
    population = generate(subscribers=50, days=20, churn_rate=0.0)
    assert not population.churn_at
    assert all(e["event_type"] != "churn" for e in population.events)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"days": 20},  # churners need more than 30 days
        {"days": 0},
        {"subscribers": -1},
        {"churn_rate": 1.5},
        {"silent_churn_share": -0.1},
        {"id_prefix": "bad prefix"},
        {"start": datetime(2025, 1, 1)},  # naive
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        generate(**{"subscribers": 10, **kwargs})
    with pytest.raises(ValueError):  # noqa: PT011
        iter_events(**{"subscribers": 10, **kwargs})


def test_write_ndjson(tmp_path: Path) -> None:
    population = generate(**SMALL)
    path = tmp_path / "events.ndjson"
    write_ndjson(population, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == population.events
