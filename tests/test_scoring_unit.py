"""Features, labels, the model and its reasons: the pure engine, no Kafka or database."""

from __future__ import annotations

import pickle
import random
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from services.scoring.batch import run_in_memory
from services.scoring.codec import encode
from services.scoring.features import FEATURES, apply_event, is_churned, new_state, vector
from services.scoring.model import PRIOR_VERSION, ChurnModel, ModelParams, build_model
from services.scoring.pipeline import (
    binned,
    binned_pairs,
    clip_scaled,
    numbers_only,
    passed_through,
)
from services.scoring.scorer import DAY, EngineParams, Scorer, Snapshot
from shared.events import Event, parse_event
from tests.helpers import calls, event, stop_notice

NOW = datetime.now(UTC)


def parsed(items: list[dict[str, Any]]) -> list[Event]:
    return [parse_event(i) for i in items]


def state_of(events: list[Event]) -> dict[str, Any]:
    state = new_state()
    for e in events:
        apply_event(state, e)
    return state


def mixed_history(subscriber: str = "S") -> list[dict[str, Any]]:
    return (
        calls(subscriber, n=20, competitor=False, days_ago=20)
        + calls(subscriber, n=15, competitor=True, days_ago=3)
        + [
            event("complaint", subscriber, {"severity": "high"}, at=NOW - timedelta(days=2)),
            event(
                "arrears",
                subscriber,
                {"overdue_amount": "10", "days_overdue": 5},
                at=NOW - timedelta(days=1),
            ),
            event(
                "billing",
                subscriber,
                {
                    "period": "2026-10",
                    "amount_due": "30",
                    "plan_id": "P",
                    "plan_change": "downgrade",
                },
                at=NOW - timedelta(days=25),
            ),
            event(
                "payment", subscriber, {"amount": "4", "late": True}, at=NOW - timedelta(hours=5)
            ),
            event(
                "cdr",
                subscriber,
                {"service": "sms", "direction": "outgoing", "count": 4, "counterpart_id": "c-1"},
                at=NOW - timedelta(days=6),
            ),
            event(
                "cdr",
                subscriber,
                {"service": "data", "direction": "outgoing", "bytes": 5_000_000},
                at=NOW - timedelta(days=9),
            ),
            event(
                "cdr",
                subscriber,
                {
                    "service": "voice",
                    "direction": "outgoing",
                    "duration_s": 60,
                    "counterpart_id": "c-2",
                },
                at=NOW - timedelta(days=8),
            ),
        ]
    )


def test_every_feature_is_in_the_catalogue() -> None:
    assert set(vector(new_state())) == set(FEATURES)


def test_features_do_not_depend_on_arrival_order() -> None:
    events = parsed(mixed_history())
    expected = vector(state_of(events))
    rng = random.Random(1)
    for _ in range(5):
        shuffled = events[:]
        rng.shuffle(shuffled)
        assert vector(state_of(shuffled)) == pytest.approx(expected, rel=1e-9, abs=1e-9)
    assert expected["distinct_contacts_30d"] == 2
    assert expected["downgrades_90d"] > 0 and expected["late_payments_90d"] > 0


def test_competitor_share_and_decay() -> None:
    x = vector(state_of(parsed(calls("S", n=10, competitor=True, days_ago=0))))
    assert x["competitor_share_7d"] == pytest.approx(10 / 11, rel=1e-3)
    old = vector(
        state_of(
            parsed(
                calls("S", n=10, competitor=True, days_ago=14)
                + calls("S", n=1, competitor=False, days_ago=0)
            )
        )
    )
    # Two 7-day half-lives later the same ten calls weigh a quarter; the feature reads
    # the sum at its steady level: 14 days of summing filled 1 - 2**-2 of it.
    assert old["calls_7d"] == pytest.approx((10 * 0.25 + 1) / 0.75, rel=0.01)
    assert old["competitor_share_7d"] < x["competitor_share_7d"]


