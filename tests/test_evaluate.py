"""Honest evaluation (issue 16): intervals, calibration, coverage, the raw baseline, evaluate-table.

Small synthetic tables written to ``tmp_path`` (a few hundred rows): no broker,
no database, no ../shared/data.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from churnwatch.backtest import Result, run_backtest
from churnwatch.backtest_metrics import CALENDAR_FIGURES, metrics
from churnwatch.cli import app
from churnwatch.evaluation.baseline import raw_baseline, read_table
from churnwatch.evaluation.coverage import coverage, rejections_by_reason, source_reads
from churnwatch.evaluation.figures import day_end, day_points, per_subscriber_time
from churnwatch.evaluation.stats import (
    bootstrap_auc,
    expected_calibration_error,
    reliability,
    resample_weights,
    weighted_auc,
)
from churnwatch.importer import EventSpec, ImportResult, Rejection, parse_mapping
from churnwatch.synth import generate, write_ndjson

# --- the statistics ------------------------------------------------------------------


def test_weighted_auc_is_sklearns_auc_with_sample_weights() -> None:
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.3
    p = np.round(rng.random(300) * 0.5 + 0.3 * y, 2).astype(np.float64)  # many ties
    weights = np.vstack(list(resample_weights(rng, 300, 7)))
    got = weighted_auc(y, p, weights)
    for row, auc in zip(weights, got, strict=True):
        assert auc == pytest.approx(roc_auc_score(y, p, sample_weight=row), abs=1e-12)
    # Every weight 1: the plain AUC; no weight on one class: NaN, not a number.
    assert weighted_auc(y, p, np.ones((1, 300)))[0] == pytest.approx(roc_auc_score(y, p))
    assert np.isnan(weighted_auc(y, p, np.where(y, 0.0, 1.0)[None, :]))[0]


def test_resamples_draw_every_point_n_times_in_all() -> None:
    rows = np.vstack(list(resample_weights(np.random.default_rng(1), 50, 230)))
    assert rows.shape == (230, 50)
    assert (rows.sum(axis=1) == 50).all()
    assert len({tuple(r) for r in rows}) == 230  # real draws, not one repeated


def test_the_bootstrap_interval_is_seeded_and_narrows_with_more_subscribers() -> None:
    rng = random.Random(5)
    y = [rng.random() < 0.2 for _ in range(4000)]
    p = [min(1.0, max(0.0, rng.gauss(0.55 if label else 0.45, 0.15))) for label in y]
    auc = roc_auc_score(y, p)
    small = bootstrap_auc(y[:400], p[:400], seed=7)
    large = bootstrap_auc(y, p, seed=7)
    assert small is not None and large is not None
    assert large[0] < auc < large[1]
    assert large[1] - large[0] < small[1] - small[0]
    assert bootstrap_auc(y, p, seed=7) == large
    assert bootstrap_auc(y, p, seed=8) != large
    assert bootstrap_auc([True] * 5, [0.5] * 5, seed=1) is None


def test_ece_is_zero_when_calibrated_and_shows_a_constant_shift() -> None:
    # 20 scores per level; exactly that share of each level churns.
    y: list[bool] = []
    p: list[float] = []
    for level, churners in ((0.05, 1), (0.25, 5), (0.55, 11), (0.85, 17)):
        y += [i < churners for i in range(20)]
        p += [level] * 20
    assert expected_calibration_error(y, p) == pytest.approx(0.0, abs=1e-12)
    shifted = [q + 0.04 for q in p]  # every score 4 points too high, same bins
    assert expected_calibration_error(y, shifted) == pytest.approx(0.04, abs=1e-12)
    # Drawn labels: about zero, and a shift across bin edges still shows as itself.
    rng = np.random.default_rng(11)
    q = rng.uniform(0.05, 0.85, 200_000)
    drawn = (rng.random(len(q)) < q).tolist()
    assert expected_calibration_error(drawn, q.tolist()) == pytest.approx(0.0, abs=0.01)
    assert expected_calibration_error(drawn, (q + 0.1).tolist()) == pytest.approx(0.1, abs=0.01)
    assert expected_calibration_error([], []) is None


def test_reliability_bins_cover_zero_to_one() -> None:
    bins = reliability([True, False, True], [0.0, 0.55, 1.0])
    assert [b["count"] for b in bins] == [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    assert bins[9]["mean_predicted"] == 1.0 and bins[9]["observed_rate"] == 1.0
    assert bins[1]["mean_predicted"] is None


# --- a synthetic table and its mapping --------------------------------------------------

MAPPING = """\
version: 1
table: synth
subscriber_id: {column: customer_id, prefix: S-}
timeline:
  as_of: 2026-07-01
  months: 2
  tenure: tenure_months
  tenure_unit: months
  before_activation: keep
