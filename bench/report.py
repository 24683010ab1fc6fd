"""Write bench/results.json and bench/results.md: each figure beside its limit and target."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Row:
    """One line of the table: a figure, what it is compared with, and its target."""

    key: str
    label: str
    unit: str
    beside: str | None = None  # the key of the limit (or baseline) measured in the same run
    target: str = ""
    # The check on (value, ratio to ``beside``); None means no target.
    check: Any = None


ROWS = [
    Row(
        "ingest_batch_eps",
        "ingest, NDJSON batches of 1,000",
        "events/s",
        beside="ingest_batch_limit_eps",
        target=">= 0.8 of the limit",
        check=lambda v, r: r >= 0.8,
    ),
    Row("ingest_batch_limit_eps", "bare limit: aiokafka producer, one process", "events/s"),
    Row("ingest_single_rps", "ingest, one event per request", "requests/s"),
    Row(
        "ingest_landing_eps",
        "ingest, landing topic relayed to the events topic",
        "events/s",
        beside="ingest_batch_limit_eps",
    ),
    Row(
        "scoring_eps",
        "scoring, one process with PostgreSQL",
        "events/s",
        beside="scoring_limit_eps",
        target=">= 20,000",
        check=lambda v, r: v >= 20_000,
    ),
    Row(
        "scoring_limit_eps",
        "bare limit: feature update + predict_proba_one, no Kafka, no DB",
        "events/s",
    ),
    Row("scoring_engine_alone_eps", "scoring engine alone, in memory (reference)", "events/s"),
    Row(
        "scoring_two_process_eps",
        "scoring, two processes in one group",
        "events/s",
        beside="scoring_eps",
        target=">= 1.8x one process",
        check=lambda v, r: r >= 1.8,
    ),
    Row(
        "scoring_two_process_ratio_min",
        "scoring, two processes / one, the lowest repetition",
        "x",
        target=">= 1.8 in every run",
        check=lambda v, r: v >= 1.8,
    ),
    Row("e2e_achieved_eps", "end-to-end: load accepted (offered 2,000/s)", "events/s"),
    Row("e2e_task_p50_s", "end-to-end: accepted -> stored task, p50", "s"),
    Row("e2e_task_p95_s", "end-to-end: accepted -> stored task, p95", "s"),
    Row(
        "e2e_task_p99_s",
        "end-to-end: accepted -> stored task, p99",
        "s",
        target="<= 0.5 s",
        check=lambda v, r: v <= 0.5,
    ),
    Row("e2e_tasks", "end-to-end: tasks the task percentiles are over", "tasks"),
    Row("e2e_sms", "end-to-end: probe SMS the SMS percentiles are over", "SMS"),
    Row("e2e_sms_missing", "end-to-end: probe SMS that never arrived", "SMS"),
    Row("e2e_failed_requests", "end-to-end: requests not answered 202", "requests"),
    Row("e2e_sms_hold_s", "end-to-end: SMS hold in force (OUTREACH_SMS_HOLD_S)", "s"),
    Row(
        "e2e_sms_p50_s",
        "end-to-end: stop_notice accepted -> SMS at gateway, with the hold, p50",
        "s",
    ),
    Row(
        "e2e_sms_p95_s",
        "end-to-end: stop_notice accepted -> SMS at gateway, with the hold, p95",
        "s",
    ),
    # No target: the hold is a product choice (a payment just behind the notice must
    # be able to cancel the SMS); issue 20's 0.5 s is the pipeline's share, below.
    Row(
        "e2e_sms_p99_s",
        "end-to-end: stop_notice accepted -> SMS at gateway, with the hold, p99",
        "s",
    ),
    Row("e2e_sms_beyond_hold_p50_s", "end-to-end: accepted -> SMS beyond the hold, p50", "s"),
    Row("e2e_sms_beyond_hold_p95_s", "end-to-end: accepted -> SMS beyond the hold, p95", "s"),
    Row(
        "e2e_sms_beyond_hold_p99_s",
        "end-to-end: accepted -> SMS beyond the hold, p99",
        "s",
        target="<= 0.5 s",
        check=lambda v, r: v <= 0.5,
    ),
    Row(
        "scoring_rss_bytes_per_subscriber",
        "scoring resident memory per tracked subscriber",
        "bytes",
        target="<= 1,024",
        check=lambda v, r: v <= 1024,
    ),
    Row("pg_bytes_per_subscriber", "PostgreSQL (scoring schema) per subscriber", "bytes"),
    Row(
        "pg_bytes_per_subscriber_alerting_outreach",
        "PostgreSQL (alerting + outreach) per subscriber in the e2e run",
        "bytes",
    ),
    Row("scoring_eps_10k", "scoring with 10k stored subscribers", "events/s"),
    Row(
        "scoring_eps_100k",
        "scoring with 100k stored subscribers",
        "events/s",
        beside="scoring_eps_10k",
    ),
    Row(
        "scoring_eps_1m",
        "scoring with 1M stored subscribers",
        "events/s",
        beside="scoring_eps_10k",
    ),
    Row(
        "scoring_eps_5m",
        "scoring with 5M stored subscribers",
        "events/s",
        beside="scoring_eps_10k",
    ),
    Row(
        "scoring_eps_10m",
        "scoring with 10M stored subscribers",
        "events/s",
        beside="scoring_eps_10k",
        target=">= 10,000 and >= 0.8 of 10k",
        check=lambda v, r: v >= 10_000 and r >= 0.8,
    ),
    Row(
        "scoring_wal_bytes_per_event",
        "PostgreSQL WAL per scoring event, at the most stored subscribers, after a checkpoint",
        "bytes",
    ),
    Row(
        "scoring_wal_full_pages_per_event",
        "full-page images in it, per event",
        "pages/event",
    ),
    Row(
        "scoring_wal_record_bytes_per_event",
        "PostgreSQL WAL per scoring event without full-page images (same size)",
        "bytes",
    ),
    Row("workbench_open_tasks", "workbench: open tasks in outreach's database", "tasks"),
    Row("workbench_floor_p50_ms", "workbench: floor, GET /healthz on the same process, p50", "ms"),
    *(
        Row(
            f"workbench_{page}_{p}_ms",
            f"workbench: {label}, {p}",
            "ms",
            beside="workbench_floor_p50_ms",
            target="<= 200 ms",
            check=lambda v, r: v <= 200,
        )
        for page, label in (
            ("my_day", "My day (a manager)"),
            ("card", "subscriber card"),
            ("team", "team lead page (20 managers)"),
        )
        for p in ("p50", "p95")
    ),
]


def _fmt(value: float, unit: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if unit in ("x", "pages/event"):
        return f"{value:.2f}"
    if unit == "s":
        return f"{value:.3f}"
    if unit == "ms":
        return f"{value:,.1f}"
    return f"{value:,.0f}"


def table(results: dict[str, Any]) -> str:
    """The Markdown table of every figure present in ``results``.

    With ``results["before"]`` (bench/before.json: the figures an issue was filed
    with), a column shows each figure's value then.
    """
    before: dict[str, float] = (results.get("before") or {}).get("figures", {})
    lines = [
        "| figure | value | unit | beside (same run) | ratio | target | met |"
        + (" before |" if before else ""),
        "|---|---|---|---|---|---|---|" + ("---|" if before else ""),
    ]
    for row in ROWS:
        if row.key not in results:
            continue
        value = results[row.key]
        base = results.get(row.beside) if row.beside else None
        ratio = value / base if base else None
        met = ""
        measurable = not (isinstance(value, float) and math.isnan(value))
        if row.check is not None and measurable and (row.beside is None or ratio is not None):
            met = "yes" if row.check(value, ratio if ratio is not None else 0.0) else "**no**"
        lines.append(
            f"| {row.label} | {_fmt(value, row.unit)} | {row.unit} | "
            f"{f'`{row.beside}` {_fmt(base, row.unit)}' if base else ''} | "
            f"{f'{ratio:.2f}' if ratio is not None else ''} | {row.target} | {met} |"
            + (
                f" {_fmt(before[row.key], row.unit) if row.key in before else ''} |"
                if before
                else ""
            )
        )
    return "\n".join(lines)


def _no_nan(value: Any) -> Any:
    """JSON has no NaN: a percentile of too few values is written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


def write(results: dict[str, Any], out: Path) -> None:
    """Write ``results.json`` and ``results.md`` into ``out`` (overwriting)."""
    out.mkdir(parents=True, exist_ok=True)
    clean = _no_nan(results)
    (out / "results.json").write_text(json.dumps(clean, indent=2) + "\n")
    reps = results["repetitions"]
    note = (
        " **Quick run: small counts"
        + (", one repetition (no median)" if reps == 1 else "")
        + "; not comparable with a full run.**"
        if results["quick"]
        else ""
    )
    machine = results["machine"]
    (out / "results.md").write_text(
        "# Benchmark results\n\n"
        f"Commit `{results['commit']}`, {machine['cores']} cores, "
        f"{machine['memory_bytes'] / 2**30:.1f} GiB, Python {machine['python']}; "
        f"sections {', '.join(results['sections'])}; each figure the median of {reps} "
        f"repetition{'s' if reps != 1 else ''}.{note} Every repetition's value is in "
        "`results.json` under `runs`; how each figure is measured is in "
        "[README.md](README.md).\n\n" + table(results) + "\n"
    )
