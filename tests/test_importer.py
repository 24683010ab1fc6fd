"""History import (``churnwatch import-table``): the mapping language, tables to events.

Pure: no broker, no database. Small tables are written to ``tmp_path``; the
shipped mappings are run over the first rows of the public tables in
``../shared/data`` when it is present.
"""

from __future__ import annotations

import csv
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from typer.testing import CliRunner

from churnwatch.cli import app as cli
from churnwatch.importer import (
    MAPPINGS_DIR,
    ImportResult,
    MappingError,
    check_columns,
    import_table,
    load_mapping,
    parse_mapping,
    parse_offset,
    post_events,
)
from shared.events import derive_id, parse_event

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MLC = DATA / "mlc_churn.csv"
IBM = DATA / "ibm_telco_customer_churn.csv"

HEAD = """\
version: 1
table: t
subscriber_id: {column: id}
timeline: {as_of: 2026-07-01, months: 2}
"""


def table(tmp_path: Path, text: str, name: str = "table.csv") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


def run(tmp_path: Path, csv_text: str, mapping_text: str, **kwargs: Any) -> ImportResult:
    """Import a small table; every event must be valid and the file sorted by time.

    And no row is dropped silently: each is imported or rejected with a reason.
    """
    loaded = parse_mapping(textwrap.dedent(mapping_text), source="m.yaml")
    result = import_table(table(tmp_path, csv_text), loaded, **kwargs)
    assert result.rows_read == result.rows_imported + len(result.rejections)
    assert all(r.kind != "other" for r in result.rejections)
    times = []
    for event in result.dicts():
        parse_event(event, check_clock=False)
        times.append(event["occurred_at"])
    assert times == sorted(times)
    return result


def profile(tmp_path: Path, fields: str, csv_text: str) -> list[dict[str, Any] | str]:
    """The subscriber payload of each row, or the reason the row was rejected."""
    text = (
        HEAD
        + "events:\n  - type: subscriber\n    fields:\n"
        + textwrap.indent(textwrap.dedent(fields), "      ")
    )
    result = run(tmp_path, csv_text, text)
    out: dict[int, dict[str, Any] | str] = {r.row: r.reason for r in result.rejections}
    for event in result.dicts():
        out[int(event["subscriber_id"].removeprefix("S"))] = event["payload"]
    return [out[k] for k in sorted(out)]


