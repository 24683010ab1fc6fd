"""The drill harness's short run, as CI runs it: ``churnwatch drill --short``.

Starts ``churnwatch up`` on free ports (the durable embedded broker, supervised
services), and runs the short drills under load: a baseline, ``kill -9`` of
scoring, ``kill -9`` of the broker, poison records and duplicate batches. Each
is counted at the far end (events applied, tasks at outreach, SMS at the
gateway and their final states); the test fails on anything lost or doubled.
The full run is documented in docs/faults.md with its latest results.
"""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest

from churnwatch.drill import DRILLS, results_table, run, select
from churnwatch.drill.stack import UpStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]


def test_the_short_drills_lose_and_double_nothing(tmp_path: Path) -> None:
    drills = select([], short=True)
    assert {d.name for d in drills} == {
        "baseline",
        "kill-scoring",
        "broker-restart",
        "poison-duplicates",
    }
    running: list[int] = []
    stacks: list[UpStack] = []

    def snapshot(_: object) -> None:
        # After each drill (services, broker restarted): what `up` must stop at the end.
        running[:] = stacks[0].processes()

    results = run(
        drills,
        data_dir=tmp_path / "stack",
        subscribers=60,
        settle_timeout_s=150,
        on_start=stacks.append,
        on_result=snapshot,
    )
    failures = [f"{r.drill.name}: {r.error or r.tally} {r.notes}" for r in results if not r.passed]
    assert not failures, "\n".join(failures)
    for result in results:
        assert result.tally is not None
        # Something went through every drill: the counts are of a real load.
        assert result.tally.acknowledged > 1000, result.drill.name
        assert result.tally.applied == result.tally.acknowledged
    assert results_table(results).row_count == len(drills)
    # Stopping `up` stops everything, the restarted broker and services included.
    assert len(running) >= 8  # up, object store, broker, gateway, four services, PostgreSQL
    left = [pid for pid in running if _alive(pid)]
    assert left == [], f"processes left behind: {left}"


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_every_drill_has_a_unique_name_and_the_issue_s_faults_are_all_there() -> None:
    names = [d.name for d in DRILLS]
    assert len(names) == len(set(names))
    assert {
        "kill-ingest",
        "kill-scoring",
        "kill-alerting",
        "kill-outreach",
        "broker-restart",
        "broker-freeze",
        "postgres-restart",
        "gateway-500",
        "gateway-timeouts",
        "receipts-dropped",
        "outreach-mid-send",
        "poison-duplicates",
    } <= set(names)
    with pytest.raises(KeyError, match="unknown drill"):
        select(["no-such-drill"], short=False)
