"""``churnwatch drill``: fault drills on the embedded stack, each counted end to end.

Starts ``churnwatch up`` on free ports (its own data directory), runs each drill
under load, and prints one row per drill: events acknowledged, applied, tasks,
SMS sent, SMS final, lost, duplicated. Exits non-zero if any drill lost or
duplicated anything or left an SMS without a final state (docs/faults.md).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.table import Table

from churnwatch.drill.drills import DRILLS, Drill, DrillResult, run_drills
from churnwatch.drill.stack import UpStack

__all__ = ["DRILLS", "Drill", "DrillResult", "results_table", "run"]


def results_table(results: Sequence[DrillResult]) -> Table:
    """The drills' counts, one row each."""
    table = Table(title="Drills: every acknowledged event followed to its far end")
    for column in (
        "drill",
        "acknowledged",
        "applied",
        "tasks",
        "SMS sent",
        "SMS final",
        "lost",
        "duplicated",
        "result",
    ):
        table.add_column(column, justify="left" if column == "drill" else "right")
    for r in results:
        t = r.tally
        verdict = "[green]pass[/]" if r.passed else "[red]FAIL[/]"
        if t is None:
            table.add_row(r.drill.name, *["-"] * 7, verdict)
            continue
        table.add_row(
            r.drill.name,
            f"{t.acknowledged:,}",
            f"{t.applied:,}",
            f"{t.tasks_at_outreach}/{t.tasks}",
            f"{t.sms_sent}/{t.sms_tasks}",
            f"{t.sms_final}/{t.sms_tasks}",
            str(t.lost),
            str(t.duplicated),
            verdict,
        )
    return table


def select(names: Sequence[str], *, short: bool) -> list[Drill]:
    """The drills to run: by name, or the CI subset, or all. Raises ``KeyError``."""
    by_name = {d.name: d for d in DRILLS}
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise KeyError(f"unknown drill(s) {unknown}; known: {sorted(by_name)}")
        return [by_name[n] for n in names]
    return [d for d in DRILLS if d.in_short_run] if short else list(DRILLS)


def run(
    drills: Sequence[Drill],
    *,
    data_dir: Path | None = None,
    up_args: tuple[str, ...] = (),
    rate: float = 1500.0,
    settle_timeout_s: float = 180.0,
    subscribers: int | None = None,
    on_start: Callable[[UpStack], None] | None = None,
    on_result: Callable[[DrillResult], None] | None = None,
) -> list[DrillResult]:
    """Start a stack, run ``drills`` on it, stop it. A temporary data dir unless given."""
    own = data_dir is None
    directory = Path(tempfile.mkdtemp(prefix="churnwatch-drill-")) if own else data_dir
    assert directory is not None
    stack = UpStack.start(directory, up_args=up_args, env=_drill_env())
    try:
        if on_start is not None:
            on_start(stack)
        return asyncio.run(
            run_drills(
                stack,
                drills,
                rate=rate,
                settle_timeout_s=settle_timeout_s,
                subscribers=subscribers,
                on_result=on_result,
            )
        )
    finally:
        stack.stop()
        if own:
            shutil.rmtree(directory, ignore_errors=True)


def _drill_env() -> dict[str, str]:
    """The environment ``up`` gets: the caller's, with the drills' short timers."""
    import os

    env = dict(os.environ)
    # A task left in 'sending' by a crash is retried (same idempotency key) after
    # this long instead of two minutes, so the drill need not wait for it.
    env.setdefault("OUTREACH_SENDING_STALE_S", "10")
    env.setdefault("SMS_TIMEOUT_S", "5")
    # Alerting's sweep (dwell times, expiries) every 5 s instead of 30 s: the tasks a
    # load will make are made within the drill's quiet period.
    env.setdefault("ALERTING_SWEEP_INTERVAL_S", "5")
    # The reconciler asks the provider about an SMS without a receipt after 10 s
    # instead of a minute, every 5 s instead of 30 (the 24 h deadline is kept).
    env.setdefault("SMS_RECONCILE_INTERVAL_S", "5")
    env.setdefault("SMS_RECONCILE_AFTER_S", "10")
    return env
