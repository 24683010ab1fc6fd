"""The benchmark harness's cheapest section runs and writes both results files.

The other sections start service processes and take minutes; ``make bench``
runs them. Here only ``scoring-limit`` (in this process, no broker, no
database) and the report's table logic are exercised.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench.__main__ import main
from bench.report import table


def test_quick_scoring_limit_writes_both_files(tmp_path: Path) -> None:
    results = main(
        ["--quick", "--only", "scoring-limit", "--population", "60", "--out", str(tmp_path)]
    )

    written = json.loads((tmp_path / "results.json").read_text())
    assert written["sections"] == ["scoring-limit"]
    for key in ("scoring_limit_eps", "scoring_engine_alone_eps"):
        assert isinstance(written[key], float | int) and written[key] > 0, key
        assert written[key] == results[key]
        assert len(written["runs"][key]) == 1  # --quick: one repetition
    assert written["quick"] is True and written["repetitions"] == 1
    assert written["machine"]["cores"] >= 1 and written["machine"]["memory_bytes"] > 0
    assert written["commit"]
    report = (tmp_path / "results.md").read_text()
    assert "one repetition (no median)" in report
    assert "bare limit: feature update + predict_proba_one" in report


def test_table_puts_each_figure_beside_its_limit_and_target() -> None:
    rows = table(
        {
            "scoring_eps": 12_000.0,
            "scoring_limit_eps": 40_000.0,  # ratio 0.3 < 0.4: the target is missed
            "e2e_task_p99_s": 0.5,
            "e2e_sms_p99_s": 3.6,  # with the 3 s hold: no target of its own
            "e2e_sms_beyond_hold_p99_s": math.nan,  # too few SMS for a percentile
        }
    ).splitlines()
    [scoring] = [r for r in rows if r.startswith("| scoring, one process")]
    assert "`scoring_limit_eps` 40,000" in scoring and "| 0.30 |" in scoring
    assert scoring.endswith("| **no** |")
    [task] = [r for r in rows if "stored task, p99" in r]
    assert "| 0.500 |" in task and task.endswith("| yes |")
    [held] = [r for r in rows if "SMS at gateway, with the hold, p99" in r]
    assert "| 3.600 |" in held and held.endswith("|  |  |")  # no target, no verdict
    [sms] = [r for r in rows if "SMS beyond the hold, p99" in r]
    assert "| <= 0.5 s |" in sms  # issue 20's target is the pipeline's share
    assert "| n/a |" in sms and sms.endswith("|  |")  # no verdict without a value
