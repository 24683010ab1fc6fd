"""The backtest's report: ``metrics.json``, PNG charts (matplotlib, Agg) and ``index.html``."""

from __future__ import annotations

import html
import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from churnwatch.backtest import (
    EARLY_DAYS,
    Example,
    Result,
    lead_times,
    log_loss,
    roc_auc,
    to_json,
)

CHARTS = (
    ("prequential.png", "Prequential ROC AUC and log loss by week of snapshot"),
    ("roc.png", "ROC curves after warm-up: online model and offline baseline"),
    ("gains.png", "Cumulative gains and lift"),
    ("calibration.png", "Calibration of the served score"),
    ("precision_at_k.png", "Precision among the k riskiest each day (retention capacity)"),
    ("lead_time.png", "Early-warning lead time: first retention alert to churn"),
)


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
    after = [e for e in result.examples if e.order >= result.min_labels]
    oof_after = [offline[e.order] for e in after] if offline else []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        written.append(out / name)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    weeks, aucs, losses = _weekly(result.examples)
    ax.plot(date2num(weeks), aucs, marker="o", label="ROC AUC")
    ax.xaxis_date()
    ax.set_ylabel("ROC AUC")
    ax.set_ylim(0.4, 1.0)
    ax2 = ax.twinx()
    ax2.plot(date2num(weeks), losses, marker="s", color="tab:red", label="log loss")
    ax2.set_ylabel("log loss")
    ax.set_xlabel("week of snapshot")
    fig.autofmt_xdate()
    ax.legend(loc="lower left")
    ax2.legend(loc="lower right")
    save(fig, "prequential.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    y = [e.label for e in after]
    for name, p in (("online", [e.predicted for e in after]), ("offline", oof_after)):
        if p and len(set(y)) == 2:
            fpr, tpr = _roc(y, p)
            ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc(y, p):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(loc="lower right")
    save(fig, "roc.png")

    fig, (g, lift) = plt.subplots(1, 2, figsize=(8, 3.5))
    for name, p in (("online", [e.predicted for e in after]), ("offline", oof_after)):
        if p and any(y):
            share, gains = _gains(y, p)
            g.plot(share, gains, label=name)
            lift.plot(share[1:], [gi / s for gi, s in zip(gains[1:], share[1:], strict=True)])
    g.plot([0, 1], [0, 1], color="grey", linestyle=":")
    g.set_xlabel("share of snapshots, riskiest first")
    g.set_ylabel("share of churn labels")
    g.legend(loc="lower right")
    lift.set_xlabel("share of snapshots, riskiest first")
    lift.set_ylabel("lift")
    save(fig, "gains.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    mean_p, rate, _ = _calibration([e.predicted for e in after], y)
    ax.plot(mean_p, rate, marker="o", label="online (served score)")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed churn rate")
    ax.legend(loc="upper left")
    save(fig, "calibration.png")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    series = figures["precision_at_capacity"].get("by_day") or []
    ax.plot(
        date2num([datetime.fromisoformat(d).replace(tzinfo=UTC) for d, _ in series]),
        [v for _, v in series],
    )
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

    page = out / "index.html"
    page.write_text(_html(figures), encoding="utf-8")
    written.append(page)
    return written


def date2num(moments: Sequence[datetime]) -> list[float]:
    """Matplotlib's date numbers (days since 1970-01-01, its default epoch)."""
    return [m.timestamp() / 86_400 for m in moments]


def _weekly(examples: Sequence[Example]) -> tuple[list[datetime], list[float], list[float]]:
    by_week: dict[int, list[Example]] = defaultdict(list)
    for e in examples:
        by_week[int(e.at // (7 * 86_400))].append(e)
    weeks, aucs, losses = [], [], []
    for w in sorted(by_week):
        group = by_week[w]
        y, p = [e.label for e in group], [e.predicted for e in group]
        auc, loss = roc_auc(y, p), log_loss(y, p)
        if auc is None or loss is None:
            continue
        weeks.append(datetime.fromtimestamp(w * 7 * 86_400, UTC))
        aucs.append(auc)
        losses.append(loss)
    return weeks, aucs, losses


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


def _calibration(
    p: Sequence[float], y: Sequence[bool], bins: int = 10
) -> tuple[list[float], list[float], list[int]]:
    sums: dict[int, list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
    for q, label in zip(p, y, strict=True):
        b = min(bins - 1, int(q * bins))
        sums[b][0] += q
        sums[b][1] += label
        sums[b][2] += 1
    keys = sorted(sums)
    return (
        [sums[b][0] / sums[b][2] for b in keys],
        [sums[b][1] / sums[b][2] for b in keys],
        [int(sums[b][2]) for b in keys],
    )


HEADLINE = (
    ("online_roc_auc", "Online ROC AUC (prequential, after warm-up)"),
    ("offline_roc_auc", "Offline baseline ROC AUC (5-fold out-of-fold, same snapshots)"),
    ("auc_ratio", "Online / offline"),
    ("online_log_loss", "Online log loss (after warm-up)"),
    ("prior_roc_auc", "Expert prior alone, ROC AUC"),
    ("lead_time_median_days", "Median lead time, days"),
    ("share_alerted_7d", "Churners alerted at least 7 days ahead"),
    ("share_alerted_7d_with_warning_signs", "... among churners with warning signs"),
    ("reminder_before_suspension_rate", "VIP stop-notices reminded before suspension"),
    ("labels", "Labelled snapshots"),
    ("positive_labels", "... of them churn"),
    ("churners", "Churners"),
    ("subscribers", "Subscribers"),
    ("events", "Events"),
)


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def _html(figures: dict[str, Any]) -> str:
    rows = [(label, figures.get(key)) for key, label in HEADLINE]
    rows.append(
        (
            f"Precision among the top {figures['capacity_k']} per day",
            figures["precision_at_capacity"]["mean"],
        )
    )
    rows.append(("Tasks per manager per day", figures["tasks_per_manager_per_day"]["mean"]))
    table = "\n".join(
        f"<tr><td>{html.escape(label)}</td><td>{html.escape(_fmt(v))}</td></tr>"
        for label, v in rows
    )
    charts = "\n".join(
        f'<figure><img src="{name}" alt="{html.escape(title)}">'
        f"<figcaption>{html.escape(title)}</figcaption></figure>"
        for name, title in CHARTS
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>churnwatch backtest</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}
td{{padding:.2em 1em}} figure{{display:inline-block;margin:1em}}</style></head>
<body><h1>churnwatch backtest</h1>
<p>{html.escape(figures["start"])} to {html.escape(figures["end"])}, replayed in
{html.escape(figures["order"])} order. Every figure is in
<a href="metrics.json">metrics.json</a>; docs/backtest.md says what each means.</p>
<table>{table}</table>
{charts}
</body></html>
"""
