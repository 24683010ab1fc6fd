"""``churnwatch backtest``: replay with a progress bar, print the headline, write the report.

The command's body, apart from the figures (``churnwatch.backtest_metrics``)
and the report (``churnwatch.report``), which it ties together: the report
reads the figures module, so the command cannot live there without an import
cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from churnwatch.backtest import BacktestError, Order
from churnwatch.backtest_metrics import (
    metrics,
    offline_baseline,
    print_headline,
    replay_with_progress,
)
from churnwatch.report import write_report


def main(
    paths: Sequence[Path],
    *,
    report: Path | None,
    rules_file: Path | None,
    truth_file: Path | None,
    seed: int,
    capacity: int | None,
    order: Order,
    window_hours: float,
    console: Any,
) -> int:
    """``churnwatch backtest``: replay with a progress bar, print the headline, write the report.

    Returns the exit code: 0 done, 2 unusable input (named with file and line).
    """
    from services.alerting.rules import RulesError

    try:
        result = replay_with_progress(
            console,
            paths=paths,
            rules_file=rules_file,
            truth_file=truth_file,
            seed=seed,
            order=order,
            window_hours=window_hours,
        )
    except (BacktestError, RulesError) as exc:
        console.print(f"[red]error[/red] {exc}", markup=True, highlight=False)
        return 2
    console.print("training the offline baseline (5-fold cross-validation)...")
    offline = offline_baseline(result.examples, seed=seed)
    figures = metrics(result, offline=offline, capacity=capacity, seed=seed)
    print_headline(figures, console)
    if report is not None:
        write_report(result, figures, offline, report)
        console.print(f"report: {report / 'index.html'}")
    return 0
