"""The mapping language fixes of issue 16: clamp/min/max, blanks, counts, v2 fields, reasons.

Pure, like tests/test_importer.py (whose helpers these use): small tables in
``tmp_path``, every event validated against the contract, and every row read
either imported or rejected with a reason class.
"""

from __future__ import annotations

import io
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from rich.console import Console
from typer.testing import CliRunner

from churnwatch.cli import app as cli
from churnwatch.importer import ImportResult, run
from churnwatch.importer.convert import _apportion, _split_cdr
from tests.test_importer import HEAD, bad, line_of, profile, table
from tests.test_importer import run as run_import

CDR = """\
events:
  - type: cdr
    periods: last
    fields:
      service: {constant: voice}
      direction: {constant: outgoing}
"""


def events_of(result: ImportResult, event_type: str) -> list[dict[str, Any]]:
    """The events of one type, in time order."""
    return [e for e in result.dicts() if e["event_type"] == event_type]


# --- clamp, min and max -------------------------------------------------------------------


def test_max_and_clamp_keep_a_row_whose_value_goes_negative(tmp_path: Path) -> None:
    # "Revenue minus change" below 0 used to reject the row (money is >= 0).
    rows = profile(
        tmp_path,
        """\
        monthly_value: {max: [0, {sum: [rev, {column: chg, multiply: -1}]}]}
        recurring_charge:
          sum: [rev, {column: chg, multiply: -1}]
          clamp: {low: 0}
        """,
        "id,rev,chg\nS1,30,5\nS2,10,25.5\n",
    )
    assert rows == [
        {"monthly_value": "25", "recurring_charge": "25"},
        {"monthly_value": "0", "recurring_charge": "0"},
    ]
    # Without them the same row is rejected, naming the field and the contract's rule.
    refused = profile(
        tmp_path,
        "monthly_value: {sum: [rev, {column: chg, multiply: -1}]}\n",
        "id,rev,chg\nS1,10,25.5\n",
    )
    assert "payload.monthly_value: Input should be greater than or equal to 0" in str(refused[0])


def test_min_max_and_both_clamp_bounds(tmp_path: Path) -> None:
    rows = profile(
        tmp_path,
        """\
        monthly_value: {min: [a, b, 50]}
        plan_id: {max: [a, {column: b, multiply: 2}]}
        lines: {column: a, clamp: {low: 1, high: 4}}
        """,
        "id,a,b\nS1,7,3\nS2,70,90\nS3,0.2,1\n",
    )
    assert rows == [
        {"monthly_value": "3", "plan_id": "7", "lines": 4},
        {"monthly_value": "50", "plan_id": "180", "lines": 4},
        {"monthly_value": "0.2", "plan_id": "2", "lines": 1},
    ]


def test_clamp_comes_before_round_and_bands(tmp_path: Path) -> None:
    rows = profile(
        tmp_path,
        """\
        tier: {column: v, clamp: {low: 0, high: 100}, bands: {0: standard, 90: gold}}
        monthly_value: {column: w, clamp: {high: 9.996}, round: 2}
        """,
        "id,v,w\nS1,-4,12\nS2,250,1.234\nS3,50,9.9\n",
    )
    # -4 would be below the lowest band (blank, so rejected): clamped to 0 it is standard.
    # 12 is clamped to 9.996, then rounded (rounding first would leave 9.996).
    assert rows == [
        {"tier": "standard", "monthly_value": "10"},
        {"tier": "gold", "monthly_value": "1.23"},
        {"tier": "standard", "monthly_value": "9.9"},
    ]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("{column: v, clamp: {}}", "clamp needs low, high or both"),
        ("{column: v, clamp: {low: 5, high: 1}}", "clamp's low (5) is above its high (1)"),
        ("{column: v, clamp: {lo: 0}}", "clamp.lo: Extra inputs are not permitted"),
        ("{min: []}", "List should have at least 1 item"),
        ("{max: [a], column: v}", "give exactly one source"),
        ("{column: v, yes_no: true, clamp: {low: 0}}", "cannot be combined with clamp"),
    ],
)
def test_bad_clamp_min_max_name_their_line(field: str, expected: str) -> None:
    text = (
        HEAD
        + "events:\n  - type: subscriber\n    fields:\n      plan_id: {constant: p}\n"
        + f"      monthly_value: {field}\n"
    )
    message = bad(text)
    assert f"bad.yaml:{line_of(text, 'monthly_value')}: " in message, message
    assert expected in message, message