def bad(text: str, columns: list[str] | None = None) -> str:
    """The error of a mapping that must be refused (its columns checked against ``columns``)."""

    def load() -> None:
        loaded = parse_mapping(textwrap.dedent(text), source="bad.yaml")
        if columns is not None:
            check_columns(loaded.mapping, loaded.lines, columns, source="bad.yaml")

    with pytest.raises(MappingError) as err:
        load()
    return str(err.value)


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line containing ``needle``."""
    lines = textwrap.dedent(text).splitlines()
    return next(i for i, line in enumerate(lines, 1) if needle in line)


# --- derivations --------------------------------------------------------------------------


def test_column_and_constant(tmp_path: Path) -> None:
    rows = profile(
        tmp_path,
        """\
        monthly_value: charge
        plan_id: {column: plan}
        language: {constant: es}
        marketing_opt_out: true
        """,
        "id,charge,plan\nS1,12.50,P-7\n",
    )
    assert rows == [
        {"monthly_value": "12.5", "plan_id": "P-7", "language": "es", "marketing_opt_out": True}
    ]


def test_a_plain_number_is_a_constant(tmp_path: Path) -> None:
    assert profile(tmp_path, "monthly_value: 7\n", "id\nS1\n") == [{"monthly_value": "7"}]


def test_yes_no_standard_and_configured(tmp_path: Path) -> None:
    csv_text = "id,opt,flag\nS1,Yes,Y\nS2,no,N\nS3,TRUE,?\nS4,0,Y\nS5,maybe,N\n"
    rows = profile(
        tmp_path,
        """\
        marketing_opt_out: {column: opt, yes_no: true}
        name: {column: flag, yes_no: {"yes": ["y"]}}
        """,
        csv_text,
    )
    assert rows[0] == {"marketing_opt_out": True, "name": "true"}
    assert rows[1] == {"marketing_opt_out": False, "name": "false"}
    # Only `yes` configured (compared without case): everything else is false.
    assert rows[2] == {"marketing_opt_out": True, "name": "false"}
    assert rows[3] == {"marketing_opt_out": False, "name": "true"}
    assert isinstance(rows[4], str)
    assert "subscriber.marketing_opt_out: 'maybe' is neither yes" in rows[4]


def test_map_unmapped_and_values_not_in_the_map(tmp_path: Path) -> None:
    csv_text = "id,contract\nS1,Two year\nS2,Month-to-month\nS3,Weekly\n"
    strict = profile(
        tmp_path,
        "tier: {column: contract, map: {Two year: gold, Month-to-month: standard}}\n",
        csv_text,
    )
    assert strict[:2] == [{"tier": "gold"}, {"tier": "standard"}]
    assert "subscriber.tier: 'Weekly' is not in the map" in str(strict[2])
    lenient = profile(
        tmp_path, "tier: {column: contract, map: {Two year: gold}, unmapped: silver}\n", csv_text
    )
    assert lenient == [{"tier": "gold"}, {"tier": "silver"}, {"tier": "silver"}]


def test_map_to_null_is_blank_and_takes_the_default(tmp_path: Path) -> None:
    rows = profile(
        tmp_path,
        "tier: {column: c, map: {a: gold, b: null}, default: {constant: standard}}\n",
        "id,c\nS1,a\nS2,b\n",
    )
    assert rows == [{"tier": "gold"}, {"tier": "standard"}]


def test_multiply_scale_divide_and_round(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
events:
  - type: cdr
    periods: last
    fields:
      service: {constant: voice}
      direction: {constant: outgoing}
      count: calls
      duration_s: {column: minutes, multiply: 60}
      charge: {column: cents, divide: 100}
  - type: subscriber
    fields:
      monthly_value: {column: total, divide: tenure, round: 2}
      plan_id: {column: minutes, scale: 2}
"""
    )
    result = run(tmp_path, "id,calls,minutes,cents,total,tenure\nS1,3,2.5,250,100,3\n", text)
    by_type = {e["event_type"]: e["payload"] for e in result.dicts()}
    assert by_type["cdr"] == {
        "service": "voice",
        "direction": "outgoing",
        "count": 3,
        "duration_s": 150.0,
        "charge": "2.5",
    }
    assert by_type["subscriber"] == {"monthly_value": "33.33", "plan_id": "5"}


def test_division_by_zero_is_blank(tmp_path: Path) -> None:
    rows = profile(
        tmp_path,
        "monthly_value: {column: total, divide: tenure, default: fallback}\n",
        "id,total,tenure,fallback\nS1,90,3,1\nS2,0,0,29.85\n",
    )
    assert rows == [{"monthly_value": "30"}, {"monthly_value": "29.85"}]
    rejected = profile(
        tmp_path, "monthly_value: {column: total, divide: tenure}\n", "id,total,tenure\nS1,1,0\n"
    )
    assert "division by zero and there is no default" in str(rejected[0])


def test_previous_from_pct_change(tmp_path: Path) -> None:
    rows = profile(
        tmp_path,
        """\
        monthly_value:
          previous_from_pct_change: {current: bill, pct_change: change}
          round: 2
          default: bill
        plan_id:
          previous_from_pct_change: {current: bill, pct_change: {column: frac}, unit: fraction}
          round: 0
        """,
        "id,bill,change,frac\nS1,110,10,0.1\nS2,50,-100,1\n",
    )
    assert rows[0] == {"monthly_value": "100", "plan_id": "100"}
    # -100% leaves no previous value: blank, so the default.
    assert rows[1] == {"monthly_value": "50", "plan_id": "25"}


