"""History: import a churn table (import-table), backtest events, evaluate a table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from churnwatch.commands import console


def import_table(
    file: Annotated[Path, typer.Argument(help="The table (CSV).")],
    mapping: Annotated[
        Path,
        typer.Option(help="The mapping (YAML, docs/import.md), or a shipped one by name."),
    ],
    out: Annotated[
        Path | None, typer.Option(help="NDJSON events file ('-' or unset: stdout).")
    ] = None,
    truth: Annotated[
        Path | None, typer.Option(help="Write the ground truth (CSV: who churned, when).")
    ] = None,
    post: Annotated[
        str | None, typer.Option(help="Ingest base URL to POST the events to, in batches.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Read only the first N rows.", min=1)] = None,
    as_of: Annotated[
        str | None,
        typer.Option(help="Override the mapping's timeline.as_of (ISO date or time; UTC)."),
    ] = None,
    summary: Annotated[
        Path | None,
        typer.Option(help="Also write the figures as JSON (rows, rejections by reason, events)."),
    ] = None,
) -> None:
    """Turn a churn table into events of our contract with a declarative YAML mapping.

    Rows that cannot be mapped are reported (row number and reason) and skipped.
    Exit 0 when imported, 1 when no row could be imported or posting failed,
    2 when the mapping or the table cannot be used.
    """
    from churnwatch.importer import run

    code = run(
        file,
        mapping,
        out=out,
        truth=truth,
        post=post,
        limit=limit,
        as_of=as_of,
        console=console,
        summary=summary,
    )
    raise typer.Exit(code)


def backtest(
    events: Annotated[list[Path], typer.Argument(help="NDJSON event files (our contract).")],
    report: Annotated[
        Path | None, typer.Option(help="Write metrics.json, charts and index.html here.")
    ] = None,
    rules: Annotated[
        Path | None, typer.Option(help="Alerting rules file (default: the shipped one).")
    ] = None,
    truth: Annotated[
        Path | None, typer.Option(help="Ground truth CSV (from import-table --truth).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Tie-break, subscriber order and baseline.")] = 42,
    capacity: Annotated[
        int | None, typer.Option(help="k of the daily top-k (default: managers x daily calls).")
    ] = None,
    order: Annotated[
        str, typer.Option(help="auto, time or subscriber (docs/backtest.md).")
    ] = "auto",
    window_hours: Annotated[float, typer.Option(help="Event time per batch.", min=0.01)] = 24.0,
) -> None:
    """Replay event files through scoring and alerting in memory; report how well it warns."""
    from churnwatch.backtest_command import main as run_backtest

    if order not in ("auto", "time", "subscriber"):
        raise typer.BadParameter("order must be auto, time or subscriber", param_hint="--order")
    code = run_backtest(
        events,
        report=report,
        rules_file=rules,
        truth_file=truth,
        seed=seed,
        capacity=capacity,
        order=order,  # type: ignore[arg-type]
        window_hours=window_hours,
        console=console,
    )
    raise typer.Exit(code)


def evaluate_table(
    file: Annotated[Path, typer.Argument(help="The table (CSV), one row per subscriber.")],
    mapping: Annotated[
        Path,
        typer.Option(help="The mapping (YAML, docs/import.md), or a shipped one by name."),
    ],
    report: Annotated[Path, typer.Option(help="Write index.html, figures.json and charts here.")],
    seed: Annotated[int, typer.Option(help="Subscriber order, folds and bootstrap.")] = 42,
    folds: Annotated[int, typer.Option(help="Cross-validation folds of the baselines.", min=2)] = 5,
) -> None:
    """Import a churn table, backtest it and compare with models trained on the raw table.

    One score per subscriber, side by side: churnwatch's online score against
    logistic regression and HistGBM cross-validated on the table's own columns,
    with calibration, feature importance, column coverage and rejected rows
    (docs/evaluation.md). Exit 0 when done, 1 when no row could be imported,
    2 when the mapping or the table cannot be used.
    """
    from churnwatch.evaluation.table import evaluate_table as run_evaluation

    code = run_evaluation(file, mapping, report=report, seed=seed, folds=folds, console=console)
    raise typer.Exit(code)