events:
  - type: subscriber
    fields:
      monthly_value: monthly_charge
      tier: {column: contract, map: {monthly: standard, yearly: gold}}
      plan_id: {column: plan, map: {basic: basic, plus: plus}}
      activated_at: {timeline: activation}
  - type: billing
    fields:
      period: {timeline: period}
      amount_due: monthly_charge
      plan_id: {column: plan, map: {basic: basic, plus: plus}}
  - type: cdr
    split: 4
    fields:
      service: {constant: voice}
      direction: {constant: outgoing}
      count: calls
      duration_s: {column: minutes, multiply: 60}
  - type: complaint
    periods: last
    repeat: complaints
    fields:
      category: {constant: service}
  - type: churn
    when: {column: churned, yes_no: true}
    fields:
      kind: {constant: cancellation}
"""


def write_table(path: Path, rows: int, *, seed: int = 1, bad_rows: int = 0) -> Path:
    """A churn table: complaints, short tenure and high charges make churners."""
    rng = random.Random(seed)
    lines = [
        "customer_id,tenure_months,monthly_charge,contract,plan,region,calls,minutes,"
        "complaints,churned"
    ]
    for i in range(rows):
        tenure = rng.randint(1, 60)
        charge = round(rng.uniform(20, 110), 2)
        complaints = rng.choice([0, 0, 0, 1, 2, 4])
        contract = rng.choice(["monthly", "yearly"])
        risk = -2.2 + 0.6 * complaints - tenure / 40 + (charge - 60) / 40
        risk += 0.8 if contract == "monthly" else -0.8
        churned = rng.random() < 1 / (1 + np.exp(-risk))
        calls = rng.randint(20, 150)
        minutes = round(calls * rng.uniform(1.5, 4.0), 1)
        plan = rng.choice(["basic", "plus"])
        region = rng.choice(["north", "south", "east"])
        lines.append(
            f"C{i:05d},{tenure},{charge},{contract},{plan},{region},{calls},{minutes},"
            f"{complaints},{'yes' if churned else 'no'}"
        )
    for j in range(bad_rows):
        lines.append(f"X{j:05d},12,,monthly,basic,north,50,100,0,yes")  # no charge
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("evaluate")
    mapping = base / "synth.yaml"
    mapping.write_text(MAPPING, encoding="utf-8")
    return write_table(base / "synth.csv", 300, bad_rows=3), mapping


def test_the_raw_baseline_leaves_out_the_label_and_id_columns(
    synthetic: tuple[Path, Path],
) -> None:
    table_path, mapping = synthetic
    loaded = parse_mapping(mapping.read_text(), source=str(mapping))
    table = read_table(table_path, loaded)
    raw = raw_baseline(table, loaded, None, seed=42, folds=5, resamples=200)
    inputs = set(raw["numeric_columns"]) | set(raw["categorical_columns"])
    assert "churned" not in inputs and "customer_id" not in inputs
    assert raw["left_out"] == {"churned": "label", "customer_id": "id"}
    # The rows the import rejects (no charge) stay in: blanks are imputed.
    assert {"tenure_months", "complaints", "monthly_charge"} <= set(raw["numeric_columns"])
    assert {"contract", "plan", "region"} <= set(raw["categorical_columns"])
    assert raw["rows"] == raw["rows_used"] == 303 and raw["label_from"] == "when"
    for name in ("logistic_regression", "hist_gradient_boosting"):
        model = raw[name]
        assert 0.6 < model["roc_auc"] <= 1.0 and len(model["fold_roc_auc"]) == 5
        lo, hi = model["roc_auc_ci"]
        assert lo < model["oof_roc_auc"] < hi


# --- coverage ------------------------------------------------------------------------------


def test_coverage_follows_columns_through_fields_to_features(
    synthetic: tuple[Path, Path],
) -> None:
    table_path, mapping = synthetic
    loaded = parse_mapping(mapping.read_text(), source=str(mapping))
    header = read_table(table_path, loaded).header
    sources = {
        "calls_7d": ("cdr.count[service=voice]",),
        "sms_7d": ("cdr.count[service=sms]",),
        "log_monthly_value": ("subscriber.monthly_value",),
        "tenure_days": ("subscriber.activated_at",),
        "complaints_30d": ("complaint.occurred_at",),
        "handset_age": ("subscriber.handset.age_months",),
    }
    cov = coverage(loaded, header, sources)
    by_column = {r["column"]: r for r in cov["columns"]}
    assert by_column["calls"]["fields"] == ["cdr.count"]
    assert by_column["calls"]["features"] == ["calls_7d"]  # a voice record: not sms_7d
    assert by_column["tenure_months"]["features"] == ["tenure_days"]  # via activation
    assert by_column["complaints"]["fields"] == ["complaint.(repeat)"]
    assert by_column["complaints"]["features"] == ["complaints_30d"]
    assert by_column["churned"]["role"] == "label"
    assert by_column["customer_id"]["role"] == "id"
    # plan reaches a field no feature reads; region reaches nothing at all.
    assert by_column["plan"]["fields"] == ["billing.plan_id", "subscriber.plan_id"]
    assert {"plan", "region", "contract"} <= set(cov["columns_reaching_no_feature"])
    assert "churned" not in cov["columns_reaching_no_feature"]
    assert cov["features_without_input"] == ["handset_age", "sms_7d"]


def test_dotted_fields_of_contract_v2_match_their_feature_sources() -> None:
    spec = EventSpec.model_validate(
        {"type": "subscriber", "fields": {"handset.age_months": "age", "attributes.pay": "pm"}}
    )
    assert source_reads("subscriber.handset.age_months", "subscriber.handset.age_months", spec)
    assert source_reads("subscriber.handset", "subscriber.handset.age_months", spec)
    assert source_reads("subscriber.attributes", "subscriber.attributes.pay", spec)
    assert not source_reads("subscriber.handset.model", "subscriber.handset.age_months", spec)
    voice = EventSpec.model_validate(
        {"type": "cdr", "fields": {"service": {"constant": "voice"}, "count": "n"}}
    )
    assert source_reads("cdr.count[service=voice|sms]", "cdr.count", voice)
    assert not source_reads("cdr.count[service=data]", "cdr.count", voice)
    from_column = EventSpec.model_validate(
        {"type": "cdr", "fields": {"service": "kind", "count": "n"}}
    )
    assert source_reads("cdr.count[service=data]", "cdr.count", from_column)
    roaming = EventSpec.model_validate(
        {"type": "cdr", "fields": {"roaming": {"constant": True}, "duration_s": "s"}}
    )
    assert source_reads("cdr.duration_s[roaming=true]", "cdr.duration_s", roaming)
    assert not source_reads("cdr.duration_s[roaming=false]", "cdr.duration_s", roaming)


def test_rejections_by_reason_use_the_importers_classes_or_count_the_texts() -> None:
    result = ImportResult(table="t")
    result.rejections = [
        Rejection(1, 2, "events[1].fields.amount_due: 'x' is not a number", "not_a_number:a"),
        Rejection(4, 5, "events[1].fields.amount_due: 'y' is not a number", "not_a_number:a"),
        Rejection(7, 8, "column 'b' is blank", "blank:b"),
    ]
    assert rejections_by_reason(result) == {"not_a_number:a": 2, "blank:b": 1}

    class Older(ImportResult):  # an importer without rejected_by_reason()
        rejected_by_reason = None  # type: ignore[assignment]

    older = Older(table="t", rejections=result.rejections)
    assert rejections_by_reason(older) == {
        "events[N].fields.amount_due: '…' is not a number": 2,
        "column '…' is blank": 1,
    }


# --- the replay's figures --------------------------------------------------------------------


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Result:
    population = generate(subscribers=80, days=75, seed=12, churn_rate=0.3)
    path = tmp_path_factory.mktemp("history") / "history.ndjson"
    write_ndjson(population, path)
    return run_backtest([path])


def test_a_history_is_judged_within_each_day_with_subscriber_resampling(
    history: Result,
) -> None:
    assert history.order == "time"
    figures = per_subscriber_time(history, seed=3, resamples=200)
    by_day = figures["by_day"]
    assert figures["days"] == len(by_day) > 5
    assert figures["roc_auc"] == pytest.approx(np.mean([d[1] for d in by_day]))
    lo, hi = figures["roc_auc_ci"]
    assert lo < figures["roc_auc"] < hi
    # Only days whose labels are all known: a horizon before the end of the data.
    last = max(day_points(history))
    assert (history.end - day_end(last)).total_seconds() >= history.horizon_s
    assert (history.end - day_end(last)).total_seconds() < history.horizon_s + 86_400
    assert figures["cutoffs"] and all(c["subscribers"] > 0 for c in figures["cutoffs"])
    assert figures["bootstrap"]["unit"] == "subscriber"
    full = metrics(history, offline=[0.5] * len(history.examples), resamples=100)
    assert full["not_meaningful_for_a_table"] == []
    assert full["lead_time_median_days"] is not None
    assert full["calibration"]["points"] == "subscriber-day"


# --- the command ------------------------------------------------------------------------------


def _run(args: list[str]) -> Any:
    return CliRunner().invoke(app, args)


def test_evaluate_table_writes_the_comparison_and_marks_calendar_figures(
    synthetic: tuple[Path, Path], tmp_path: Path
) -> None:
    table_path, mapping = synthetic
    out = tmp_path / "report"
    done = _run(
        ["evaluate-table", str(table_path), "--mapping", str(mapping), "--report", str(out)]
    )
    assert done.exit_code == 0, done.output
    assert "per_subscriber_roc_auc" in done.output and "raw HistGBM" in done.output
    figures = json.loads((out / "figures.json").read_text())
    c = figures["comparison"]
    assert 0.5 < c["online_per_subscriber_roc_auc"] <= 1.0
    lo, hi = c["online_per_subscriber_roc_auc_ci"]
    assert lo < c["online_per_subscriber_roc_auc"] < hi
    assert c["online_to_raw_gbm_ratio"] == pytest.approx(
        c["online_per_subscriber_roc_auc"] / c["raw_gbm_roc_auc"]
    )
    assert 0.0 <= c["online_expected_calibration_error"] <= 1.0
    assert c["pooled_snapshot_roc_auc"] is not None
    bt = figures["backtest"]
    assert bt["order"] == "subscriber"
    assert bt["per_subscriber"]["subscribers"] + bt["per_subscriber"]["warmup_subscribers"] == 300
    assert (
        figures["import"]["rejected"] == 3
        and sum(figures["import"]["rejected_by_reason"].values()) == 3
    )
    assert figures["import"]["rejected_churn_share"] == 1.0
    assert figures["coverage"]["columns_reaching_no_feature"]
    assert bt["learning_curve"]["by"] == "labels_seen"
    assert figures["seconds"]["total"] > 0

    page = (out / "index.html").read_text()
    for needle in ("raw HistGBM", "Expected calibration error", "reaches no feature", "region"):
        assert needle in page
    # A table: calendar figures are null and marked, their charts not drawn.
    stored = json.loads((out / "backtest" / "metrics.json").read_text())
    assert set(stored["not_meaningful_for_a_table"]) == set(CALENDAR_FIGURES)
    assert all(stored[key] is None for key in CALENDAR_FIGURES)
    sub_page = (out / "backtest" / "index.html").read_text()
    assert "not meaningful for a table" in sub_page and "not meaningful for a table" in page
    assert not (out / "backtest" / "lead_time.png").exists()
    for name in ("calibration", "importance", "learning_curve", "roc"):
        assert (out / "backtest" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_table_exit_codes(synthetic: tuple[Path, Path], tmp_path: Path) -> None:
    table_path, mapping = synthetic
    x = str(tmp_path / "x")
    missing = _run(
        ["evaluate-table", str(tmp_path / "nope.csv"), "--mapping", str(mapping), "--report", x]
    )
    assert missing.exit_code == 2 and "nope.csv" in missing.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(MAPPING.replace("column: churned", "column: no_such_column"))
    wrong = _run(["evaluate-table", str(table_path), "--mapping", str(bad), "--report", x])
    assert wrong.exit_code == 2 and "no_such_column" in wrong.output
    empty = tmp_path / "empty.csv"
    empty.write_text(table_path.read_text().splitlines()[0] + "\n")
    nothing = _run(["evaluate-table", str(empty), "--mapping", str(mapping), "--report", x])
    assert nothing.exit_code == 1
    assert not (tmp_path / "x").exists()