def test_previous_month_bill_from_pct_change(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
events:
  - type: billing
    periods: last
    fields:
      period: {timeline: period}
      amount_due: bill
      plan_id: {constant: p}
  - type: billing
    periods: earlier
    fields:
      period: {timeline: period}
      amount_due: {previous_from_pct_change: {current: bill, pct_change: change}}
      plan_id: {constant: p}
"""
    )
    result = run(tmp_path, "id,bill,change\nS1,60,20\n", text)
    bills = {e["payload"]["period"]: e["payload"]["amount_due"] for e in result.dicts()}
    assert bills == {"2026-05": "50", "2026-06": "60"}


def test_sum_of_columns_and_derivations(tmp_path: Path) -> None:
    rows = profile(
        tmp_path,
        """\
        monthly_value:
          sum: [a, b, {column: c, map: {x: 5}, unmapped: 0}, 0.5]
        """,
        "id,a,b,c\nS1,1.25,2,x\nS2,1,1,y\nS3,1,,x\nS4,1,abc,x\n",
    )
    assert rows[:2] == [{"monthly_value": "8.75"}, {"monthly_value": "2.5"}]
    assert "column 'b' is blank and there is no default" in str(rows[2])
    assert "'abc' is not a number" in str(rows[3])


def test_defaults_for_blanks_null_leaves_the_field_out(tmp_path: Path) -> None:
    rows = profile(
        tmp_path,
        """\
        monthly_value: {column: total, default: monthly}
        plan_id: {column: plan, default: null}
        language: {column: lang, default: {constant: en}}
        """,
        "id,total,monthly,plan,lang\nS1, ,29.85,,\nS2,10,1,P,es\n",
    )
    assert rows == [
        {"monthly_value": "29.85", "language": "en"},
        {"monthly_value": "10", "plan_id": "P", "language": "es"},
    ]


def test_blank_values_of_the_input(tmp_path: Path) -> None:
    text = (
        HEAD.replace("table: t\n", "table: t\ninput: {blank_values: [NA, '-']}\n")
        + """\
events:
  - type: subscriber
    fields:
      monthly_value: {column: v, default: 0}
"""
    )
    result = run(tmp_path, "id,v\nS1,NA\nS2,-\nS3,4\n", text)
    assert [e["payload"]["monthly_value"] for e in result.dicts()] == ["0", "0", "4"]


def test_a_blank_without_default_rejects_the_row_and_the_others_go_on(tmp_path: Path) -> None:
    csv_text = "id,total\nS1,5\nS2,\nS3,7\n"
    result = run(
        tmp_path,
        csv_text,
        HEAD + "events:\n  - type: subscriber\n    fields: {monthly_value: total}\n",
    )
    assert result.rows_read == 3
    assert [str(r) for r in result.rejections] == [
        "row 2 (line 3): subscriber.monthly_value: column 'total' is blank and there is no default"
    ]
    assert sorted(result.subscribers) == ["S1", "S3"]


def test_bands(tmp_path: Path) -> None:
    rows = profile(
        tmp_path,
        "tier: {column: v, bands: {0: standard, 70: silver, 90.5: gold}}\n",
        "id,v\nS1,10\nS2,70\nS3,95\nS4,-1\n",
    )
    assert rows[:3] == [{"tier": "standard"}, {"tier": "silver"}, {"tier": "gold"}]
    assert "below the lowest band" in str(rows[3])


def test_timeline_values_activation_and_periods(tmp_path: Path) -> None:
    text = """\
version: 1
table: t
subscriber_id: {column: id}
timeline: {as_of: 2026-07-01, months: 3, tenure: tenure, tenure_unit: months}
events:
  - type: subscriber
    fields:
      activated_at: {timeline: activation}
  - type: billing
    fields:
      period: {timeline: period}
      amount_due: 1
      plan_id: {constant: p}
      due_date: {timeline: period_end}
"""
    result = run(tmp_path, "id,tenure\nS1,12\nS2,1.5\nS3,0\n", text)
    events = list(result.dicts())
    activated = {
        e["subscriber_id"]: e["payload"]["activated_at"]
        for e in events
        if e["event_type"] == "subscriber"
    }
    assert activated == {
        "S1": "2025-07-01T00:00:00Z",
        "S2": "2026-05-16T18:45:27Z",  # a month and half a mean month (15.2 days) before
        "S3": "2026-07-01T00:00:00Z",
    }
    bills = [
        (e["subscriber_id"], e["payload"]["period"], e["occurred_at"])
        for e in events
        if e["event_type"] == "billing"
    ]
    # before_activation: drop (the default): no bill for a month before activation.
    assert ("S1", "2026-04", "2026-04-30T00:00:00Z") in bills
    assert [b[1] for b in bills if b[0] == "S2"] == ["2026-05", "2026-06"]
    assert [b for b in bills if b[0] == "S3"] == []
    starts = {
        e["subscriber_id"]: e["occurred_at"] for e in events if e["event_type"] == "subscriber"
    }
    assert starts == {
        "S1": "2026-04-01T00:00:00Z",  # the window's start
        "S2": "2026-05-16T18:45:27Z",  # activated inside the window: from activation
        "S3": "2026-07-01T00:00:00Z",
    }
    due = [e["payload"]["due_date"] for e in events if e["event_type"] == "billing"]
    assert "2026-05-01T00:00:00Z" in due


def test_before_activation_keep_gives_everyone_the_whole_window(tmp_path: Path) -> None:
    text = """\
version: 1
table: t
subscriber_id: {column: id}
timeline: {as_of: 2026-07-01, months: 2, tenure: days, tenure_unit: days, before_activation: keep}
events:
  - type: subscriber
    fields: {activated_at: {timeline: activation}}
  - type: billing
    fields: {period: {timeline: period}, amount_due: 1, plan_id: {constant: p}}
"""
    result = run(tmp_path, "id,days\nS1,3\n", text)
    events = list(result.dicts())
    assert events[0]["occurred_at"] == "2026-05-01T00:00:00Z"
    assert events[0]["payload"]["activated_at"] == "2026-06-28T00:00:00Z"
    assert [e["payload"]["period"] for e in events[1:]] == ["2026-05", "2026-06"]


def test_when_repeat_split_at_and_offset(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
events:
  - type: cdr
    split: 4
    when: {column: phone, yes_no: true}
    fields:
      service: {constant: voice}
      direction: {constant: outgoing}
      count: calls
      duration_s: {column: minutes, multiply: 60}
  - type: complaint
    periods: last
    repeat: complaints
    fields: {category: {constant: network}}
  - type: churn
    when: churned
    at: as_of
    offset: -2h
    fields: {kind: {constant: cancellation}}
"""
    )
    result = run(
        tmp_path,
        "id,phone,calls,minutes,complaints,churned\n"
        "S1,yes,10,20,2,1\nS2,no,5,5,0,0\nS3,yes,2,1,0,0\n",
        text,
    )
    by_sub: dict[str, Counter[str]] = {}
    for e in result.dicts():
        by_sub.setdefault(e["subscriber_id"], Counter())[e["event_type"]] += 1
    assert by_sub["S1"] == Counter({"cdr": 8, "complaint": 2, "churn": 1})
    assert "S2" not in by_sub  # no phone, no complaints, no churn: nothing at all
    assert by_sub["S3"] == Counter({"cdr": 4})  # 2 calls a month: 2 records, not 4
    s1 = [e for e in result.dicts() if e["subscriber_id"] == "S1"]
    june = [e["payload"] for e in s1 if e["event_type"] == "cdr" and e["occurred_at"] >= "2026-06"]
    assert [p["count"] for p in june] == [3, 3, 2, 2]
    assert sum(p["duration_s"] for p in june) == pytest.approx(1200)
    complaints = [e["occurred_at"] for e in s1 if e["event_type"] == "complaint"]
    assert complaints == ["2026-06-08T12:00:00Z", "2026-06-23T12:00:00Z"]  # spread over June
    assert result.churned == {"S1": ("2026-06-30T22:00:00Z", "cancellation")}


