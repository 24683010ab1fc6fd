"""``churnwatch evaluate-table``: import, backtest and raw-table baseline in one command.

For an analyst deciding whether to trust churnwatch on their table: the
table is imported in memory with its mapping, replayed through the
services' scoring and alerting (``churnwatch.backtest``), and the same table
is given to scikit-learn models directly (``baseline``). ``DIR/index.html``
puts the per-subscriber figures side by side; ``DIR/figures.json`` holds
every figure; ``DIR/backtest/`` is the replay's own report. docs/evaluation.md
says how to read it.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from churnwatch.backtest import BacktestError
from churnwatch.backtest_metrics import (
    metrics,
    offline_baseline,
    print_headline,
    replay_with_progress,
    to_json,
)
from churnwatch.evaluation.baseline import RawTable, raw_baseline, read_table, row_labels
from churnwatch.evaluation.coverage import coverage, rejections_by_reason
from churnwatch.evaluation.stats import RESAMPLES
from churnwatch.importer import (
    ImportResult,
    LoadedMapping,
    MappingError,
    import_table,
    load_mapping,
    write_truth,
)
from services.scoring.settings import ScoringSettings
from shared.events import Event, parse_event


def import_summary(
    imported: ImportResult, table: RawTable, loaded: LoadedMapping
) -> dict[str, Any]:
    """What the import made of the table: rows, rejections by reason, churners among them.

    ``rejected_churn_share`` against ``imported_churn_share``: when rejected
    rows are more often churners, the replay is judged on an easier or
    harder population than the table's (labels read as the baseline reads
    them; null when unknown).
    """
    rejected_rows = {r.row for r in imported.rejections}
    labels, _ = row_labels(table, loaded, imported)

    def share(rows: list[int]) -> float | None:
        known = [labels[r - 1] for r in rows if 0 < r <= len(labels) and labels[r - 1] is not None]
        return sum(1 for v in known if v) / len(known) if known else None

    kept = [i + 1 for i in range(len(labels)) if i + 1 not in rejected_rows]
    return {
        "rows_read": imported.rows_read,
        "rejected": len(imported.rejections),
        "rejected_by_reason": rejections_by_reason(imported),
        "rejected_churn_share": share(sorted(rejected_rows)),
        "imported_churn_share": share(kept),
        "subscribers": len(imported.subscribers),
        "churned": len(imported.churned),
        "events": len(imported.events),
        "events_by_type": dict(sorted(imported.by_type.items())),
    }


def comparison(backtest: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """The side-by-side figures: online per subscriber against the raw-table models."""
    lr = raw.get("logistic_regression") or {}
    gbm = raw.get("hist_gradient_boosting") or {}
    online = backtest["per_subscriber_roc_auc"]
    gbm_auc = gbm.get("roc_auc")
    return {
        "online_per_subscriber_roc_auc": online,
        "online_per_subscriber_roc_auc_ci": backtest["per_subscriber_roc_auc_ci"],
        "online_per_subscriber_log_loss": backtest["per_subscriber_log_loss"],
        "online_per_subscriber_brier": backtest["per_subscriber_brier"],
        "online_expected_calibration_error": backtest["expected_calibration_error"],
        "offline_product_features_per_subscriber_roc_auc": backtest[
            "per_subscriber_offline_roc_auc"
        ],
        "raw_logistic_regression_roc_auc": lr.get("roc_auc"),
        "raw_logistic_regression_roc_auc_ci": lr.get("roc_auc_ci"),
        "raw_gbm_roc_auc": gbm_auc,
        "raw_gbm_roc_auc_ci": gbm.get("roc_auc_ci"),
        "online_to_raw_gbm_ratio": online / gbm_auc if online is not None and gbm_auc else None,
        "pooled_snapshot_roc_auc": backtest["pooled_snapshot_roc_auc"],
    }


def _parse(lines: list[bytes]) -> list[Event]:
    return [parse_event(line, check_clock=False) for line in lines]


def evaluate_table(
    csv_path: Path,
    mapping: Path | str,
    *,
    report: Path,
    seed: int,
    folds: int,
    console: Any,
    resamples: int = RESAMPLES,
) -> int:
    """Run the whole comparison and write ``report``; return the exit code.

    0: done. 1: the table had no row the mapping could import. 2: the
    mapping, the table or the replay's input cannot be used (the message
    names the file and line).
    """
    started = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 2)
        return now

    try:
        loaded = load_mapping(mapping)
        imported = import_table(csv_path, loaded)
        table = read_table(csv_path, loaded)
    except MappingError as exc:
        console.print(f"[red]cannot import[/red]\n{exc}", markup=True, highlight=False)
        return 2
    summary = import_summary(imported, table, loaded)
    console.print(
        f"{imported.table}: {imported.rows_read} rows, {len(imported.rejections)} rejected, "
        f"{len(imported.subscribers)} subscribers ({len(imported.churned)} churned), "
        f"{len(imported.events)} events",
        highlight=False,
    )
    for reason, count in summary["rejected_by_reason"].items():
        console.print(f"  rejected {count}: {reason}", markup=False, highlight=False)
    if not imported.events:
        console.print("[red]no row could be imported[/red]", markup=True)
        return 1
    mark = lap("import", started)

    from services.alerting.rules import RulesError

    try:
        events = _parse(imported.events)
        with tempfile.TemporaryDirectory(prefix="churnwatch-eval-") as tmp:
            truth = Path(tmp) / "truth.csv"
            write_truth(imported, truth)
            result = replay_with_progress(
                console, paths=[], events=events, truth_file=truth, seed=seed
            )
    except ValidationError as exc:
        console.print(f"[red]error[/red] an imported event is invalid: {exc}", highlight=False)
        return 2
    except (BacktestError, RulesError) as exc:
        console.print(f"[red]error[/red] {exc}", markup=True, highlight=False)
        return 2
    mark = lap("replay", mark)
    console.print("training the offline baseline on churnwatch's features...")
    offline = offline_baseline(result.examples, seed=seed, folds=folds)
    mark = lap("offline_baseline", mark)
    figures = metrics(result, offline=offline, seed=seed, resamples=resamples)
    mark = lap("metrics", mark)
    console.print(f"cross-validating the raw-table baseline ({folds} folds)...")
    raw = raw_baseline(table, loaded, imported, seed=seed, folds=folds, resamples=resamples)
    mark = lap("raw_baseline", mark)

    from churnwatch.evaluation.page import write_page
    from churnwatch.report import write_report

    write_report(result, figures, offline, report / "backtest")
    settings = ScoringSettings()
    out: dict[str, Any] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "table": {"file": str(csv_path), "mapping": loaded.source, "name": imported.table},
        "settings": {
            "seed": seed,
            "folds": folds,
            "bootstrap_resamples": resamples,
            "scoring_model": settings.scoring_model,
            "scoring_min_labels": settings.scoring_min_labels,
            "scoring_horizon_days": settings.scoring_horizon_days,
        },
        "comparison": comparison(figures, raw),
        "import": summary,
        "backtest": figures,
        "raw_baseline": raw,
        "coverage": coverage(loaded, table.header),
        "seconds": seconds,
    }
    lap("report", mark)
    seconds["total"] = round(time.perf_counter() - started, 2)
    report.mkdir(parents=True, exist_ok=True)
    (report / "figures.json").write_bytes(to_json(out) + b"\n")
    write_page(out, report / "index.html")
    print_headline(figures, console)
    _print_comparison(out["comparison"], console)
    console.print(f"report: {report / 'index.html'} ({seconds['total']:.0f} s)", highlight=False)
    return 0


def _print_comparison(c: dict[str, Any], console: Any) -> None:
    def show(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4f}"
        if isinstance(value, list):
            return "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
        return "n/a"

    console.print("per-subscriber comparison (ROC AUC [95 % interval]):", highlight=False)
    for label, key in (
        ("churnwatch online", "online_per_subscriber"),
        ("raw logistic regression", "raw_logistic_regression"),
        ("raw HistGBM", "raw_gbm"),
    ):
        console.print(
            f"  {label}: {show(c[key + '_roc_auc'])} {show(c[key + '_roc_auc_ci'])}",
            highlight=False,
        )
    console.print(
        f"  offline HistGBM on churnwatch's features: "
        f"{show(c['offline_product_features_per_subscriber_roc_auc'])}",
        highlight=False,
    )
    console.print(f"  online / raw GBM: {show(c['online_to_raw_gbm_ratio'])}", highlight=False)
    console.print(f"  online ECE: {show(c['online_expected_calibration_error'])}", highlight=False)
