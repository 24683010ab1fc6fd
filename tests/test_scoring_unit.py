"""Features and the model, without Kafka or a database."""

from __future__ import annotations

import pickle
import random
from datetime import UTC, datetime, timedelta

import pytest

from services.scoring.features import apply_event, is_churned, new_state, vector
from services.scoring.model import PRIOR_VERSION, ChurnModel, ModelParams, build_model, prior_score
from shared.events import Event, parse_event
from tests.helpers import calls, event, stop_notice

NOW = datetime.now(UTC)


def parsed(items: list[dict[str, object]]) -> list[Event]:
    return [parse_event(i) for i in items]


def state_of(events: list[Event]) -> dict[str, object]:
    state = new_state()
    for e in events:
        apply_event(state, e)
    return state


def test_features_do_not_depend_on_arrival_order() -> None:
    events = parsed(
        calls("S", n=20, competitor=False, days_ago=20)
        + calls("S", n=15, competitor=True, days_ago=3)
        + [
            event("complaint", "S", {"severity": "high"}, at=NOW - timedelta(days=2)),
            event(
                "arrears",
                "S",
                {"overdue_amount": "10", "days_overdue": 5},
                at=NOW - timedelta(days=1),
            ),
            event(
                "billing",
                "S",
                {"period": "2026-10", "amount_due": "30", "plan_id": "P"},
                at=NOW - timedelta(days=25),
            ),
        ]
    )
    expected = vector(state_of(events))
    rng = random.Random(1)
    for _ in range(5):
        shuffled = events[:]
        rng.shuffle(shuffled)
        got = vector(state_of(shuffled))
        assert got == pytest.approx(expected, rel=1e-9, abs=1e-9)


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
    # Two 7-day half-lives later the same ten calls weigh a quarter.
    assert old["calls_7d"] == pytest.approx(10 * 0.25 + 1, rel=0.01)
    assert old["competitor_share_7d"] < x["competitor_share_7d"]


def test_payment_covering_the_amount_clears_the_stop_notice() -> None:
    notice = parse_event(stop_notice("S", amount="50.00"))
    state = state_of([notice])
    assert vector(state)["stop_notice_pending"] == 1.0
    apply_event(state, parse_event(event("payment", "S", {"amount": "20"})))
    assert vector(state)["stop_notice_pending"] == 1.0  # not enough
    apply_event(state, parse_event(event("payment", "S", {"amount": "50"})))
    assert vector(state)["stop_notice_pending"] == 0.0
    # A later payment after the notice was cleared is just a payment.
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
    churned_at = datetime.now(UTC) - timedelta(days=2)
    state = state_of(parsed([event("churn", "S", {"kind": "port_out"}, at=churned_at)]))
    assert is_churned(state)
    # A reactivation older than the churn changes nothing; a newer one ends it.
    older = event("reactivation", "S", {}, at=churned_at - timedelta(days=1))
    apply_event(state, parse_event(older))
    assert is_churned(state)
    newer = event("reactivation", "S", {}, at=churned_at + timedelta(days=1))
    apply_event(state, parse_event(newer))
    assert not is_churned(state)


def test_prior_rises_with_warning_signs_and_explains_itself() -> None:
    calm = vector(state_of(parsed(calls("S", n=30, competitor=False, days_ago=1))))
    risky_events = parsed(
        calls("S", n=30, competitor=True, days_ago=1)
        + [event("complaint", "S", {}, at=NOW - timedelta(hours=i)) for i in range(2)]
        + [event("arrears", "S", {"overdue_amount": "40", "days_overdue": 40})]
    )
    risky = vector(state_of(risky_events))
    calm_score, _ = prior_score(calm)
    risky_score, reasons = prior_score(risky)
    assert calm_score < 0.3 < 0.7 < risky_score
    assert any("competitor" in r for r in reasons)


def _examples(n: int, seed: int) -> list[tuple[dict[str, float], bool]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        share = rng.random()
        out.append(
            (
                {"competitor_share_7d": share, "complaints_30d": rng.random() * 2},
                share + rng.random() * 0.3 > 0.8,
            )
        )
    return out


def test_model_uses_prior_until_it_has_enough_labels_of_both_classes() -> None:
    model = ChurnModel(ModelParams(min_labels=10))
    x = vector(new_state())
    assert model.version == PRIOR_VERSION
    for _ in range(20):
        model.learn(x, False)
    assert not model.trained  # one class only
    model.learn(x, True)
    assert model.trained and model.version.startswith("river-lr@")


def test_pipeline_is_reproducible_and_survives_pickle() -> None:
    data = _examples(300, seed=3)
    a, b = build_model(ModelParams()), build_model(ModelParams())
    for x, y in data:
        a.learn_one(x, y)
        b.learn_one(x, y)
    probe = {"competitor_share_7d": 0.9, "complaints_30d": 1.0}
    assert a.predict_proba_one(probe) == b.predict_proba_one(probe)
    restored = pickle.loads(pickle.dumps(a))  # noqa: S301 - our own bytes
    assert restored.predict_proba_one(probe) == a.predict_proba_one(probe)
    # It learned something: high competitor share scores above low.
    assert (
        a.predict_proba_one(probe)[True]
        > a.predict_proba_one({"competitor_share_7d": 0.1, "complaints_30d": 1.0})[True]
    )


def test_churn_model_round_trip_keeps_counts() -> None:
    model = ChurnModel(ModelParams(min_labels=2))
    for x, y in _examples(50, seed=5):
        model.learn(x, y)
    again = ChurnModel.loads(model.params, model.dumps(), model.labels_seen, model.positives_seen)
    probe = {"competitor_share_7d": 0.7, "complaints_30d": 0.0}
    assert again.version == model.version
    assert again.pipeline.predict_proba_one(probe) == model.pipeline.predict_proba_one(probe)