def test_payments_clear_the_stop_notice_and_partial_payments_add_up() -> None:
    notice = parse_event(stop_notice("S", amount="50.00", in_hours=10))
    state = state_of([notice])
    x = vector(state)
    assert x["stop_notice_pending"] == 1.0 and x["hours_to_suspension"] == pytest.approx(10, 0.01)
    apply_event(state, parse_event(event("payment", "S", {"amount": "20"})))
    assert vector(state)["stop_notice_pending"] == 1.0  # not enough yet
    apply_event(state, parse_event(event("payment", "S", {"amount": "30"})))
    assert vector(state)["stop_notice_pending"] == 0.0
    apply_event(state, parse_event(event("payment", "S", {"amount": "5"})))
    assert vector(state)["stop_notice_pending"] == 0.0


def test_a_payment_clears_debts_whichever_arrives_first() -> None:
    arrears = event(
        "arrears", "S", {"overdue_amount": "30", "days_overdue": 12}, at=NOW - timedelta(days=2)
    )
    payment = event("payment", "S", {"amount": "30"}, at=NOW - timedelta(days=1))
    for order in ([arrears, payment], [payment, arrears]):
        x = vector(state_of(parsed(order)))
        assert (x["arrears_amount"], x["arrears_days"]) == (0.0, 0.0)


def test_churn_then_reactivation() -> None:
    churned_at = NOW - timedelta(days=2)
    state = state_of(parsed([event("churn", "S", {"kind": "port_out"}, at=churned_at)]))
    assert is_churned(state)
    older = event("reactivation", "S", {}, at=churned_at - timedelta(days=1))
    apply_event(state, parse_event(older))
    assert is_churned(state)
    newer = event("reactivation", "S", {}, at=churned_at + timedelta(days=1))
    apply_event(state, parse_event(newer))
    assert not is_churned(state)


# --- labels ---------------------------------------------------------------------------


def day_of_calls(subscriber: str, day: float) -> list[Event]:
    at = NOW - timedelta(days=day)
    return parsed(
        [
            event(
                "cdr",
                subscriber,
                {"service": "voice", "direction": "outgoing", "duration_s": 60},
                at=at,
            )
        ]
    )


class MemorySnapshots:
    """Snapshots by (subscriber, time) until their labels come."""

    def __init__(self) -> None:
        self.by_key: dict[tuple[str, float], Snapshot] = {}

    def add(self, subscriber_id: str, snapshot: Snapshot) -> None:
        self.by_key[(subscriber_id, snapshot.at)] = snapshot

    def take(
        self, subscriber_id: str, resolved: list[tuple[float, bool | None]]
    ) -> list[tuple[Snapshot, bool]]:
        out = []
        for at, label in resolved:
            snapshot = self.by_key.pop((subscriber_id, at), None)
            if snapshot is not None and label is not None:
                out.append((snapshot, label))
        return out


def scorer(**params: Any) -> Scorer:
    params.setdefault("min_history_s", 0.0)
    return Scorer(EngineParams(**params), ChurnModel(ModelParams(min_labels=5)))


def test_one_snapshot_per_interval_and_churn_labels_them() -> None:
    s, store = scorer(horizon_s=30 * DAY, lateness_s=DAY), MemorySnapshots()
    state = None
    for day in (50, 45, 45.5, 20, 10):  # 45.5 is within a day of 45: no new snapshot
        step = s.step(state, day_of_calls("S", day))
        state = step.state
        if step.snapshot:
            store.add("S", step.snapshot)
        assert s.learn(store.take("S", step.resolved)) is None
    # Snapshots at -50, -45 expired (older than 30 d + 1 d lateness) as negatives.
    assert (s.model.labels_seen, s.model.positives_seen) == (2, 0)
    assert len(state["pending"]) == 2  # -20 and -10
    churn = parsed([event("churn", "S", {"kind": "port_out"}, at=NOW - timedelta(days=1))])
    step = s.step(state, churn)
    assert sorted(label for _, label in step.resolved) == [True, True]
    assert step.scored is None and step.state["pending"] == []
    # The step is the horizon here: the same two labels settle the horizon too.
    assert step.settled == step.resolved
    examples = store.take("S", step.resolved)
    s.learn(examples)  # learnt as non-churns once their step passed...
    s.settle(examples)  # ...and again as churns: they churned within the horizon
    assert (s.model.labels_seen, s.model.positives_seen) == (4, 2)


