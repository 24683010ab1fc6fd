"""``evaluate-table``'s ``index.html``: the per-subscriber comparison and what explains it."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from churnwatch.backtest_metrics import TABLE_NOTE
from churnwatch.report import STYLE, calibration_html, fmt, importance_html, rows_html


def _auc(value: Any, ci: Any) -> str:
    return f"{fmt(value)} {fmt(ci)}" if value is not None else "n/a"


def _comparison_html(c: dict[str, Any], raw: dict[str, Any], method: str) -> str:
    columns = ("", "churnwatch online", "raw logistic regression", "raw HistGBM")
    rows = [
        (
            "ROC AUC, one score per subscriber [95 % interval]",
            _auc(c["online_per_subscriber_roc_auc"], c["online_per_subscriber_roc_auc_ci"]),
            _auc(c["raw_logistic_regression_roc_auc"], c["raw_logistic_regression_roc_auc_ci"]),
            _auc(c["raw_gbm_roc_auc"], c["raw_gbm_roc_auc_ci"]),
        ),
        ("Ratio to the raw HistGBM", c["online_to_raw_gbm_ratio"], None, 1.0),
        ("Expected calibration error", c["online_expected_calibration_error"], None, None),
        ("Log loss", c["online_per_subscriber_log_loss"], None, None),
        ("Brier score", c["online_per_subscriber_brier"], None, None),
        (
            "How it was scored",
            (
                "prequential: each subscriber's last served score before its label"
                if method == "last_score_before_label"
                else "prequential: mean ROC AUC within each scoring day"
            ),
            f"{raw.get('folds')}-fold stratified CV (mean of the folds)",
            f"{raw.get('folds')}-fold stratified CV (mean of the folds)",
        ),
    ]
    table = rows_html(rows, columns)
    extra = rows_html(
        [
            (
                "HistGBM on churnwatch's own features, per subscriber (offline, hindsight)",
                c["offline_product_features_per_subscriber_roc_auc"],
            ),
            (
                "Online ROC AUC pooled over snapshots (secondary, not comparable)",
                c["pooled_snapshot_roc_auc"],
            ),
        ]
    )
    return table + "\n" + extra


def _coverage_html(cov: dict[str, Any]) -> str:
    rows = []
    for r in cov["columns"]:
        if r["role"]:
            reach = f"({r['role']})"
        elif not r["features"]:
            reach = "reaches no feature"
        else:
            reach = ", ".join(r["features"])
        rows.append((r["column"], ", ".join(r["fields"]) or "-", reach))
    table = rows_html(rows, ("column", "contract fields", "features"))
    lost = ", ".join(cov["columns_reaching_no_feature"]) or "none"
    idle = ", ".join(cov["features_without_input"]) or "none"
    return (
        f"<p>Columns that reach no feature: <b>{html.escape(lost)}</b>.</p>\n{table}\n"
        f"<p>Features no column or constant of this mapping feeds: {html.escape(idle)}.</p>"
    )


def _rejections_html(imp: dict[str, Any]) -> str:
    reasons = imp["rejected_by_reason"]
    body = (
        rows_html(list(reasons.items()), ("reason", "rows"))
        if reasons
        else "<p>No row rejected.</p>"
    )
    return (
        f"<p>{imp['rows_read']} rows read, {imp['rejected']} rejected; churn share "
        f"{fmt(imp['rejected_churn_share'])} among the rejected rows, "
        f"{fmt(imp['imported_churn_share'])} among the imported ones.</p>\n{body}"
    )


def _raw_html(raw: dict[str, Any]) -> str:
    if raw.get("skipped"):
        return f"<p>Skipped: {html.escape(raw['skipped'])}.</p>"
    left = ", ".join(f"{c} ({why})" for c, why in raw["left_out"].items()) or "none"
    return (
        f"<p>{raw['rows_used']} of {raw['rows']} rows (label read from "
        f"{html.escape(raw['label_from'])}), {raw['positives']} churners. Numbers: "
        f"{html.escape(', '.join(raw['numeric_columns']) or 'none')}. Categories (one-hot): "
        f"{html.escape(', '.join(raw['categorical_columns']) or 'none')}. Left out: "
        f"{html.escape(left)}.</p>\n"
        + rows_html(
            [
                (name, m["roc_auc"], ", ".join(fmt(a) for a in m["fold_roc_auc"]), m["oof_roc_auc"])
                for name, m in (
                    ("logistic regression", raw["logistic_regression"]),
                    ("HistGBM", raw["hist_gradient_boosting"]),
                )
            ],
            ("model", "mean fold ROC AUC", "per fold", "pooled out-of-fold"),
        )
    )


def page(figures: dict[str, Any]) -> str:
    """The whole page from ``figures.json``'s content."""
    bt = figures["backtest"]
    head = bt["per_subscriber"]
    s = figures["settings"]
    t = figures["table"]
    imp = figures["import"]
    importance = bt["feature_importance"]
    if head["method"] == "last_score_before_label":
        online = (
            f"Online: {head['subscribers']} subscribers scored after the warm-up "
            f"({head['warmup_subscribers']} left out), {head['churners']} churners."
        )
    else:
        online = (
            f"Online: a history, judged within each of {head['days']} scoring days "
            f"({head['subscribers']} subscribers)."
        )
    if bt["order"] == "subscriber":
        calendar = (
            '<figure><img src="backtest/learning_curve.png" alt="learning curve by labels seen">'
            '</figure>\n<p class="note">Lead times, precision per day, calls per manager per '
            f"day: {html.escape(TABLE_NOTE)}.</p>"
        )
    else:
        calendar = (
            '<figure><img src="backtest/within_day.png" alt="ROC AUC within each day"></figure>'
            '\n<p>Lead times and capacity: the <a href="backtest/index.html">backtest report</a>.'
            "</p>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>churnwatch on {html.escape(t["name"])}</title>
<style>{STYLE}</style></head>
<body><h1>churnwatch on {html.escape(t["name"])}: per-subscriber comparison</h1>
<p>{html.escape(t["file"])} with the mapping {html.escape(t["mapping"])}, measured
{html.escape(figures["measured_at"])} ({figures["seconds"]["total"]:.0f} s). Scoring model
{html.escape(str(s["scoring_model"]))}, warm-up {s["scoring_min_labels"]} labels, horizon
{s["scoring_horizon_days"]:g} days, seed {s["seed"]}, {s["bootstrap_resamples"]} bootstrap
resamples of subscribers. Every figure is in <a href="figures.json">figures.json</a>; the
replay's own report is <a href="backtest/index.html">backtest/index.html</a>;
docs/evaluation.md says how to read this page.</p>
<h2>Per subscriber, side by side</h2>
<p>{html.escape(online)}</p>
{_comparison_html(figures["comparison"], figures["raw_baseline"], head["method"])}
<h2>Raw-table baseline</h2>
{_raw_html(figures["raw_baseline"])}
<h2>Calibration of the served score</h2>
<figure><img src="backtest/calibration.png" alt="reliability diagram"></figure>
{calibration_html(bt["calibration"])}
<h2>Feature importance of the served model</h2>
<p>Mean |contribution| to the served log-odds over {importance["points"]} subscribers' latest
labelled snapshots, model weight {fmt(importance["model_weight"])} at the end.</p>
<figure><img src="backtest/importance.png" alt="feature importance"></figure>
{importance_html(importance)}
<h2>Coverage: which columns reach which features</h2>
{_coverage_html(figures["coverage"])}
<h2>Import: rejected rows by reason</h2>
{_rejections_html(imp)}
<h2>Learning curve and calendar</h2>
{calendar}
</body></html>
"""


def write_page(figures: dict[str, Any], path: Path) -> None:
    """Write ``index.html``."""
    path.write_text(page(figures), encoding="utf-8")