def test_offsets() -> None:
    assert parse_offset("-1d").total_seconds() == -86_400
    assert parse_offset("+12h").total_seconds() == 43_200
    assert parse_offset(90).total_seconds() == 90
    with pytest.raises(ValueError, match="not an offset"):
        parse_offset("soon")


# --- layouts, ids, rejections -------------------------------------------------------------


def test_per_period_table(tmp_path: Path) -> None:
    text = """\
version: 1
table: monthly
input:
  layout: per_period
  period: {column: month, format: "%Y%m"}
subscriber_id: {column: msisdn_hash, prefix: "OP-"}
events:
  - type: subscriber
    fields: {monthly_value: charge}
  - type: billing
    fields:
      period: {timeline: period}
      amount_due: charge
      plan_id: plan
  - type: complaint
    periods: [0]
    repeat: complaints
  - type: churn
    when: {column: churned, yes_no: true}
    fields: {kind: {constant: port_out}}
"""
    csv_text = """\
    msisdn_hash,month,charge,plan,complaints,churned
    a1,202604,30,P1,0,no
    b2,202604,50,P2,0,no
    a1,202605,32,P1,1,no
    a1,202606,12,P0,2,yes
    b2,202605,55,P2,0,no
    b2,202605,99,P2,0,no
    c3,2026-06,1,P,0,no
    """
    result = run(tmp_path, csv_text, text)
    assert [str(r) for r in result.rejections] == [
        "row 6 (line 7): OP-b2 has period 2026-05 twice (row 5)",
        "row 7 (line 8): period '2026-06' does not match the format '%Y%m'",
    ]
    events = list(result.dicts())
    a1 = [
        (e["event_type"], e["occurred_at"], e["payload"])
        for e in events
        if e["subscriber_id"] == "OP-a1"
    ]
    # The profile once (from the latest row) at the window start; a bill per row;
    # complaints of the latest row only; the churn at as_of (the end of the last period).
    assert a1[0] == ("subscriber", "2026-04-01T00:00:00Z", {"monthly_value": "12"})
    bills = [(p["period"], p["amount_due"], p["plan_id"]) for t, _, p in a1 if t == "billing"]
    assert bills == [("2026-04", "30", "P1"), ("2026-05", "32", "P1"), ("2026-06", "12", "P0")]
    assert [at for t, at, _ in a1 if t == "complaint"] == [
        "2026-06-08T12:00:00Z",
        "2026-06-23T12:00:00Z",
    ]
    assert a1[-1][:2] == ("churn", "2026-07-01T00:00:00Z")
    assert result.churned == {"OP-a1": ("2026-07-01T00:00:00Z", "port_out")}
    b2_bills = [
        e["payload"]["period"]
        for e in events
        if e["subscriber_id"] == "OP-b2" and e["event_type"] == "billing"
    ]
    assert b2_bills == ["2026-04", "2026-05"]


