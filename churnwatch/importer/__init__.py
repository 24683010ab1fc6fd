"""History import: turn an operator's table into events of our contract with a YAML mapping.

Operators' data warehouses export churn tables, not event streams: one row per
subscriber (``per_subscriber``) or per subscriber per month (``per_period``),
with a churn label column. ``churnwatch import-table FILE --mapping
MAPPING.yaml`` turns such a table into NDJSON events that ingest, ``churnwatch
train`` and the backtest read. The mapping is declarative (documented in
``docs/import.md``): where the input is, which column is the subscriber id,
how the table is laid on a timeline, and per event type which column (with
which derivation) fills which payload field.

Tables have no time dimension except tenure and, for ``per_period`` tables,
the period column. Events are placed on a synthetic timeline ending at
``timeline.as_of``: a per-subscriber row becomes the last ``timeline.months``
calendar months (bills, usage, payments), activation is ``as_of`` minus the
tenure, and the churn label becomes a ``churn`` event at ``as_of``.

Guarantees:

- A bad mapping (unknown key or derivation, unknown column, missing required
  key, wrong type, a value the contract refuses) is rejected before any data
  row is read, each problem as ``mapping.yaml:LINE: field: message``
  (:mod:`shared.yamlconf`, the same loader as the alerting rules).
- A row that cannot be mapped is rejected whole (none of its events are
  written) with its row number and the reason; the other rows go on.
- Every event is validated against the contract before it is written.
- Event ids are ``derive_id(table, row number, event index)``: importing the
  same table with the same mapping again gives the same ids, so ingest's
  consumers drop the repeats.
- Events are written sorted by time (ties in row, then emission, order).
- Every row read is imported or rejected, never dropped silently: rejections
  carry a reason class, and ``ImportResult.rejected_by_reason()`` counts them.

The package follows the steps: :mod:`~churnwatch.importer.model` (the mapping
document), :mod:`~churnwatch.importer.contract` (the payload fields a mapping
may fill), :mod:`~churnwatch.importer.checks` (loading and checking a
mapping), :mod:`~churnwatch.importer.values` (evaluating derivations),
:mod:`~churnwatch.importer.timeline`, :mod:`~churnwatch.importer.convert`
(rows to events), :mod:`~churnwatch.importer.result` and
:mod:`~churnwatch.importer.output` (the command).
"""

from churnwatch.importer.checks import (
    LoadedMapping,
    check_columns,
    check_mapping,
    load_mapping,
    parse_mapping,
)
from churnwatch.importer.contract import PAYLOAD_FIELDS, PAYLOADS
from churnwatch.importer.convert import import_table
from churnwatch.importer.model import (
    MAPPINGS_DIR,
    REPO_ROOT,
    STANDARD_NO,
    STANDARD_YES,
    Anchor,
    Clamp,
    Derivation,
    EventSpec,
    EventType,
    FieldValue,
    InputSpec,
    Mapping,
    MappingError,
    Operand,
    PctChange,
    PeriodColumn,
    Periods,
    Scalar,
    SubscriberIdSpec,
    TimelineSpec,
    TimelineValue,
    YesNo,
    parse_offset,
)
from churnwatch.importer.output import post_events, run, write_events, write_summary, write_truth
from churnwatch.importer.result import ImportResult, Rejection
from churnwatch.importer.timeline import DAYS_PER_MONTH
from churnwatch.importer.values import Value

__all__ = [
    "DAYS_PER_MONTH",
    "MAPPINGS_DIR",
    "PAYLOADS",
    "PAYLOAD_FIELDS",
    "REPO_ROOT",
    "STANDARD_NO",
    "STANDARD_YES",
    "Anchor",
    "Clamp",
    "Derivation",
    "EventSpec",
    "EventType",
    "FieldValue",
    "ImportResult",
    "InputSpec",
    "LoadedMapping",
    "Mapping",
    "MappingError",
    "Operand",
    "PctChange",
    "PeriodColumn",
    "Periods",
    "Rejection",
    "Scalar",
    "SubscriberIdSpec",
    "TimelineSpec",
    "TimelineValue",
    "Value",
    "YesNo",
    "check_columns",
    "check_mapping",
    "import_table",
    "load_mapping",
    "parse_mapping",
    "parse_offset",
    "post_events",
    "run",
    "write_events",
    "write_summary",
    "write_truth",
]
