"""The backtest's report: ``metrics.json``, PNG charts (matplotlib, Agg) and ``index.html``.

The page leads with the per-subscriber figures; AUCs pooled over snapshots
follow, labelled secondary. For a one-moment table (``order`` subscriber) the
learning curve is by labels seen and the calendar figures (lead time,
precision per day, calls per manager per day) are marked "not meaningful for
a table" and not charted.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churnwatch.backtest import EARLY_DAYS, Result
from churnwatch.backtest_metrics import TABLE_NOTE, lead_times, to_json
from churnwatch.evaluation.figures import headline_points
from churnwatch.evaluation.stats import roc_auc

COMMON_CHARTS = (
    ("roc.png", "ROC curves: per subscriber (headline) and pooled over snapshots (secondary)"),
    ("gains.png", "Cumulative gains and lift of the per-subscriber scores"),
    ("calibration.png", "Reliability diagram of the per-subscriber scores, with the ECE"),
    ("importance.png", "Feature importance of the served model: mean |contribution|"),
)
TABLE_CHARTS = (("learning_curve.png", "Per-subscriber ROC AUC by labels seen (learning curve)"),)
TIME_CHARTS = (
    ("within_day.png", "ROC AUC within each scoring day"),
    ("prequential.png", "Pooled ROC AUC and log loss by week of snapshot (secondary)"),
    ("precision_at_k.png", "Precision among the k riskiest each day (retention capacity)"),
    ("lead_time.png", "Early-warning lead time: first retention alert to churn"),
)


def charts(order: str) -> tuple[tuple[str, str], ...]:
    """The charts (file, caption) a report of this replay order has."""
    return COMMON_CHARTS + (TABLE_CHARTS if order == "subscriber" else TIME_CHARTS)


def write_report(
    result: Result, figures: dict[str, Any], offline: Sequence[float], out: Path
) -> list[Path]:
    """Write ``metrics.json``, the charts and ``index.html`` into ``out``; return the files."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display, no GUI toolkit
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json"]
    written[0].write_bytes(to_json(figures) + b"\n")
    table = result.order == "subscriber"
    points = headline_points(result)
    after = [e for e in result.examples if e.order >= result.min_labels]
    pooled_y = [e.label for e in after]

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(out / name)

    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    unit = "per subscriber" if table else "per subscriber-day"
    curves: list[tuple[str, Sequence[bool], Sequence[float], str]] = [
        (f"online, {unit}", points.y, points.p, "-"),
        ("online, pooled snapshots", pooled_y, [e.predicted for e in after], "--"),
    ]
    if offline:
        oof = [offline[e.order] for e in after]
        curves.append(("offline, pooled snapshots", pooled_y, oof, ":"))
    for name, y, p, style in curves:
        auc = roc_auc(y, p)
        if auc is not None:
            fpr, tpr = _roc(y, p)
            ax.plot(fpr, tpr, linestyle=style, label=f"{name} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right", fontsize="small")
    save(fig, "roc.png")

    fig, (g, lift) = plt.subplots(1, 2, figsize=(8, 3.5))
    if any(points.y):
        share, gains = _gains(points.y, points.p)
        g.plot(share, gains, label="online")
        lift.plot(share[1:], [gi / s for gi, s in zip(gains[1:], share[1:], strict=True)])
    g.plot([0, 1], [0, 1], color="grey", linestyle=":")
    g.set_xlabel(f"share of scores ({unit}), riskiest first")
    g.set_ylabel("share of churners")
    lift.set_xlabel(f"share of scores ({unit}), riskiest first")
    lift.set_ylabel("lift")
    save(fig, "gains.png")

    save(reliability_figure(figures["calibration"], unit), "calibration.png")
    save(importance_figure(figures["feature_importance"]), "importance.png")

    if table:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        curve = [c for c in figures["learning_curve"]["points"] if c["roc_auc"] is not None]
        ax.plot(
            [(c["labels_seen_from"] + c["labels_seen_to"]) / 2 for c in curve],
            [c["roc_auc"] for c in curve],
            marker="o",
        )
        # Each group spans the labels seen while its subscribers were scored.
        ax.hlines(
            [c["roc_auc"] for c in curve],
            [c["labels_seen_from"] for c in curve],
            [c["labels_seen_to"] for c in curve],
            alpha=0.4,
        )
        ax.axvline(result.min_labels, color="grey", linestyle=":", label="warm-up ends")
        ax.set_xlim(left=0)
        ax.set_xlabel("labels learnt before the subscriber was scored")
        ax.set_ylabel("per-subscriber ROC AUC")
        ax.legend(loc="lower right")
        save(fig, "learning_curve.png")
    else:
        _time_charts(result, figures, save, plt)

    page = out / "index.html"
    page.write_text(_html(figures), encoding="utf-8")
    written.append(page)
    return written