def test_generated_ids_and_deterministic_event_ids(tmp_path: Path) -> None:
    text = """\
version: 1
table: gen
subscriber_id: {prefix: G-, width: 3}
timeline: {as_of: 2026-07-01}
events:
  - type: subscriber
    fields: {monthly_value: v}
  - type: billing
    fields: {period: {timeline: period}, amount_due: v, plan_id: {constant: p}}
"""
    first = run(tmp_path, "v\n1\n2\n", text)
    again = run(tmp_path, "v\n1\n2\n", text)
    assert first.events == again.events  # byte for byte: same ids, same order
    events = list(first.dicts())
    assert {e["subscriber_id"] for e in events} == {"G-001", "G-002"}
    ids = [e["event_id"] for e in events]
    assert len(set(ids)) == len(ids) == 8
    row2 = [e for e in events if e["subscriber_id"] == "G-002"]
    assert row2[0]["event_type"] == "subscriber"
    assert row2[0]["event_id"] == str(derive_id("gen", 2, 0))
    # Another table name gives other ids.
    other = run(tmp_path, "v\n1\n2\n", text.replace("table: gen", "table: gen2"))
    assert not {e["event_id"] for e in other.dicts()} & set(ids)


def test_rows_that_cannot_be_mapped_are_reported(tmp_path: Path) -> None:
    text = HEAD + "events:\n  - type: subscriber\n    fields: {monthly_value: v}\n"
    csv_text = 'id,v\nS1,1\nS1,2\n"bad id",3\nS4,-5\nS5\nS6,6\n'
    result = run(tmp_path, csv_text, text)
    assert [(r.row, r.reason) for r in result.rejections] == [
        (2, "subscriber S1 is already on row 1"),
        (3, "'bad id' is not a subscriber id (1-64 letters, digits and ._:-)"),
        (4, "subscriber event: payload.monthly_value: Input should be greater than or equal to 0"),
        (5, "the row does not have the header's 2 fields"),
    ]
    assert result.rows_read == 6
    assert sorted(result.subscribers) == ["S1", "S6"]


def test_limit_and_as_of_override(tmp_path: Path) -> None:
    from datetime import datetime

    text = HEAD + "events:\n  - type: churn\n    fields: {kind: {constant: port_out}}\n"
    result = run(tmp_path, "id\nS1\nS2\nS3\n", text, limit=2, as_of=datetime(2026, 3, 1))
    assert result.rows_read == 2
    assert [e["occurred_at"] for e in result.dicts()] == ["2026-03-01T00:00:00Z"] * 2


