"""The capacity plan (docs/capacity.md): its arithmetic, its keys, and that it matches the results.

``bench.capacity`` turns a results.json into the plan. These tests build it from a small
synthetic results dict with some keys missing, check the replica and partition arithmetic
against an independent computation, check that every measured figure in the text carries
its key and that a missing one is called missing rather than filled in, and check that the
docs/capacity.md in the repository is what bench/results.json gives.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from bench import capacity, capacity_wal
from bench.capacity import MISSING, build

ROOT = Path(__file__).resolve().parent.parent
PEAK = 3_000_000_000 / 86_400 * 5
X = "\u00d7"  # the multiplication sign the plan prints

# Distinctive values, so that a measured figure's printed form is not also a derived one.
SYNTHETIC: dict[str, Any] = {
    "ingest_batch_eps": 12_345.0,
    "scoring_eps": 11_256.0,
    "scoring_two_process_eps": 19_135.0,
    "scoring_two_process_ratio": 1.7,
    "scoring_two_process_ratio_min": 1.6543,
    "scoring_peak_rss_bytes": 301_234_567.0,
    "scoring_rss_bytes_per_subscriber": 1_777.0,
    "pg_bytes_per_subscriber": 4_321.0,
    "e2e_achieved_eps": 2_468.0,
    "e2e_task_p99_s": 0.8765,
    "e2e_sms_p99_s": None,  # a percentile with too few values
    "scoring_eps_10k": 6_543.0,
    "scoring_eps_100k": 3_219.0,
    "scoring_eps_5m": 1_987.0,
    "scoring_growth_ratio_5m_10k": 0.3037,
    "scoring_growth_ratio_100k_10k": 0.4921,
    "scoring_wal_bytes_per_event_5m": 3_456.0,  # per-size keys the plan does not read
    "runs": {"scoring_eps": [10_111.0, 11_256.0, 12_003.0]},
    "commit": "abc1234",
    "machine": {"cores": 2},
}
ABSENT = (
    "ingest_landing_eps",
    "kafka_event_bytes",
    "scoring_wal_bytes_per_event",
    "pg_bytes_per_subscriber_alerting_outreach",
    "e2e_sms_p99_s",
)


def section(doc: str, title: str) -> str:
    """The text of one ``## title`` section."""
    start = doc.index(f"## {title}\n")
    end = doc.find("\n## ", start + 1)
    return doc[start : end if end > 0 else None]


def first(pattern: str, doc: str) -> str:
    """The first group of the first match of ``pattern``."""
    match = re.search(pattern, doc)
    assert match, pattern
    return match.group(1)


def test_replicas_are_the_peak_over_the_planned_rate_per_replica() -> None:
    doc = build(SYNTHETIC)
    eff = min(1.0, 1.7 / 2)
    assert "**173,611 events/s**" in doc
    # Scoring: the largest growth size present is the per-replica figure.
    per = 1_987.0 * eff * capacity.HEADROOM
    assert "`scoring_eps_5m` (5,000,000 stored subscribers)" in doc
    assert f"1,987 (`scoring_eps_5m`) {X} {eff:.3f} {X} 0.7 = {per:,.0f} events/s" in doc
    assert f"= {PEAK / per:.2f} → {math.ceil(PEAK / per)} replicas" in doc
    # Ingest: stateless, so simply ceil(peak / (eps * headroom)).
    ingest = math.ceil(PEAK / (12_345.0 * capacity.HEADROOM))
    assert f"{X} 0.7) = {PEAK / (12_345.0 * 0.7):.2f} → **{ingest} replicas**" in doc
    # Partitions: a multiple of 60, room for twice the most replicas, within the limit.
    partitions = int(first(r"\*\*(\d+) partitions\*\*", doc))
    alerting = 2_468.0 * capacity.HEADROOM
    assert partitions % 60 == 0 and partitions <= 1024
    assert partitions >= 2 * max(PEAK / per, PEAK / alerting)
    # Each consumer takes whole partitions: as many as it carries at the peak, never more.
    for name, rate in (("scoring", per), ("alerting (an upper bound)", alerting)):
        carry = math.floor(rate / (PEAK / partitions))
        replicas = math.ceil(partitions / carry)
        assert carry * PEAK / partitions <= rate < (carry + 1) * PEAK / partitions
        assert f"- {name}: floor(" in doc
        assert f"{carry} partitions per replica at the peak; {partitions} ÷ {carry} → " in doc
        assert f"**{replicas} replicas**" in doc