def test_a_churn_older_than_the_horizon_is_a_negative() -> None:
    s = scorer(horizon_s=10 * DAY, lateness_s=40 * DAY)  # lateness keeps it pending
    state = s.step(None, day_of_calls("S", 40)).state
    step = s.step(
        state, parsed([event("churn", "S", {"kind": "cancellation"}, at=NOW - timedelta(days=5))])
    )
    assert [label for _, label in step.resolved] == [False]


def test_involuntary_churn_after_an_unpaid_suspension() -> None:
    s = scorer(involuntary_churn_s=7 * DAY)
    state = s.step(None, day_of_calls("S", 30)).state
    notice = parse_event(
        event(
            "stop_notice",
            "S",
            {"suspension_at": (NOW - timedelta(days=20)).isoformat(), "amount_to_pay": "40"},
            at=NOW - timedelta(days=25),
        )
    )
    state = s.step(state, [notice]).state
    step = s.step(state, day_of_calls("S", 2))  # 18 days after the suspension, unpaid
    assert is_churned(step.state) and step.scored is None
    assert [label for _, label in step.resolved] == [True, True]


def test_late_events_are_counted_and_still_applied() -> None:
    s = scorer(lateness_s=DAY)
    state = s.step(None, day_of_calls("S", 1)).state
    step = s.step(state, day_of_calls("S", 5))
    assert step.late == 1
    assert step.state["decayed"]["calls_7d"][0] > 1.5


# --- the model ------------------------------------------------------------------------


def test_prior_rises_with_warning_signs_and_explains_itself_in_two_languages() -> None:
    model = ChurnModel(ModelParams())
    calm = vector(state_of(parsed(calls("S", n=30, competitor=False, days_ago=1))))
    risky = vector(
        state_of(
            parsed(
                calls("S", n=30, competitor=True, days_ago=1)
                + [event("complaint", "S", {}, at=NOW - timedelta(hours=i)) for i in range(2)]
                + [event("arrears", "S", {"overdue_amount": "40", "days_overdue": 40})]
            )
        )
    )
    assert model.score(calm) < 0.3 < 0.7 < model.score(risky)
    reasons = model.explain(risky)
    assert len(reasons) == 3 and reasons[0].code == "COMPETITOR_CALLS_UP"
    assert reasons[0].text_zh == "与竞争对手网络通话占比上升"
    assert [r.contribution for r in reasons] == sorted(
        (r.contribution for r in reasons), reverse=True
    )
    assert model.explain(calm) == []