def test_headerless_tables_with_another_delimiter(tmp_path: Path) -> None:
    text = (
        HEAD.replace(
            "table: t\n", "table: t\ninput: {header: false, columns: [id, v], delimiter: ';'}\n"
        )
        + "events:\n  - type: subscriber\n    fields: {monthly_value: v}\n"
    )
    result = run(tmp_path, "S1;1,5\nS2;2\n", text.replace("monthly_value: v", "plan_id: v"))
    assert [e["payload"]["plan_id"] for e in result.dicts()] == ["1,5", "2"]


# --- bad mappings: refused before any row is read, naming the line -------------------------

GOOD = """\
version: 1
table: t
subscriber_id: {column: id}
timeline:
  as_of: 2026-07-01
  months: 2
events:
  - type: billing
    fields:
      period: {timeline: period}
      amount_due: {column: total, divide: 2}
      plan_id: {constant: p}
  - type: subscriber
    fields:
      tier: {column: contract, map: {Two year: gold}, unmapped: standard}
"""


@pytest.mark.parametrize(
    ("old", "new", "needle", "expected"),
    [
        # unknown derivation
        (
            "{column: total, divide: 2}",
            "{column: total, divid: 2}",
            "divid",
            "events.0.fields.amount_due.divid: Extra inputs are not permitted",
        ),
        # unknown event type
        (
            "  - type: subscriber",
            "  - type: profile",
            "type: profile",
            "events.1.type: Input should be",
        ),
        # unknown payload field
        ("      tier:", "      teir:", "teir", "subscriber has no field 'teir'"),
        # missing required key (in the mapping, and a field the contract needs)
        # (a missing field names the line where the fields begin)
        (
            "      plan_id: {constant: p}\n",
            "",
            "period: {timeline: period}",
            "events.0.fields: billing needs plan_id",
        ),
        ("table: t\n", "", "version", "table: Field required"),
        # wrong types
        (
            "  months: 2",
            "  months: two",
            "months",
            "timeline.months: Input should be a valid integer",
        ),
        (
            "  - type: billing\n",
            "  - type: billing\n    split: 2\n",
            "split",
            "split is for cdr records",
        ),
        # two sources, and transforms that do not go together
        (
            "{column: total, divide: 2}",
            "{column: total, constant: 3}",
            "amount_due",
            "give exactly one source",
        ),
        (
            "{column: total, divide: 2}",
            "{column: total, yes_no: true, divide: 2}",
            "amount_due",
            "yes_no gives true/false; it cannot be combined with divide",
        ),
        # a value the contract refuses, found in the mapping itself
        ("Two year: gold}", "Two year: gld}", "gld", "'gld' is not a valid subscriber tier"),
        (
            "plan_id: {constant: p}",
            "plan_id: {constant: ''}",
            "plan_id",
            "not a valid billing plan_id",
        ),
        # timeline use that cannot work
        (
            "      tier:",
            "      activated_at: {timeline: activation}\n      tier:",
            "activation",
            "timeline: activation needs timeline.tenure",
        ),
        (
            "      tier:",
            "      plan_id: {timeline: period}\n      tier:",
            "plan_id: {timeline: period}",
            "timeline: period needs a period",
        ),
        (
            "  months: 2",
            "  months: 2\n  tenure_unit: weeks",
            "weeks",
            "tenure_unit: Input should be",
        ),
        ("as_of: 2026-07-01", "as_of: soon", "as_of", "timeline.as_of"),
        (
            "  - type: billing\n",
            "  - type: billing\n    offset: later\n",
            "offset",
            "not an offset",
        ),
        (
            "  - type: billing\n",
            "  - type: billing\n    periods: [5]\n",
            "periods",
            "outside the 2 months",
        ),
    ],
)
def test_a_bad_mapping_names_the_line(old: str, new: str, needle: str, expected: str) -> None:
    assert old in GOOD
    text = GOOD.replace(old, new, 1)
    message = bad(text)
    line = line_of(text, needle)
    assert f"bad.yaml:{line}: " in message, message
    assert expected in message, message