def test_min_max_operands_are_checked_against_the_header() -> None:
    text = (
        HEAD
        + "events:\n  - type: subscriber\n    fields:\n      monthly_value: {max: [0, revenu]}\n"
    )
    message = bad(text, columns=["id", "revenue"])
    line = line_of(text, "revenu")
    assert f"bad.yaml:{line}: events.0.fields.monthly_value.max.1: no column 'revenu'" in message


# --- blanks: operands take the documented defaults -----------------------------------------


def test_a_blank_operand_makes_the_value_blank_so_the_outer_default_applies(
    tmp_path: Path,
) -> None:
    csv_text = "id,a,b,fallback\nS1,1,2,9\nS2,1,,9\nS3,1,NA,9\n"
    rows = profile(
        tmp_path,
        """\
        monthly_value: {sum: [a, b], default: fallback}
        recurring_charge: {column: a, divide: b, default: 0}
        lines: {max: [a, b], default: {constant: 1}}
        """,
        csv_text,
    )
    assert rows[0] == {"monthly_value": "3", "recurring_charge": "0.5", "lines": 2}
    assert rows[1] == {"monthly_value": "9", "recurring_charge": "0", "lines": 1}
    # NA is not blank unless the input says so: a text where a number is needed.
    assert "'NA' is not a number" in str(rows[2])


def test_an_operands_own_default_comes_first(tmp_path: Path) -> None:
    rows = profile(
        tmp_path,
        "monthly_value: {sum: [a, {column: b, default: 0}], default: 100}\n",
        "id,a,b\nS1,1,\nS2,,5\n",
    )
    # S1: b's own default (0). S2: a has none, so the sum is blank and the outer default applies.
    assert rows == [{"monthly_value": "1"}, {"monthly_value": "100"}]


def test_a_blank_operand_without_any_default_rejects_naming_the_column(tmp_path: Path) -> None:
    result = run_import(
        tmp_path,
        "id,a,b\nS1,1,\nS2,1,2\n",
        HEAD + "events:\n  - type: subscriber\n    fields: {monthly_value: {sum: [a, b]}}\n",
    )
    assert [(r.row, r.reason, r.kind) for r in result.rejections] == [
        (
            1,
            "subscriber.monthly_value: column 'b' is blank and there is no default",
            "blank:b",
        )
    ]
    # An operand's `default: null` is blank too (there is nothing to add up).
    rows = profile(
        tmp_path,
        "monthly_value: {sum: [a, {column: b, default: null}], default: 7}\n",
        "id,a,b\nS1,1,\n",
    )
    assert rows == [{"monthly_value": "7"}]


# --- counts: 0 makes no event, negative rejects --------------------------------------------


def test_a_count_of_zero_makes_no_record_even_when_other_fields_have_no_value(
    tmp_path: Path,
) -> None:
    # Warehouses leave an average blank when there is nothing to average: with 0 calls
    # the duration cannot be computed, which used to reject the whole row.
    text = (
        HEAD
        + CDR
        + "      count: calls\n"
        + "      duration_s: {column: avg_minutes, multiply: {column: calls, multiply: 60}}\n"
        + "  - type: subscriber\n    fields: {monthly_value: 1}\n"
    )
    result = run_import(tmp_path, "id,calls,avg_minutes\nS1,0,\nS2,4,2.5\nS3,0.4,\n", text)
    assert result.rejections == []
    assert result.rows_imported == 3
    cdrs = events_of(result, "cdr")
    assert [(e["subscriber_id"], e["payload"]["count"]) for e in cdrs] == [("S2", 4)]
    assert cdrs[0]["payload"]["duration_s"] == pytest.approx(600.0)
    # S1 and S3 (0.4 calls rounds to 0) are imported: their profiles are there.
    assert sorted(result.subscribers) == ["S1", "S2", "S3"]


def test_a_negative_count_or_repeat_rejects_the_row_with_a_clear_reason(tmp_path: Path) -> None:
    text = (
        HEAD
        + CDR
        + "      count: calls\n"
        + "  - type: complaint\n    periods: last\n    repeat: complaints\n"
    )
    result = run_import(tmp_path, "id,calls,complaints\nS1,-3,0\nS2,2,-1\nS3,0,0\nS4,1,2\n", text)
    assert [(r.row, r.reason, r.kind) for r in result.rejections] == [
        (1, "cdr.count: -3 is negative", "negative:cdr.count"),
        (2, "events.1 (complaint) repeat: -1 is negative", "negative:complaint.repeat"),
    ]
    assert Counter(e["event_type"] for e in result.dicts()) == {"cdr": 1, "complaint": 2}
    assert result.rows_imported == 2  # S3 (nothing happened) and S4