def _examples(n: int, seed: int) -> list[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    base = vector(new_state())
    out = []
    for _ in range(n):
        x = dict(base)
        x["competitor_share_7d"], x["complaints_30d"] = rng.random(), rng.random() * 2
        out.append((x, x["competitor_share_7d"] + rng.random() * 0.3 > 0.8))
    return out


def test_the_model_serves_only_once_it_has_proven_itself() -> None:
    # Churn here follows short tenure, which the prior does not look at: a learned
    # model beats it, but only gets a share once its prequential AUC says so.
    rng = random.Random(2)
    base = vector(new_state())
    data = []
    for _ in range(400):
        x = dict(base, tenure_days=rng.uniform(0, 1000))
        data.append((x, x["tenure_days"] + rng.uniform(0, 300) < 250))
    model = ChurnModel(ModelParams(min_labels=100))
    assert model.version == PRIOR_VERSION and model.weight == 0.0
    for x, y in data[:99]:
        model.learn(x, y, model.score(x), model.components(x))
    assert model.weight == 0.0  # labels of both classes, but too few to judge it yet
    for x, y in data[99:]:
        model.learn(x, y, model.score(x), model.components(x))
    assert model.quality is not None and (model.quality.prior_lead() or 0.0) < -0.2
    assert model.weight == 1.0 and model.version == "ga2m@400"


def test_model_reasons_come_from_its_own_weights() -> None:
    model = ChurnModel(ModelParams(min_labels=10))
    for x, y in _examples(400, seed=4):
        model.learn(x, y)
    probe = dict(_examples(1, seed=9)[0][0], competitor_share_7d=0.95)
    assert model.explain(probe)[0].code == "COMPETITOR_CALLS_UP"
    assert model.quality is not None


@pytest.mark.parametrize("kind", ["ga2m", "gam", "logreg", "hat", "arf"])
def test_pipelines_are_reproducible_and_survive_pickle(kind: str) -> None:
    params = ModelParams(kind=kind, min_labels=10)  # type: ignore[arg-type]
    data = _examples(300, seed=3)
    a, b = build_model(params), build_model(params)
    for x, y in data:
        a.learn_one(x, y)
        b.learn_one(x, y)
    probe = dict(data[0][0], competitor_share_7d=0.9)
    assert a.predict_proba_one(probe) == b.predict_proba_one(probe)
    restored = pickle.loads(pickle.dumps(a))  # noqa: S301 - our own bytes
    assert restored.predict_proba_one(probe) == a.predict_proba_one(probe)
    low = dict(probe, competitor_share_7d=0.1)
    assert a.predict_proba_one(probe)[True] > a.predict_proba_one(low)[True]


def test_checkpoints_from_before_the_pipeline_module_still_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checkpoint names the pipeline's steps as ``services.scoring.model.<function>``.

    They moved to ``services.scoring.pipeline``; the model module re-exports them,
    so models stored before the move still load (an unpickling error would leave
    the service with no model at start-up).
    """
    model = ChurnModel(ModelParams(min_labels=2))
    for x, y in _examples(50, seed=5):
        model.learn(x, y, 0.5)
    steps = (numbers_only, passed_through, binned, binned_pairs, clip_scaled)
    for step in steps:  # pickled as the code before the move named them
        monkeypatch.setattr(step, "__module__", "services.scoring.model")
    old = model.dumps()
    monkeypatch.undo()
    assert b"services.scoring.pipeline" not in old and b"services.scoring.model" in old
    again = ChurnModel.loads(model.params, old)
    probe = _examples(1, seed=6)[0][0]
    assert again.score(probe) == model.score(probe)


def test_churn_model_round_trip_keeps_counts_and_quality() -> None:
    model = ChurnModel(ModelParams(min_labels=2))
    for x, y in _examples(50, seed=5):
        model.learn(x, y, 0.5)
    again = ChurnModel.loads(model.params, model.dumps(), checkpoint_id=7)
    probe = _examples(1, seed=6)[0][0]
    assert again.version == model.version and again.checkpoint_id == 7
    assert again.score(probe) == model.score(probe)
    assert again.quality is not None and again.quality.resolved == 50


def test_in_memory_run_learns_from_a_history() -> None:
    events = []
    for i in range(20):
        sid = f"S{i}"
        churner = i % 4 == 0
        for day in range(60, 0, -3):
            events += calls(sid, n=2, competitor=churner and day < 25, days_ago=day)
        if churner:
            events.append(event("churn", sid, {"kind": "port_out"}, at=NOW - timedelta(hours=1)))
    parsed_events = sorted(parsed(events), key=lambda e: e.occurred_at)
    s = scorer()
    states = run_in_memory(s, parsed_events, batch_size=100)
    assert len(states) == 20
    assert s.model.positives_seen > 0 and s.model.labels_seen > s.model.positives_seen


def test_non_churns_are_learnt_from_their_horizon_once_its_labels_mature() -> None:
    """Step non-churns only until the first horizon label matures; then the horizon's."""
    scorer = Scorer(EngineParams(label_step_s=3 * DAY), ChurnModel(ModelParams()))
    model = scorer.model
    x = vector(new_state())

    def snapshot(at: float) -> Snapshot:
        return Snapshot(at, x, 0.1, 0.1, 0.1, 0.1, 40 * DAY)

    first = snapshot(0.0)
    scorer.learn([(first, False)])  # its step passed: learnt as a non-churn
    scorer.settle([(first, False)])  # its horizon label: waits to mature, not learnt again
    assert (model.labels_seen, model.learns_horizon_labels) == (1, False)

    scorer.advance(31 * DAY + 1)  # the first horizon label matures
    assert model.learns_horizon_labels and model.horizon_labels_since == 31 * DAY + 1

    second, third = snapshot(20 * DAY), snapshot(21 * DAY)
    scorer.learn([(second, False), (third, False)])  # steps passed: nothing learnt now
    assert model.labels_seen == 1
    scorer.settle([(second, False), (third, True)])
    assert (model.labels_seen, model.positives_seen) == (2, 1)
    restored = ChurnModel.loads(ModelParams(), model.dumps())
    assert restored.horizon_labels_since == model.horizon_labels_since


def test_a_cached_state_costs_its_encoded_size_and_under_a_kilobyte() -> None:
    """The state cache holds each state as its compact bytes, with little beside them.

    Issue 20: scoring's memory per tracked subscriber at most 1 KB. Before, the
    cache kept orjson's whole 8 KB write buffer per state (5.8 KB a subscriber),
    then the exact JSON (2 KB); now the codec's bytes in one object per entry.
    """
    import tracemalloc

    from services.scoring.cache import StateCache

    state = new_state()
    for e in calls("S-cache", n=20, competitor=True, days_ago=3):
        apply_event(state, parse_event(e, check_clock=False))
    state["pending"] = [state["watermark"] - d * DAY for d in range(30, 0, -1)]
    blob = encode(state)
    assert len(blob) < len(orjson.dumps(state)) / 2
    cache = StateCache(10_000)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for n in range(2_000):
            cache.put(f"S-{n:06d}", 3, 12_345, state)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    per_state = sum(s.size_diff for s in after.compare_to(before, "filename")) / 2_000
    # The bytes, the entry and its key: under 300 bytes beside the state.
    assert per_state < len(blob) + 300, (per_state, len(blob))
    assert per_state < 1024, per_state
    assert cache.versions(["S-000001", "S-x"]) == {"S-000001": 12_345}
    assert bytes(cache.put("S-000001", 3, 12_346, state)) == blob  # what the table stores
    assert cache.state("S-000001") == orjson.loads(orjson.dumps(state))
    cache.forget({3})
    assert len(cache) == 0


def test_the_state_cache_keeps_the_most_recently_written_states() -> None:
    from services.scoring.cache import StateCache

    state = new_state() | {"pending": []}
    cache = StateCache(128)
    for n in range(1_000):
        cache.put(f"S-{n}", 0, n, state)
        cache.put("S-kept", 1, n, state)  # written every time: never the oldest
        assert len(cache) <= 128
    assert "S-kept" in cache and "S-999" in cache and "S-0" not in cache
    assert cache.versions(["S-kept", "S-999"]) == {"S-kept": 999, "S-999": 999}
    assert len(cache) >= 128 - 128 // 64  # evicted by chunks, never much below the size
    cache.forget({1})
    assert "S-kept" not in cache and "S-999" in cache
    empty = StateCache(0)
    assert bytes(empty.put("S-x", 0, 1, state)) == encode(state)  # still encodes for the table
    assert len(empty) == 0