def test_unknown_columns_name_their_line() -> None:
    text = GOOD.replace("{column: contract,", "{column: contrat,").replace(
        "divide: 2}", "divide: months}"
    )
    message = bad(text, columns=["id", "total", "contract"])
    lines = message.splitlines()
    assert lines[0].startswith(f"bad.yaml:{line_of(text, 'divide: months')}: ")
    assert "events.0.fields.amount_due.divide: no column 'months'" in lines[0]
    assert lines[1].startswith(f"bad.yaml:{line_of(text, 'contrat')}: ")
    assert "no column 'contrat' (the table has: id, total, contract" in lines[1]


def test_a_text_constant_needs_constant() -> None:
    # A plain string is a column: a forgotten `constant:` is caught, not silently used.
    message = bad(
        GOOD.replace("plan_id: {constant: p}", "plan_id: p"), columns=["id", "total", "contract"]
    )
    assert "events.0.fields.plan_id: no column 'p'" in message
    assert "for a text constant write {constant: ...}" in message


def test_broken_yaml_and_not_a_mapping() -> None:
    assert "bad.yaml:3: not valid YAML" in bad("version: 1\nevents: [\n")
    assert "bad.yaml:1: a mapping file is a YAML mapping" in bad("- a list\n")


def test_yes_and_no_are_strings_not_booleans(tmp_path: Path) -> None:
    # YAML 1.2 booleans (shared.yamlconf): `yes:` and `no:` keys stay text.
    rows = profile(
        tmp_path, "tier: {column: vip, map: {yes: gold, no: standard}}\n", "id,vip\nS1,yes\nS2,no\n"
    )
    assert rows == [{"tier": "gold"}, {"tier": "standard"}]


def test_a_mapping_file_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(MappingError, match="cannot read the mapping"):
        load_mapping(tmp_path / "missing.yaml")


# --- the shipped mappings on the public tables ---------------------------------------------


def _first_rows(source: Path, tmp_path: Path, n: int) -> Path:
    if not source.is_file():
        pytest.skip(f"../shared/data not present: {source} is missing")
    with source.open(encoding="utf-8", newline="") as handle:
        head = [next(handle) for _ in range(n + 1)]
    path = tmp_path / source.name
    path.write_text("".join(head), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("source", "mapping", "prefix"),
    [(MLC, "mlc_churn", "MLC-"), (IBM, "ibm_telco", "IBM-")],
)
def test_the_shipped_mappings_convert_their_tables(
    tmp_path: Path, source: Path, mapping: str, prefix: str
) -> None:
    path = _first_rows(source, tmp_path, 200)
    loaded = load_mapping(mapping)
    assert loaded.source == str(MAPPINGS_DIR / f"{mapping}.yaml")
    result = import_table(path, loaded)
    assert result.rows_read == 200
    assert result.rejections == []
    assert len(result.subscribers) == 200
    counts = Counter(e["event_type"] for e in result.dicts())
    assert counts["subscriber"] == 200
    assert counts["billing"] == 200  # one month each (timeline.months: 1)
    assert counts["cdr"] > 1000
    with source.open(encoding="utf-8", newline="") as handle:
        labels = [row.get("churn") or row.get("Churn") for row in csv.DictReader(handle)][:200]
    assert counts["churn"] == sum(1 for label in labels if label in ("yes", "Yes")) > 0
    times = []
    for event in result.dicts():
        parse_event(event, check_clock=False)
        assert event["subscriber_id"].startswith(prefix)
        times.append(event["occurred_at"])
    assert times == sorted(times)
    assert all(e["occurred_at"] <= "2026-07-01T00:00:00Z" for e in result.dicts())