# --- distinct counterparts ------------------------------------------------------------------


def test_distinct_counterparts_from_a_column_make_version_2_records(tmp_path: Path) -> None:
    text = (
        HEAD
        + CDR
        + "      count: calls\n      distinct_counterparts: contacts\n"
        + "  - type: subscriber\n    fields: {monthly_value: 1}\n"
    )
    result = run_import(tmp_path, "id,calls,contacts\nS1,10,4\nS2,3,5\n", text)
    [cdr] = events_of(result, "cdr")
    assert cdr["schema_version"] == 2
    assert cdr["payload"] == {
        "service": "voice",
        "direction": "outgoing",
        "count": 10,
        "distinct_counterparts": 4,
    }
    # The profile uses no version 2 field: it stays version 1.
    assert {e["schema_version"] for e in events_of(result, "subscriber")} == {1}
    # More distinct parties than calls: the contract refuses it, and the reason says so.
    assert [(r.row, r.kind) for r in result.rejections] == [
        (2, "contract:cdr.distinct_counterparts")
    ]
    assert "distinct_counterparts (5) must not exceed count (3)" in result.rejections[0].reason


def test_split_shares_the_distinct_count_out_in_proportion_to_count(tmp_path: Path) -> None:
    text = (
        HEAD
        + CDR.replace("    periods: last\n", "    periods: last\n    split: 4\n")
        + "      count: calls\n      distinct_counterparts: {min: [contacts, calls]}\n"
    )
    result = run_import(tmp_path, "id,calls,contacts\nS1,10,7\nS2,3,3\nS3,9,1\nS4,2,40\n", text)
    shares: dict[str, list[tuple[int, int]]] = {}
    for e in events_of(result, "cdr"):
        p = e["payload"]
        shares.setdefault(e["subscriber_id"], []).append((p["count"], p["distinct_counterparts"]))
    assert shares == {
        "S1": [(3, 2), (3, 2), (2, 2), (2, 1)],
        "S2": [(1, 1), (1, 1), (1, 1)],
        "S3": [(3, 1), (2, 0), (2, 0), (2, 0)],
        "S4": [(1, 1), (1, 1)],  # 40 contacts in 2 calls: min(contacts, calls)
    }
    assert result.rejections == []


def test_split_distinct_shares_add_up_and_never_exceed_a_records_count() -> None:
    for count in range(1, 40):
        for distinct in range(count + 1):
            for parts in (1, 2, 3, 4, 7):
                records = _split_cdr(
                    {"service": "voice", "count": count, "distinct_counterparts": distinct}, parts
                )
                assert sum(r["count"] for r in records) == count
                assert sum(r["distinct_counterparts"] for r in records) == distinct
                assert all(0 <= r["distinct_counterparts"] <= r["count"] for r in records)
    # Largest remainder, ties to the earlier record.
    assert _apportion(5, [3, 3, 2, 2]) == [2, 1, 1, 1]
    assert _apportion(0, [3, 3]) == [0, 0]


# --- nested and version 2 fields, the contact type -----------------------------------------