def _time_charts(result: Result, figures: dict[str, Any], save: Any, plt: Any) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.5))
    by_day = figures["per_subscriber"]["by_day"]
    ax.plot(date2num([_day(d) for d, *_ in by_day]), [v[1] for v in by_day], marker=".")
    mean = figures["per_subscriber_roc_auc"]
    if mean is not None:
        ax.axhline(mean, color="tab:red", label=f"mean {mean:.3f}")
        ax.legend(loc="lower right")
    ax.xaxis_date()
    ax.set_ylabel("ROC AUC within the day")
    fig.autofmt_xdate()
    save(fig, "within_day.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    weeks = figures["learning_curve"]["points"]
    ax.plot(date2num([_day(w["week"]) for w in weeks]), [w["roc_auc"] for w in weeks], marker="o")
    ax.xaxis_date()
    ax.set_ylabel("pooled ROC AUC")
    ax.set_ylim(0.4, 1.0)
    ax2 = ax.twinx()
    ax2.plot(
        date2num([_day(w["week"]) for w in weeks]),
        [w["log_loss"] for w in weeks],
        marker="s",
        color="tab:red",
    )
    ax2.set_ylabel("log loss")
    ax.set_xlabel("week of snapshot")
    fig.autofmt_xdate()
    save(fig, "prequential.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    series = figures["precision_at_capacity"].get("by_day") or []
    ax.plot(date2num([_day(d) for d, _ in series]), [v for _, v in series])
    ax.xaxis_date()
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"precision at k={figures['capacity_k']}")
    fig.autofmt_xdate()
    save(fig, "precision_at_k.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    leads = sorted(lead_times(result).values())
    if leads:
        ax.hist(leads, bins=range(0, int(max(leads)) + 2))
        median = figures["lead_time_median_days"]
        ax.axvline(median, color="tab:red", label=f"median {median:.1f} days")
        ax.axvline(EARLY_DAYS, color="grey", linestyle=":", label=f"{EARLY_DAYS:g} days")
        ax.legend()
    ax.set_xlabel("days from first retention alert to churn")
    ax.set_ylabel("churners")
    save(fig, "lead_time.png")


def reliability_figure(calibration: dict[str, Any], unit: str) -> Any:
    """The reliability diagram: mean score against churn rate per bin, counts below."""
    import matplotlib.pyplot as plt

    bins = [b for b in calibration["bins"] if b["count"]]
    fig, (ax, counts) = plt.subplots(
        2, 1, figsize=(4.8, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot(
        [b["mean_predicted"] for b in bins],
        [b["observed_rate"] for b in bins],
        marker="o",
        label=f"served score ({unit})",
    )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
    ece = calibration["expected_calibration_error"]
    ax.set_title(f"ECE {ece:.3f}" if ece is not None else "ECE n/a")
    ax.set_ylabel("observed churn rate")
    ax.legend(loc="upper left", fontsize="small")
    counts.bar(
        [(b["lo"] + b["hi"]) / 2 for b in calibration["bins"]],
        [b["count"] for b in calibration["bins"]],
        width=0.09,
    )
    counts.set_xlabel("served score (10 equal-width bins)")
    counts.set_ylabel("scores")
    return fig


def importance_figure(importance: dict[str, Any], top: int = 20) -> Any:
    """Horizontal bars of the ``top`` features by mean |contribution|."""
    import matplotlib.pyplot as plt

    rows = [r for r in importance["features"] if r["mean_abs_contribution"] > 0][:top]
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * max(4, len(rows)) + 1))
    ax.barh(
        [r["feature"] for r in reversed(rows)],
        [r["mean_abs_contribution"] for r in reversed(rows)],
    )
    ax.set_xlabel("mean |contribution| to the served log-odds")
    return fig


def _day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def date2num(moments: Sequence[datetime]) -> list[float]:
    """Matplotlib's date numbers (days since 1970-01-01, its default epoch)."""
    return [m.timestamp() / 86_400 for m in moments]


def _roc(y: Sequence[bool], p: Sequence[float]) -> tuple[list[float], list[float]]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(list(y), list(p))
    return [float(v) for v in fpr], [float(v) for v in tpr]


def _gains(y: Sequence[bool], p: Sequence[float]) -> tuple[list[float], list[float]]:
    ranked = [label for _, label in sorted(zip(p, y, strict=True), key=lambda t: -t[0])]
    total, n = sum(ranked), len(ranked)
    share, gains, hits = [0.0], [0.0], 0
    for i, label in enumerate(ranked, 1):
        hits += label
        share.append(i / n)
        gains.append(hits / total)
    return share, gains


def fmt(value: Any) -> str:
    """A figure as text: 3 decimals, ``[lo, hi]`` for an interval, n/a for null."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    if isinstance(value, list) and len(value) == 2:
        return f"[{fmt(value[0])}, {fmt(value[1])}]"
    return str(value)


def rows_html(rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None) -> str:
    """An HTML table of already-chosen cells (escaped; floats to 3 decimals)."""
    head = ""
    if header:
        head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
    body = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table>{head}\n{body}</table>"


def calibration_html(calibration: dict[str, Any]) -> str:
    """The reliability bins as a table."""
    return rows_html(
        [
            (f"{b['lo']:.1f}-{b['hi']:.1f}", b["count"], b["mean_predicted"], b["observed_rate"])
            for b in calibration["bins"]
        ],
        ("score bin", "scores", "mean score", "observed churn rate"),
    )


def importance_html(importance: dict[str, Any]) -> str:
    """The feature importance table (every feature, zeros included)."""
    return rows_html(
        [
            (r["feature"], r["mean_abs_contribution"], r["mean_contribution"])
            for r in importance["features"]
        ],
        ("feature", "mean |contribution|", "mean contribution (+ towards churn)"),
    )


STYLE = (
    "body{font-family:sans-serif;max-width:64em;margin:2em auto} td,th{padding:.2em 1em;"
    "text-align:left} figure{display:inline-block;margin:1em} .note{color:#555}"
)


def _html(figures: dict[str, Any]) -> str:
    head = figures["per_subscriber"]
    table = figures["order"] == "subscriber"
    if table:
        what = (
            f"one score per subscriber: the last served before the label "
            f"({head['subscribers']} subscribers, {head['churners']} churners; "
            f"{head['warmup_subscribers']} scored during the warm-up left out)"
        )
    else:
        what = (
            f"ROC AUC within each scoring day (every subscriber not yet churned, latest score; "
            f"churns within the horizon), averaged over {head['days']} days"
        )
    headline = [
        ("Per-subscriber ROC AUC [95 % bootstrap interval]", _auc_ci(head)),
        ("Per-subscriber log loss", figures["per_subscriber_log_loss"]),
        ("Per-subscriber Brier score", figures["per_subscriber_brier"]),
        ("Expected calibration error (10 equal-width bins)", figures["expected_calibration_error"]),
    ]
    if table:
        headline.append(
            (
                "Offline baseline on the product's features, per subscriber",
                figures["per_subscriber_offline_roc_auc"],
            )
        )
    else:
        for cut in head["cutoffs"]:
            headline.append((f"ROC AUC on {cut['date']}", _auc_ci(cut)))
    pooled = [
        ("Online ROC AUC, pooled snapshots after warm-up", figures["pooled_snapshot_roc_auc"]),
        ("Offline baseline, pooled snapshots", figures["pooled_offline_roc_auc"]),
        ("Online / offline, pooled", figures["pooled_auc_ratio"]),
        ("Online log loss, pooled", figures["pooled_snapshot_log_loss"]),
        ("Expert prior alone, pooled", figures["pooled_prior_roc_auc"]),
        ("Labelled snapshots (churn)", f"{figures['labels']} ({figures['positive_labels']})"),
    ]
    calendar: list[tuple[str, Any]] = [
        ("Median lead time, days", figures["lead_time_median_days"]),
        ("Churners alerted at least 7 days ahead", figures["share_alerted_7d"]),
        (
            "... among churners with warning signs",
            figures["share_alerted_7d_with_warning_signs"],
        ),
        (
            f"Precision among the top {figures['capacity_k']} per day",
            (figures["precision_at_capacity"] or {}).get("mean"),
        ),
        ("Calls per manager per day", (figures["tasks_per_manager_per_day"] or {}).get("mean")),
    ]
    if table:
        calendar = [(label, "not meaningful for a table") for label, _ in calendar]
    calendar.append(
        ("VIP stop-notices reminded before suspension", figures["reminder_before_suspension_rate"])
    )
    counts = [
        (label, figures[key])
        for key, label in (
            ("subscribers", "Subscribers"),
            ("churners", "Churners"),
            ("events", "Events"),
        )
    ]
    learning = figures["learning_curve"]
    if learning["by"] == "labels_seen":
        curve = rows_html(
            [
                (
                    f"{c['labels_seen_from']}-{c['labels_seen_to']}",
                    c["subscribers"],
                    c["churners"],
                    c["roc_auc"],
                    c["log_loss"],
                )
                for c in learning["points"]
            ],
            ("labels seen", "subscribers", "churners", "ROC AUC", "log loss"),
        )
    else:
        curve = rows_html(
            [(w["week"], w["roc_auc"], w["log_loss"]) for w in learning["points"]],
            ("week of snapshot", "pooled ROC AUC", "log loss"),
        )
    shown = "\n".join(
        f'<figure><img src="{name}" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for name, title in charts(figures["order"])
    )
    calendar_note = f'<p class="note">{html.escape(TABLE_NOTE)}.</p>' if table else ""
    importance = figures["feature_importance"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>churnwatch backtest</title>
<style>{STYLE}</style></head>
<body><h1>churnwatch backtest</h1>
<p>{html.escape(figures["start"])} to {html.escape(figures["end"])}, replayed in
{html.escape(figures["order"])} order. Every figure is in
<a href="metrics.json">metrics.json</a>; docs/backtest.md says what each means.</p>
<h2>Per-subscriber figures (headline)</h2>
<p>{html.escape(what)}.</p>
{rows_html(headline + counts)}
<h2>Pooled over snapshots (secondary)</h2>
<p class="note">{html.escape(figures["pooled_note"])}</p>
{rows_html(pooled)}
<h2>Warnings in time</h2>
{calendar_note}
{rows_html(calendar)}
<h2>Calibration</h2>
{calibration_html(figures["calibration"])}
<h2>Feature importance of the served model</h2>
<p>Mean |contribution| to the served log-odds over {importance["points"]} subscribers' latest
labelled snapshots, by the model serving at the end (weight {fmt(importance["model_weight"])}).</p>
{importance_html(importance)}
<h2>Learning curve</h2>
{curve}
<h2>Charts</h2>
{shown}
</body></html>
"""


def _auc_ci(figure: dict[str, Any]) -> str:
    return f"{fmt(figure.get('roc_auc'))} {fmt(figure.get('roc_auc_ci'))}"