def unkeyed(results: dict[str, Any]) -> list[str]:
    """Every place the plan prints a measured figure without its key next to it."""
    doc = build(results)
    figures = capacity.Figures(results)
    found = []
    read = [
        k
        for k in results
        if k in capacity.KEYS or capacity.GROWTH_KEY.match(k) or capacity.GROWTH_RATIO_KEY.match(k)
    ]
    for key in read:
        if figures.get(key) is None:
            continue
        _, decimals, _ = capacity.spec(key)
        value = f"{figures.get(key):,.{decimals}f}"
        # The whole number only: not 321 inside 4,321, nor 2,345 inside 2,345.6.
        for match in re.finditer(rf"(?<![\d,.]){re.escape(value)}(?![\d]|[.,]\d)", doc):
            before, after = doc[: match.start()], doc[match.end() :]
            if not (
                before.endswith((f"`{key}` = ", f"| `{key}` | ")) or after.startswith(f" (`{key}`)")
            ):
                found.append(f"{key}: ...{before[-60:]}[{value}]{after[:40]}...")
    return found


def test_every_measured_figure_carries_its_key() -> None:
    assert unkeyed(SYNTHETIC) == []
    doc = build(SYNTHETIC)
    for key, value in SYNTHETIC.items():
        if isinstance(value, float) and key != "scoring_wal_bytes_per_event_5m":
            assert f"`{key}`" in doc, f"{key} is never printed"
    assert "`runs.scoring_eps` min = 10,111 events/s" in doc
    assert "commit `abc1234` on 2 cores" in doc


def test_a_missing_key_is_called_missing_never_filled_in() -> None:
    doc = build(SYNTHETIC)
    gaps = section(doc, "What was not measured")
    for key in ABSENT:
        assert f"`{key}`: {MISSING}" in doc, key
        assert f"`{key}` = " not in doc, key
        assert f"| `{key}` | {MISSING} |" in section(doc, "Measured figures"), key
        assert f"- `{key}`: {MISSING}." in gaps, key
    # Without the WAL figure the plan gives the break-even instead of a rate.
    assert f"= **{100e6 / PEAK:,.0f} bytes**" in doc
    # Without the record size, the event topics' disk stays a formula of the missing key.
    assert f"3,000,000,000 {X} 21 = 63,000,000,000 {X} `kafka_event_bytes`" in doc
    # The growth keys and their ratio are found by pattern, whatever sizes were run.
    assert "`scoring_eps_1m`" not in doc and "`scoring_growth_ratio_5m_10k` = 0.3037" in doc
    assert "0.4921 (`scoring_growth_ratio_100k_10k`), 0.3037 (`scoring_growth_ratio_5m_10k`)" in doc
    assert "(lowest repetition: `scoring_two_process_ratio_min` = 1.6543)" in doc
    assert "scoring_wal_bytes_per_event_5m" not in doc
    # A key only cited when present is not reported missing when absent.
    plain = {k: v for k, v in SYNTHETIC.items() if k != "scoring_two_process_ratio_min"}
    assert "scoring_two_process_ratio_min" not in build(plain)


def test_with_wal_and_record_size_the_binding_part_is_computed() -> None:
    results = {**SYNTHETIC, "scoring_wal_bytes_per_event": 2_345.0, "kafka_event_bytes": 456.0}
    doc = build(results)
    # Without the full-page figures the plan sizes on the measured worst case, and says so.
    assert f"{PEAK:,.0f} {X} 2,345 (`scoring_wal_bytes_per_event`) (worst case: " in doc
    one_primary = 100e6 / 2_345.0
    verdict = section(doc, "What stops scaling linearly first")
    assert "**PostgreSQL binds first.**" in verdict
    per_replica = 1_987.0 * 0.85 * capacity.HEADROOM
    assert (
        f"past {one_primary:,.0f} events/s ({one_primary / PEAK:.0%} of the peak, the planned "
        f"rate of {one_primary / per_replica:.1f} scoring replicas)"
    ) in verdict
    groups = int(first(r"needed: .*\*\*(\d+)\*\*", doc))
    assert groups >= math.ceil(PEAK * 2_345.0 / 100e6)
    assert "| events | 3,000,000,000 | 456 (`kafka_event_bytes`) | " in doc
    assert (
        f"3,000,000,000 {X} 456 (`kafka_event_bytes`) {X} 21 = {3e9 * 456 * 21 / 1e12:,.1f} TB"
        in doc
    )
    assert "`kafka_event_bytes`:" not in section(doc, "What was not measured")
    assert unkeyed(results) == []