def test_ibm_blank_total_charges_fall_back_to_the_monthly_charge(tmp_path: Path) -> None:
    if not IBM.is_file():
        pytest.skip(f"../shared/data not present: {IBM} is missing")
    with IBM.open(encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        blank = next(row for row in reader if not row[header.index("TotalCharges")].strip())
    path = tmp_path / "blank.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle).writerows([header, blank])
    result = import_table(path, load_mapping("ibm_telco"))
    assert result.rejections == []
    monthly = blank[header.index("MonthlyCharges")]
    amounts = {e["payload"]["amount_due"] for e in result.dicts() if e["event_type"] == "billing"}
    assert amounts == {monthly}


def test_the_mappings_in_the_docs_are_valid(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "import.md").read_text()
    blocks = [b for b in doc.split("```yaml\n")[1:] if b.startswith("version: 1")]
    assert len(blocks) == 2, "docs/import.md shows two complete mappings"
    per_subscriber = parse_mapping(blocks[0].split("```")[0], source="docs/import.md")
    per_period = parse_mapping(blocks[1].split("```")[0], source="docs/import.md")
    columns = "msisdn,tenure_months,plan,charge,charge_change_pct,minutes,calls,complaints,left"
    first = import_table(
        table(tmp_path, f"{columns}\n4670001,14,P1,95.5,10,300,120,2,yes\n", "a.csv"),
        per_subscriber,
    )
    assert first.rejections == []
    assert Counter(e["event_type"] for e in first.dicts()) == {
        "subscriber": 1,
        "billing": 2,
        "cdr": 8,
        "complaint": 2,
        "churn": 1,
    }
    second = import_table(
        table(
            tmp_path,
            "msisdn_hash,month,charge,plan,complaints,churned\nx,202605,9,P,1,no\n",
            "b.csv",
        ),
        per_period,
    )
    assert second.rejections == []
    assert len(second.events) == 3


# --- the command line ----------------------------------------------------------------------


def test_the_cli_writes_events_and_truth(tmp_path: Path) -> None:
    csv_path = table(tmp_path, "id,v,left\nS1,1,yes\nS2,-1,no\nS3,3,no\n")
    mapping = tmp_path / "m.yaml"
    mapping.write_text(
        HEAD
        + "events:\n  - type: subscriber\n    fields: {monthly_value: v}\n"
        + "  - type: churn\n    when: {column: left, yes_no: true}\n"
        + "    fields: {kind: {constant: port_out}}\n"
    )
    out, truth = tmp_path / "events.ndjson", tmp_path / "truth.csv"
    runner = CliRunner()
    done = runner.invoke(
        cli,
        [
            "import-table",
            str(csv_path),
            "--mapping",
            str(mapping),
            "--out",
            str(out),
            "--truth",
            str(truth),
        ],
    )
    assert done.exit_code == 0, done.output
    assert "row 2 (line 3): subscriber event: payload.monthly_value" in done.output
    assert "3 rows read, 1 rejected, 2 subscribers (1 churned), 3 events written" in done.output
    lines = out.read_bytes().splitlines()
    assert [orjson.loads(line)["event_type"] for line in lines] == [
        "subscriber",
        "subscriber",
        "churn",
    ]
    assert truth.read_text().splitlines() == [
        "subscriber_id,churned,churn_at,kind",
        "S1,1,2026-07-01T00:00:00Z,port_out",
        "S3,0,,",
    ]
    # Without --out, the events go to stdout (to pipe them on).
    piped = runner.invoke(
        cli, ["import-table", str(csv_path), "--mapping", str(mapping), "--limit", "1"]
    )
    assert piped.exit_code == 0
    assert orjson.loads(piped.stdout.splitlines()[0])["subscriber_id"] == "S1"


def test_the_cli_refuses_a_bad_mapping_naming_the_line(tmp_path: Path) -> None:
    csv_path = table(tmp_path, "id,v\nS1,1\n")
    mapping = tmp_path / "m.yaml"
    mapping.write_text(HEAD + "events:\n  - type: subscriber\n    fields: {monthly_value: w}\n")
    done = CliRunner().invoke(cli, ["import-table", str(csv_path), "--mapping", str(mapping)])
    assert done.exit_code == 2
    assert f"{mapping}:7: events.0.fields.monthly_value: no column 'w'" in done.output
    late = CliRunner().invoke(
        cli, ["import-table", str(csv_path), "--mapping", str(mapping), "--as-of", "soon"]
    )
    assert late.exit_code == 2


def test_posting_in_batches_retries_a_503() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/events"
        assert request.headers["content-type"] == "application/x-ndjson"
        lines = request.content.splitlines()
        calls.append(len(lines))
        if len(calls) == 2:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={})
        return httpx.Response(202, json={"accepted": len(lines), "rejected": []})

    client = httpx.Client(transport=httpx.MockTransport(handler))
    lines = [orjson.dumps({"n": i}) for i in range(5)]
    assert post_events(lines, "http://ingest:8081", batch_size=2, client=client) == (5, 0)
    assert calls == [2, 2, 2, 1]  # the second batch was sent again after the 503