def test_nested_and_dict_fields_fill_version_2_objects(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
events:
  - type: subscriber
    fields:
      monthly_value: charge
      handset.age_months: {column: handset_age, default: null}
      handset.model: handset
      handset.capabilities: {column: caps, default: null}
      plan.international: {column: international_plan, yes_no: true}
      attributes.payment_method: PaymentMethod
      lines: lines
  - type: billing
    periods: last
    fields: {period: {timeline: period}, amount_due: charge, plan_id: {constant: p}}
"""
    )
    csv_text = (
        "id,charge,handset_age,handset,caps,international_plan,PaymentMethod,lines\n"
        'S1,10,14.6,Pixel 8,"4g, volte",yes,Electronic check,2\n'
        "S2,5,,Moto G,,no,Mailed check,1\n"
        "S3,5,old,Moto G,,no,Mailed check,1\n"
    )
    result = run_import(tmp_path, csv_text, text)
    profiles = {e["subscriber_id"]: e for e in events_of(result, "subscriber")}
    assert profiles["S1"]["schema_version"] == 2
    assert profiles["S1"]["payload"] == {
        "monthly_value": "10",
        "handset": {"age_months": 15, "model": "Pixel 8", "capabilities": ["4g", "volte"]},
        "plan": {"international": True},
        "attributes": {"payment_method": "Electronic check"},
        "lines": 2,
    }
    assert profiles["S2"]["payload"]["handset"] == {"model": "Moto G"}
    assert profiles["S2"]["payload"]["plan"] == {"international": False}
    # Typed by the nested model: a text where handset.age_months needs a number.
    assert [(r.row, r.kind) for r in result.rejections] == [(3, "not_a_number:handset_age")]
    assert "subscriber.handset.age_months: 'old' is not a number" in result.rejections[0].reason
    # The bills use no version 2 field: version 1, exactly as before.
    assert {e["schema_version"] for e in events_of(result, "billing")} == {1}


def test_version_2_fields_of_billing_and_cdr(tmp_path: Path) -> None:
    text = (
        HEAD
        + CDR
        + "      count: 3\n      time_band: {constant: night}\n"
        + "  - type: billing\n    periods: last\n    fields:\n"
        + "      period: {timeline: period}\n      plan_id: {constant: p}\n"
        + "      amount_due: {sum: [plan, extra]}\n"
        + "      recurring_charge: plan\n      overage_charge: extra\n"
    )
    result = run_import(tmp_path, "id,plan,extra\nS1,20,4.5\n", text)
    [cdr] = events_of(result, "cdr")
    [bill] = events_of(result, "billing")
    assert (cdr["schema_version"], cdr["payload"]["time_band"]) == (2, "night")
    assert bill["schema_version"] == 2
    assert (bill["payload"]["recurring_charge"], bill["payload"]["overage_charge"]) == ("20", "4.5")


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        (
            "handset.agee: {column: id}",
            "subscriber.handset has no field 'agee' (it has model, acquired_at, age_months",
        ),
        ("handset: {column: id}", "subscriber.handset is an object: map its fields"),
        ("attributes: {column: id}", "subscriber.attributes is a dict: map its entries"),
        (
            "attributes.PaymentMethod: {column: id}",
            "'PaymentMethod' is not a valid key of subscriber.attributes: String should match",
        ),
        ("phone.number: {column: id}", "subscriber has no field 'phone.number'"),
        ("handset.age_months: 700", "700 is not a valid subscriber handset.age_months"),
        (
            "plan.international: {constant: maybe}",
            "'maybe' is not a valid subscriber plan.international",
        ),
        ("lines: 0", "0 is not a valid subscriber lines: Input should be greater than or equal"),
    ],
)
def test_bad_nested_fields_name_their_line(field: str, expected: str) -> None:
    text = (
        HEAD
        + "events:\n  - type: subscriber\n    fields:\n      tier: {constant: gold}\n"
        + f"      {field}\n"
    )
    message = bad(text)
    needle = field.split(":")[0]
    assert f"bad.yaml:{line_of(text, needle)}: events.0.fields.{needle}" in message, message
    assert expected in message, message


def test_at_most_32_attributes() -> None:
    many = "".join(f"      attributes.a{i}: {{constant: x}}\n" for i in range(33))
    text = HEAD + "events:\n  - type: subscriber\n    fields:\n" + many
    message = bad(text)
    assert f"bad.yaml:{line_of(text, 'attributes.a32')}: " in message, message
    assert "subscriber.attributes takes at most 32 entries" in message


def test_contact_events_are_version_2_and_spread_over_each_period(tmp_path: Path) -> None:
    text = (
        HEAD
        + """\
events:
  - type: contact
    repeat: retention_calls
    fields:
      team: {constant: retention}
      channel: {constant: call}
  - type: complaint
    periods: last
    repeat: complaints
"""
    )
    result = run_import(tmp_path, "id,retention_calls,complaints\nS1,2,1\nS2,0,0\n", text)
    contacts = events_of(result, "contact")
    assert [e["occurred_at"] for e in contacts] == [
        "2026-05-08T18:00:00Z",
        "2026-05-24T06:00:00Z",
        "2026-06-08T12:00:00Z",
        "2026-06-23T12:00:00Z",
    ]
    assert {e["schema_version"] for e in contacts} == {2}
    assert contacts[0]["payload"] == {"team": "retention", "channel": "call"}
    assert [e["schema_version"] for e in events_of(result, "complaint")] == [1]
    assert result.rows_imported == 2


# --- rejected rows by reason ----------------------------------------------------------------

REASONS_MAPPING = (
    HEAD
    + """\
events:
  - type: subscriber
    fields:
      monthly_value: v
      marketing_opt_out: {column: flag, yes_no: true}
      tier: {column: tier, map: {a: gold}}
      plan_id: {column: v, divide: n}
"""
)
REASONS_TABLE = """\
id,v,n,flag,tier
S1,1,2,yes,a
S2,,2,yes,a
S3,x,2,yes,a
S4,1,2,maybe,a
S5,1,2,yes,zz
S6,-1,2,yes,a
S7
S8,1,2,yes,a,extra
S1,1,2,yes,a
,1,2,yes,a
S11,1,0,yes,a
S12, ,2,no,a
"""
REASONS = {
    "blank:v": 2,
    "blank:id": 1,
    "contract:subscriber.monthly_value": 1,
    "duplicate_subscriber": 1,
    "long_row": 1,
    "no_value:subscriber.plan_id": 1,
    "not_a_number:v": 1,
    "not_in_map:tier": 1,
    "not_yes_no:flag": 1,
    "short_row": 1,
}


def test_rejected_rows_are_counted_by_reason_class(tmp_path: Path) -> None:
    result = run_import(tmp_path, REASONS_TABLE, REASONS_MAPPING)
    # The most frequent first, then by name.
    assert list(result.rejected_by_reason().items()) == list(REASONS.items())
    assert result.rows_read == 12
    assert result.rows_imported == 1
    kinds = {r.row: r.kind for r in result.rejections}
    assert (kinds[2], kinds[10], kinds[11]) == (
        "blank:v",
        "blank:id",
        "no_value:subscriber.plan_id",
    )


def test_the_cli_prints_rejections_by_reason_and_writes_a_summary(tmp_path: Path) -> None:
    csv_path = table(tmp_path, REASONS_TABLE)
    mapping = tmp_path / "m.yaml"
    mapping.write_text(REASONS_MAPPING)
    done = CliRunner().invoke(
        cli,
        ["import-table", str(csv_path), "--mapping", str(mapping), "--out", str(tmp_path / "e")],
    )
    assert done.exit_code == 0, done.output
    assert "12 rows read, 11 rejected, 1 subscribers" in done.output
    reasons = ", ".join(f"{k} {n}" for k, n in REASONS.items())
    assert f"rejected rows by reason: {reasons}" in done.output
    summary = tmp_path / "summary.json"
    printed = io.StringIO()
    code = run(
        csv_path,
        mapping,
        out=tmp_path / "events.ndjson",
        truth=None,
        post=None,
        limit=None,
        as_of=None,
        console=Console(file=printed, width=400),
        summary=summary,
    )
    assert code == 0
    assert f"rejected rows by reason: {reasons}" in printed.getvalue()
    assert orjson.loads(summary.read_bytes()) == {
        "table": "t",
        "rows_read": 12,
        "rows_imported": 1,
        "rejected": 11,
        "rejected_by_reason": REASONS,
        "subscribers": 1,
        "churned": 0,
        "events": 1,
        "events_by_type": {"subscriber": 1},
    }


# --- a table with negative values and blanks: no row dropped silently ----------------------


def test_negative_values_and_blanks_import_with_every_row_accounted_for(tmp_path: Path) -> None:
    text = textwrap.dedent(
        """\
        version: 1
        table: rough
        subscriber_id: {column: id}
        timeline:
          as_of: 2026-07-01
          months: 2
          tenure: {column: tenure, default: 0}
        events:
          - type: subscriber
            fields:
              monthly_value: &net
                sum: [revenue, {column: change, multiply: -1}]
                clamp: {low: 0}
                default: 0
              activated_at: {timeline: activation}
          - type: billing
            fields:
              period: {timeline: period}
              plan_id: {constant: p}
              amount_due: {max: [0, {sum: [revenue, {column: change, multiply: -1}]}], default: 0}
          - type: cdr
            split: 2
            fields:
              service: {constant: voice}
              direction: {constant: outgoing}
              count: calls
              duration_s: {column: avg_min, multiply: {column: calls, multiply: 60}}
              distinct_counterparts: {min: [contacts, calls]}
          - type: churn
            when: {column: churn, yes_no: true}
            fields: {kind: {constant: cancellation}}
        """
    )
    csv_text = (
        "id,revenue,change,calls,avg_min,contacts,tenure,churn\n"
        "S1,30,5,10,2,4,12,no\n"
        "S2,10,25,0,,0,3,yes\n"  # negative net revenue, no calls and a blank average
        "S3,,5,3,1.5,2,,no\n"  # blank revenue and tenure: their defaults
        "S4,20,-3,-2,1,1,5,no\n"  # a negative count: rejected
        "S5,abc,0,1,1,1,1,no\n"  # not a number: rejected
        "S6,1\n"  # a short row: rejected
    )
    result = run_import(tmp_path, csv_text, text)
    data_rows = len(csv_text.splitlines()) - 1
    assert result.rows_read == data_rows == 6
    assert result.rows_imported + len(result.rejections) == data_rows
    assert sorted(result.subscribers) == ["S1", "S2", "S3"]
    assert result.rejected_by_reason() == {
        "negative:cdr.count": 1,
        "not_a_number:revenue": 1,
        "short_row": 1,
    }
    by_sub: dict[str, Counter[str]] = {}
    for e in result.dicts():
        by_sub.setdefault(e["subscriber_id"], Counter())[e["event_type"]] += 1
    assert by_sub["S2"] == Counter({"subscriber": 1, "billing": 2, "churn": 1})  # no cdr
    s2 = {e["event_type"]: e["payload"] for e in result.dicts() if e["subscriber_id"] == "S2"}
    assert (s2["subscriber"]["monthly_value"], s2["billing"]["amount_due"]) == ("0", "0")
    s3 = {e["event_type"]: e["payload"] for e in result.dicts() if e["subscriber_id"] == "S3"}
    assert s3["subscriber"] == {"monthly_value": "0", "activated_at": "2026-07-01T00:00:00Z"}


# --- the examples in docs/import.md ----------------------------------------------------------

DOC = Path(__file__).resolve().parents[1] / "docs" / "import.md"


def _doc_blocks(start: str) -> list[str]:
    blocks = DOC.read_text(encoding="utf-8").split("```yaml\n")[1:]
    return [b.split("```")[0] for b in blocks if b.startswith(start)]


def test_the_blank_operand_example_in_the_docs_does_what_it_says(tmp_path: Path) -> None:
    [block] = _doc_blocks("# base 20")
    rows = profile(
        tmp_path,
        block,
        "id,base,extra,MonthlyCharges\nS1,20,5,9\nS2,20,,9\nS3,,5,9\nS4,,5,\n",
    )
    assert rows[:3] == [{"monthly_value": "25"}, {"monthly_value": "20"}, {"monthly_value": "9"}]
    assert rows[3] == (
        "subscriber.monthly_value (default): column 'MonthlyCharges' is blank "
        "and there is no default"
    )


def test_the_event_spec_examples_in_the_docs_load(tmp_path: Path) -> None:
    blocks = _doc_blocks("  - type:")
    assert len(blocks) == 3  # version 2 fields, contact, distinct counterparts
    columns = (
        "id,MonthlyCharges,household_lines,Contract,handset_age,handset_price,"
        "international_plan,PaymentMethod,PaperlessBilling,retention_calls,calls,distinct_numbers"
    )
    row = "S1,70.5,2,One year,14,650,no,Electronic check,Yes,1,10,7"
    result = run_import(tmp_path, f"{columns}\n{row}\n", HEAD + "events:\n" + "".join(blocks))
    assert result.rejections == []
    by_type = {e["event_type"]: e for e in result.dicts()}
    assert by_type["subscriber"]["payload"]["handset"] == {"age_months": 14, "price_band": "mid"}
    assert by_type["subscriber"]["payload"]["contract"] == "one_year"
    assert {e["schema_version"] for e in result.dicts()} == {2}
    cdrs = [e["payload"] for e in result.dicts() if e["event_type"] == "cdr"]
    # The docs' worked example: 10 calls to 7 numbers as four weekly records.
    june = [(p["count"], p["distinct_counterparts"]) for p in cdrs[-4:]]
    assert june == [(3, 2), (3, 2), (2, 2), (2, 1)]