def steady_plan(worst: float, records: float, images: float) -> tuple[dict[str, Any], str]:
    """The synthetic results with these three WAL figures, and the plan built from them."""
    results = {
        **SYNTHETIC,
        "scoring_wal_bytes_per_event": worst,
        "scoring_wal_record_bytes_per_event": records,
        "scoring_wal_full_pages_per_event": images,
    }
    return results, build(results)


def first_touch_shares(images: float) -> tuple[float, float]:
    """The state pages' and the processed-id index's first-touch shares, worked out here."""
    cycle = PEAK * capacity_wal.CHECKPOINT_TIMEOUT_S
    state_pages = 1e8 * SYNTHETIC["pg_bytes_per_subscriber"] / 8192
    state = state_pages * (1 - math.exp(-cycle * images / state_pages)) / (cycle * images)
    id_pages = 3e9 * 30 * capacity_wal.PROCESSED_INDEX_BYTES / 8192
    return state, id_pages * (1 - math.exp(-cycle / id_pages)) / cycle


def test_the_steady_state_wal_counts_a_full_page_once_per_page_and_cycle() -> None:
    worst, records, images = 20_000.0, 2_000.0, 2.25
    results, doc = steady_plan(worst, records, images)
    state, ids = first_touch_shares(images)
    expected = records + (worst - records) / images * (images * state + ids)
    assert records < expected < worst
    assert f"**{expected:,.0f} bytes**, against 20.0 KB in the worst case" in doc
    assert f"Peak WAL: {PEAK:,.0f} {X} {expected:,.0f} (steady state) = " in doc
    assert f"one primary carries 100.0 MB/s ÷ {expected:,.0f} (steady state) = " in doc
    assert unkeyed(results) == []


def test_wal_beyond_a_page_per_counted_image_is_carried_whole() -> None:
    worst, records, images = 30_000.0, 2_000.0, 2.0
    results, doc = steady_plan(worst, records, images)
    unattributed = worst - records - images * 8192
    assert f"= {unattributed:,.0f} bytes." in doc
    state, ids = first_touch_shares(images)
    expected = records + unattributed + 8192 * (images * state + ids)
    assert f"**{expected:,.0f} bytes**, against 30.0 KB in the worst case" in doc
    assert unkeyed(results) == []


def test_first_touch_share_is_one_for_sparse_touches_and_pages_over_touches_for_dense() -> None:
    assert capacity_wal.first_touch_share(10.0, 1e9) == pytest.approx(1.0, abs=1e-6)
    assert capacity_wal.first_touch_share(1e9, 1e3) == pytest.approx(1e-6)
    assert capacity_wal.first_touch_share(1e6, 1e6) == pytest.approx(1 - math.exp(-1))


def test_a_wal_rate_one_primary_can_take_leaves_size_as_the_bound() -> None:
    results = {**SYNTHETIC, "scoring_wal_bytes_per_event": 321.0}
    verdict = section(build(results), "What stops scaling linearly first")
    assert f"**PostgreSQL's WAL holds the peak** ({PEAK * 321.0 / 1e6:,.1f} MB/s)" in verdict
    assert unkeyed(results) == []


def test_the_command_reads_a_results_file_and_writes_the_plan(tmp_path: Path) -> None:
    results, out = tmp_path / "results.json", tmp_path / "capacity.md"
    results.write_text(json.dumps(SYNTHETIC))
    text = capacity.main(["--results", str(results), "--out", str(out)])
    assert out.read_text() == text == build(SYNTHETIC)


def test_the_committed_plan_is_what_the_committed_results_give() -> None:
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    assert unkeyed(results) == []
    assert (ROOT / "docs" / "capacity.md").read_text() == build(results), (
        "docs/capacity.md is stale: run `.venv/bin/python -m bench.capacity`"
    )
