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
"""

from __future__ import annotations

import codecs
import csv
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path
from types import NoneType, UnionType
from typing import IO, TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import httpx
import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from churnwatch.keys import api_headers
from shared.events import EVENT_ADAPTER, EVENT_MODELS, SubscriberId, derive_id
from shared.yamlconf import LineIndex, load_model, locate

if TYPE_CHECKING:
    from rich.console import Console

REPO_ROOT = Path(__file__).resolve().parent.parent
MAPPINGS_DIR = REPO_ROOT / "mappings"
"""The shipped mappings (repository files, loaded by path; not part of the wheel)."""

EventType = Literal[
    "cdr",
    "billing",
    "payment",
    "arrears",
    "stop_notice",
    "subscriber",
    "complaint",
    "churn",
    "reactivation",
]
Anchor = Literal["period", "period_start", "period_end", "window_start", "activation", "as_of"]
Periods = Literal["once", "all", "first", "last", "earlier"]
TimelineValue = Literal[
    "period", "period_start", "period_end", "window_start", "activation", "as_of"
]

# Where an event goes when its spec has no ``at``: (anchor, offset, periods).
# Bills and the like are issued on the last day of their month, a day before
# the next period starts, so the last month's bill comes before a churn at as_of.
_DEFAULTS: dict[str, tuple[Anchor, timedelta, Periods]] = {
    "subscriber": ("window_start", timedelta(0), "once"),
    "cdr": ("period", timedelta(0), "all"),
    "complaint": ("period", timedelta(0), "all"),
    "churn": ("as_of", timedelta(0), "once"),
    "reactivation": ("as_of", timedelta(0), "once"),
    "billing": ("period_end", timedelta(days=-1), "all"),
    "payment": ("period_end", timedelta(days=-1), "all"),
    "arrears": ("period_end", timedelta(days=-1), "all"),
    "stop_notice": ("period_end", timedelta(days=-1), "all"),
}
# cdr fields that add up: split across the records of a ``split`` in proportion to count.
_ADDITIVE = ("duration_s", "bytes", "charge")
STANDARD_YES = ("yes", "y", "true", "t", "1")
STANDARD_NO = ("no", "n", "false", "f", "0")
DAYS_PER_MONTH = Decimal("30.436875")  # the mean Gregorian month, for fractional months
_FOUR_PLACES = Decimal("0.0001")
_SUBSCRIBER_ID: TypeAdapter[str] = TypeAdapter(SubscriberId)

_OFFSET = re.compile(r"^\s*([+-]?)\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


class MappingError(ValueError):
    """A mapping that cannot be used; the message names the file and line of each problem."""


# --- the mapping model --------------------------------------------------------


def parse_offset(value: object) -> timedelta:
    """``-1d``, ``+12h``, ``30m``, ``90s``, ``2w`` (or a number of seconds) as a timedelta."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=float(value))
    if isinstance(value, str) and (m := _OFFSET.match(value)):
        seconds = float(m.group(2)) * _UNITS[m.group(3)]
        return timedelta(seconds=-seconds if m.group(1) == "-" else seconds)
    raise ValueError(f"{value!r} is not an offset such as -1d, 12h, 30m or 90s")


def _key_text(key: object) -> str:
    """A map key as the cell text it is compared with (YAML may read ``1:`` as a number)."""
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _as_operand(value: object) -> object:
    """A plain value is short for a derivation: a string is a column, anything else a constant.

    One rule everywhere (fields, defaults, operands): a misspelt column is then
    always caught by the column check, and a text constant written without
    ``constant:`` is refused as an unknown column rather than silently used.
    """
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        return {"column": value}
    return {"constant": value}


def _as_yes_no(value: object) -> object:
    if value is True:
        return {"yes": list(STANDARD_YES), "no": list(STANDARD_NO)}
    if value is False or value is None:
        raise ValueError("yes_no is true, or a mapping with 'yes' (and optionally 'no') values")
    return value


def _map_keys(value: object) -> object:
    if isinstance(value, dict):
        return {_key_text(k): v for k, v in value.items()}
    return value


class _Strict(BaseModel):
    """Unknown keys are errors: a misspelt key or derivation must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Scalar = str | int | float | bool


class YesNo(_Strict):
    """Which cell texts (compared without case) read as true, and which as false.

    Without ``no``, every non-blank text that is not a ``yes`` value is false.
    """

    yes: list[str] = Field(min_length=1)
    no: list[str] | None = None


class Derivation(_Strict):
    """How one value is computed from a row: one source, then blank handling and transforms.

    Sources (exactly one): ``column``, ``constant``, ``sum``,
    ``previous_from_pct_change``, ``timeline``. Transforms, in this order:
    ``map`` (with ``unmapped``), ``yes_no``, ``multiply`` / ``scale``,
    ``divide``, ``round``, ``bands``. A blank source or operand (or a division
    by zero) makes the value blank; ``default`` replaces a blank value
    (``default: null`` leaves the field out, so the contract's default applies);
    without a default a blank rejects the row.
    """

    column: str | None = Field(default=None, min_length=1)
    constant: Scalar | datetime | date | None = None
    sum: list[Operand] | None = Field(default=None, min_length=1)
    previous_from_pct_change: PctChange | None = None
    timeline: TimelineValue | None = None
    default: Annotated[Derivation, BeforeValidator(_as_operand)] | None = None
    map: Annotated[dict[str, Scalar | None] | None, BeforeValidator(_map_keys)] = Field(
        default=None, min_length=1
    )
    unmapped: Scalar | None = None
    yes_no: Annotated[YesNo | None, BeforeValidator(_as_yes_no)] = None
    multiply: Operand | None = None
    scale: Operand | None = None
    divide: Operand | None = None
    round: int | None = Field(default=None, ge=0, le=8)
    bands: dict[float, Scalar] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> Derivation:
        sources = [
            name
            for name in ("column", "constant", "sum", "previous_from_pct_change", "timeline")
            if name in self.model_fields_set
        ]
        if len(sources) != 1:
            given = f" (given: {', '.join(sources)})" if sources else ""
            raise ValueError(
                "give exactly one source: column, constant, sum, previous_from_pct_change "
                f"or timeline{given}"
            )
        if "unmapped" in self.model_fields_set and self.map is None:
            raise ValueError("unmapped needs a map")
        if self.multiply is not None and self.scale is not None:
            raise ValueError("scale is another name for multiply: give one of them")
        numeric = [
            n
            for n in ("multiply", "scale", "divide", "round", "bands")
            if getattr(self, n) is not None
        ]
        if self.yes_no is not None and numeric:
            raise ValueError(f"yes_no gives true/false; it cannot be combined with {numeric[0]}")
        return self

    @property
    def has_default(self) -> bool:
        """True when ``default`` was given (``default: null`` included)."""
        return "default" in self.model_fields_set

    @property
    def is_plain_constant(self) -> bool:
        """A constant with no transform: its value can be checked when the mapping loads."""
        return (
            "constant" in self.model_fields_set
            and not (
                self.map or self.yes_no or self.bands or self.multiply or self.scale or self.divide
            )
            and self.round is None
        )


Operand = Annotated[Derivation, BeforeValidator(_as_operand)]
"""A value read from the row: a column name, a number, or a derivation."""


class PctChange(_Strict):
    """The previous period's value from the current one and its change: cur / (1 + change)."""

    current: Operand
    pct_change: Operand
    unit: Literal["percent", "fraction"] = "percent"


Derivation.model_rebuild()

FieldValue = Annotated[Derivation, BeforeValidator(_as_operand)]
"""A payload field: a column name, a number or true/false, or a derivation."""


class PeriodColumn(_Strict):
    """The period column of a ``per_period`` table: its cells name the month."""

    column: str = Field(min_length=1)
    format: str = Field(default="%Y-%m", min_length=2)


class InputSpec(_Strict):
    """The table: a CSV file, its dialect, and its layout."""

    format: Literal["csv"] = "csv"
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: str = "utf-8-sig"
    header: bool = True
    columns: list[str] | None = Field(default=None, min_length=1)
    blank_values: list[str] = Field(default_factory=list)
    layout: Literal["per_subscriber", "per_period"] = "per_subscriber"
    period: PeriodColumn | None = None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            codecs.lookup(value)
        except LookupError as exc:
            raise ValueError(f"unknown encoding {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _coherent(self) -> InputSpec:
        if not self.header and self.columns is None:
            raise ValueError("a table without a header row needs 'columns' (their names)")
        if self.header and self.columns is not None:
            raise ValueError("'columns' names the columns of a table without a header row")
        if self.layout == "per_period" and self.period is None:
            raise ValueError("a per_period table needs 'period' (its period column)")
        if self.layout == "per_subscriber" and self.period is not None:
            raise ValueError("'period' is for per_period tables")
        return self


class SubscriberIdSpec(_Strict):
    """The subscriber id: ``prefix`` + a column's value, or + the row number when no column."""

    column: str | None = Field(default=None, min_length=1)
    prefix: str = Field(default="", max_length=32)
    width: int = Field(default=6, ge=1, le=12)

    @model_validator(mode="after")
    def _prefix_for_generated(self) -> SubscriberIdSpec:
        if self.column is None and not self.prefix:
            raise ValueError(
                "give the id column, or a prefix for ids generated from the row number"
            )
        return self


class TimelineSpec(_Strict):
    """The synthetic timeline: its end (``as_of``), its length, and activation from tenure."""

    as_of: datetime | date | None = None
    months: int = Field(default=3, ge=1, le=120)
    tenure: Operand | None = None
    tenure_unit: Literal["days", "months"] = "months"
    before_activation: Literal["drop", "keep"] = "drop"

    @property
    def end(self) -> datetime | None:
        """``as_of`` as a timezone-aware datetime (a date is its midnight, UTC)."""
        value = self.as_of
        if value is None:
            return None
        if not isinstance(value, datetime):
            return datetime(value.year, value.month, value.day, tzinfo=UTC)
        return value if value.tzinfo else value.replace(tzinfo=UTC)


class EventSpec(_Strict):
    """One kind of event made from each row (or each period of a row)."""

    type: EventType
    periods: Periods | list[Annotated[int, Field(ge=0)]] | None = None
    at: Anchor | None = None
    offset: Annotated[timedelta, BeforeValidator(parse_offset)] | None = None
    when: Operand | None = None
    repeat: Operand | None = None
    split: int = Field(default=1, ge=1, le=31)
    fields: dict[str, FieldValue] = Field(default_factory=dict)

    @field_validator("split")
    @classmethod
    def _split_cdr_only(cls, value: int, info: ValidationInfo) -> int:
        # A field validator (not the model's) so that the error names the split line.
        if value > 1 and info.data.get("type", "cdr") != "cdr":
            raise ValueError("split is for cdr records (usage summaries) only")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> EventSpec:
        if self.selection == "once" and self.anchor in ("period", "period_start", "period_end"):
            raise ValueError(f"an event made once per subscriber cannot be placed at {self.anchor}")
        return self

    @property
    def selection(self) -> Periods | list[int]:
        """Which periods the event is made for (the type's default unless given)."""
        return self.periods if self.periods is not None else _DEFAULTS[self.type][2]

    @property
    def anchor(self) -> Anchor:
        """Where on the timeline the event goes (the type's default unless given)."""
        return self.at if self.at is not None else _DEFAULTS[self.type][0]

    @property
    def shift(self) -> timedelta:
        """The offset from the anchor (the type's default only when ``at`` is not given)."""
        if self.offset is not None:
            return self.offset
        return _DEFAULTS[self.type][1] if self.at is None else timedelta(0)


class Mapping(_Strict):
    """A whole mapping file."""

    version: Literal[1]
    table: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    source: str = Field(default="import", min_length=1, max_length=64)
    input: InputSpec = InputSpec()
    subscriber_id: SubscriberIdSpec
    timeline: TimelineSpec = TimelineSpec()
    events: list[EventSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> Mapping:
        if self.input.layout == "per_subscriber" and self.timeline.as_of is None:
            raise ValueError("timeline.as_of is needed for a per_subscriber table")
        return self


# --- checks that need the line index or the header -------------------------------------


@dataclass(frozen=True)
class _FieldInfo:
    kind: Literal["money", "int", "float", "bool", "datetime", "str"]
    adapter: TypeAdapter[Any]
    required: bool


def _unwrap(annotation: Any) -> Any:
    """The type inside ``X | None`` and ``Annotated[X, ...]``."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, UnionType):
            args = [a for a in get_args(annotation) if a is not NoneType]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _field_kind(annotation: Any) -> Literal["money", "int", "float", "bool", "datetime", "str"]:
    inner = _unwrap(annotation)
    if inner is Decimal:
        return "money"
    if inner is bool:
        return "bool"
    if inner is int:
        return "int"
    if inner is float:
        return "float"
    if isinstance(inner, type) and issubclass(inner, datetime | AwareDatetime):
        return "datetime"
    return "str"


def _constrained(annotation: Any, metadata: list[Any]) -> Any:
    """The field's type with its constraints (min_length, pattern, ge...), kept in metadata."""
    if not metadata:
        return annotation
    return Annotated.__class_getitem__((annotation, *metadata))  # type: ignore[attr-defined]


def _payload_fields() -> dict[str, dict[str, _FieldInfo]]:
    out: dict[str, dict[str, _FieldInfo]] = {}
    for name, model in EVENT_MODELS.items():
        payload = model.model_fields["payload"].annotation
        assert isinstance(payload, type)
        assert issubclass(payload, BaseModel)
        out[name] = {
            fname: _FieldInfo(
                _field_kind(finfo.annotation),
                TypeAdapter(_constrained(finfo.annotation, finfo.metadata)),
                finfo.is_required(),
            )
            for fname, finfo in payload.model_fields.items()
        }
    return out


PAYLOAD_FIELDS = _payload_fields()
"""Per event type: each payload field's kind, validator and whether it is required."""

Path_ = tuple[Any, ...]


def _walk(d: Derivation, path: Path_) -> Iterator[tuple[Path_, Derivation]]:
    """Every derivation inside ``d`` (itself included) with its key path in the document."""
    yield path, d
    if d.sum is not None:
        for i, item in enumerate(d.sum):
            yield from _walk(item, (*path, "sum", i))
    if d.previous_from_pct_change is not None:
        pct = d.previous_from_pct_change
        yield from _walk(pct.current, (*path, "previous_from_pct_change", "current"))
        yield from _walk(pct.pct_change, (*path, "previous_from_pct_change", "pct_change"))
    for name in ("multiply", "scale", "divide", "default"):
        inner = getattr(d, name)
        if inner is not None:
            yield from _walk(inner, (*path, name))


def _top_derivations(mapping: Mapping) -> Iterator[tuple[Path_, Derivation, EventSpec | None]]:
    if mapping.timeline.tenure is not None:
        yield ("timeline", "tenure"), mapping.timeline.tenure, None
    for i, spec in enumerate(mapping.events):
        for name in ("when", "repeat"):
            d = getattr(spec, name)
            if d is not None:
                yield ("events", i, name), d, spec
        for fname, d in spec.fields.items():
            yield ("events", i, "fields", fname), d, spec


def _checked_value(kind: str, adapter: TypeAdapter[Any], value: Any) -> None:
    adapter.validate_python(_coerce(kind, _from_yaml(value), "value"))


def check_mapping(mapping: Mapping, lines: LineIndex, *, source: str) -> None:
    """Checks pydantic cannot make alone: payload fields, constants, timeline use.

    Raises ``MappingError`` with one ``source:LINE: field: message`` per problem.
    """
    problems: list[str] = []

    def problem(path: Path_, message: str) -> None:
        dotted, line = locate(lines, path)
        problems.append(f"{source}:{line}: {dotted}: {message}")

    per_period = mapping.input.layout == "per_period"
    if per_period and "months" in mapping.timeline.model_fields_set:
        problem(("timeline", "months"), "months is for per_subscriber tables")
    for i, spec in enumerate(mapping.events):
        known = PAYLOAD_FIELDS[spec.type]
        for fname in spec.fields:
            if fname not in known:
                problem(
                    ("events", i, "fields", fname),
                    f"{spec.type} has no field {fname!r} (it has {', '.join(known)})",
                )
        missing = [f for f, info in known.items() if info.required and f not in spec.fields]
        if missing:
            problem(("events", i, "fields"), f"{spec.type} needs {', '.join(missing)}")
        if spec.anchor == "activation" and mapping.timeline.tenure is None:
            problem(("events", i, "at"), "at: activation needs timeline.tenure")
        if not per_period and isinstance(spec.periods, list):
            beyond = [n for n in spec.periods if n >= mapping.timeline.months]
            if beyond:
                problem(
                    ("events", i, "periods"),
                    f"period {beyond[0]} is outside the {mapping.timeline.months} months "
                    "of timeline.months (0 is the last month)",
                )
    for path, top, owner in _top_derivations(mapping):
        info = PAYLOAD_FIELDS[owner.type].get(path[-1]) if owner and path[2] == "fields" else None
        for sub_path, d in _walk(top, path):
            if d.timeline in ("period", "period_start", "period_end") and (
                owner is None or owner.selection == "once"
            ):
                problem((*sub_path, "timeline"), f"timeline: {d.timeline} needs a period")
            if d.timeline == "activation" and mapping.timeline.tenure is None:
                problem((*sub_path, "timeline"), "timeline: activation needs timeline.tenure")
        if info is None or owner is None:
            continue
        # Values written in the mapping itself can be checked now, not on every row.
        for value_path, value in _literal_values(top, path):
            try:
                _checked_value(info.kind, info.adapter, value)
            except (ValidationError, _RowError) as exc:
                message = (
                    exc.errors(include_url=False)[0]["msg"]
                    if isinstance(exc, ValidationError)
                    else str(exc)
                )
                problem(value_path, f"{value!r} is not a valid {owner.type} {path[-1]}: {message}")
    if problems:
        raise MappingError("\n".join(problems))


def _literal_values(d: Derivation, path: Path_) -> Iterator[tuple[Path_, object]]:
    """Values in the mapping that become the field's value as they are."""
    default = d.default
    if default is not None and default.is_plain_constant and default.constant is not None:
        yield (*path, "default"), default.constant
    if d.bands is not None:
        for low, label in d.bands.items():
            yield (*path, "bands", low), label
    elif d.map is not None and not (d.yes_no or d.multiply or d.scale or d.divide or d.round):
        for key, mapped in d.map.items():
            if mapped is not None:
                yield (*path, "map", key), mapped
        if d.unmapped is not None:
            yield (*path, "unmapped"), d.unmapped
    elif d.is_plain_constant and d.constant is not None:
        yield path, d.constant


def check_columns(
    mapping: Mapping, lines: LineIndex, columns: Sequence[str], *, source: str
) -> None:
    """Every column the mapping names must be in the table; raise ``MappingError`` if not."""
    present = set(columns)
    problems = []
    refs: list[tuple[Path_, str]] = []
    if mapping.subscriber_id.column is not None:
        refs.append((("subscriber_id", "column"), mapping.subscriber_id.column))
    if mapping.input.period is not None:
        refs.append((("input", "period", "column"), mapping.input.period.column))
    for path, top, _ in _top_derivations(mapping):
        for sub_path, d in _walk(top, path):
            if d.column is not None:
                refs.append(((*sub_path, "column"), d.column))
    for path, column in refs:
        if column not in present:
            dotted, line = locate(lines, path)
            shown = ", ".join(columns[:40]) + (", ..." if len(columns) > 40 else "")
            problems.append(
                f"{source}:{line}: {dotted}: no column {column!r} (the table has: {shown}; "
                "for a text constant write {constant: ...})"
            )
    if problems:
        raise MappingError("\n".join(problems))


@dataclass(frozen=True)
class LoadedMapping:
    """A validated mapping with its line index (to name lines in later checks)."""

    mapping: Mapping
    lines: LineIndex
    source: str


def parse_mapping(text: str, *, source: str = "<mapping>") -> LoadedMapping:
    """Parse and validate a mapping document; raise ``MappingError`` naming the line."""
    mapping, lines = load_model(
        Mapping,
        text,
        source=source,
        error=MappingError,
        not_mapping="a mapping file is a YAML mapping with 'version', 'table', "
        "'subscriber_id' and 'events'",
    )
    check_mapping(mapping, lines, source=source)
    return LoadedMapping(mapping, lines, source)


def load_mapping(path: Path | str) -> LoadedMapping:
    """Load a mapping file; a bare name such as ``mlc_churn`` is a shipped mapping."""
    path = Path(path)
    if not path.suffix and not path.exists() and (MAPPINGS_DIR / f"{path}.yaml").is_file():
        path = MAPPINGS_DIR / f"{path}.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(f"{path}: cannot read the mapping: {exc.strerror}") from exc
    return parse_mapping(text, source=str(path))


# --- evaluation -------------------------------------------------------------------------


class _RowError(Exception):
    """A row that cannot be mapped: the message says why."""


class _Blank(Exception):
    """A blank value (empty cell, division by zero) where a value was needed."""


Value = str | Decimal | bool | datetime


@dataclass(slots=True)
class _Slot:
    """One period of a subscriber's timeline."""

    period: str
    start: datetime
    end: datetime


@dataclass(slots=True)
class _Row:
    number: int  # 1 = the first data row
    line: int  # line in the file where the row starts
    cells: dict[str, str]


@dataclass(slots=True)
class _Ctx:
    row: _Row
    slot: _Slot | None
    as_of: datetime
    activation: datetime | None
    window_start: datetime
    blanks: frozenset[str]


def _from_yaml(value: object) -> Value | None:
    """A value written in the mapping, as the evaluator's types."""
    if value is None or isinstance(value, bool | str | datetime):
        return value
    if isinstance(value, int | float):
        return Decimal(str(value))
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise _RowError(f"unsupported value {value!r}")


def _text(value: Value) -> str:
    """A value as text (numbers without exponent or trailing zeros)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal):
        text = format(value, "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _number(value: Value, what: str) -> Decimal:
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise _RowError(f"{what}: {value!r} is not a number") from None
        if not number.is_finite():
            raise _RowError(f"{what}: {value!r} is not a number")
        return number
    raise _RowError(f"{what}: {_text(value)!r} is not a number")


def _yes_no(value: Value, spec: YesNo, what: str) -> bool:
    text = _text(value).strip().lower()
    if text in (v.lower() for v in spec.yes):
        return True
    if spec.no is None or text in (v.lower() for v in spec.no):
        return False
    raise _RowError(f"{what}: {_text(value)!r} is neither yes ({', '.join(spec.yes)}) nor no")


def _evaluate(d: Derivation, ctx: _Ctx, what: str) -> Value | None:
    """The value of ``d`` for this row and period; None means "leave the field out"."""
    try:
        value = _source(d, ctx, what)
        return _transform(d, value, ctx, what)
    except _Blank as blank:
        if not d.has_default:
            raise _RowError(f"{what}: {blank} and there is no default") from None
        if d.default is None:
            return None
        return _evaluate(d.default, ctx, f"{what} (default)")


def _operand(d: Derivation, ctx: _Ctx, what: str) -> Decimal:
    value = _evaluate(d, ctx, what)
    if value is None:
        raise _Blank(f"{what} is left out")
    return _number(value, what)


def _source(d: Derivation, ctx: _Ctx, what: str) -> Value:
    if d.column is not None:
        cell = ctx.row.cells[d.column].strip()
        if not cell or cell in ctx.blanks:
            raise _Blank(f"column {d.column!r} is blank")
        return cell
    if d.sum is not None:
        return sum(
            (_operand(item, ctx, f"{what} (sum item {i})") for i, item in enumerate(d.sum)),
            Decimal(0),
        )
    if d.previous_from_pct_change is not None:
        pct = d.previous_from_pct_change
        current = _operand(pct.current, ctx, f"{what} (current)")
        change = _operand(pct.pct_change, ctx, f"{what} (pct_change)")
        factor = 1 + (change / 100 if pct.unit == "percent" else change)
        if factor == 0:
            raise _Blank("a change of -100% leaves no previous value")
        return current / factor
    if d.timeline is not None:
        return _timeline_value(d.timeline, ctx)
    value = _from_yaml(d.constant)
    if value is None:
        raise _Blank("the constant is null")
    return value


def _timeline_value(name: TimelineValue, ctx: _Ctx) -> Value:
    if name == "as_of":
        return ctx.as_of
    if name == "window_start":
        return ctx.window_start
    if name == "activation":
        if ctx.activation is None:
            raise _Blank("there is no activation (no tenure)")
        return ctx.activation
    if ctx.slot is None:
        raise _Blank(f"timeline {name} needs a period")
    if name == "period":
        return ctx.slot.period
    return ctx.slot.start if name == "period_start" else ctx.slot.end


def _transform(d: Derivation, value: Value, ctx: _Ctx, what: str) -> Value:
    if d.map is not None:
        key = _text(value)
        if key in d.map:
            mapped = d.map[key]
        elif "unmapped" in d.model_fields_set:
            mapped = d.unmapped
        else:
            shown = ", ".join(repr(k) for k in list(d.map)[:8])
            raise _RowError(f"{what}: {key!r} is not in the map ({shown})")
        result = _from_yaml(mapped)
        if result is None:
            raise _Blank(f"{key!r} maps to nothing")
        value = result
    if d.yes_no is not None:
        return _yes_no(value, d.yes_no, what)
    factor = d.multiply or d.scale
    if factor is not None:
        value = _number(value, what) * _operand(factor, ctx, f"{what} (multiply)")
    if d.divide is not None:
        divisor = _operand(d.divide, ctx, f"{what} (divide)")
        if divisor == 0:
            raise _Blank("division by zero")
        value = _number(value, what) / divisor
    if d.round is not None:
        value = _number(value, what).quantize(Decimal(1).scaleb(-d.round), ROUND_HALF_EVEN)
    if d.bands is not None:
        number = _number(value, what)
        chosen = [v for low, v in sorted(d.bands.items()) if number >= Decimal(str(low))]
        if not chosen:
            raise _Blank(f"{_text(number)} is below the lowest band")
        result = _from_yaml(chosen[-1])
        assert result is not None  # bands values are not null (typed Scalar)
        value = result
    return value


def _iso(moment: datetime) -> str:
    """ISO 8601, with ``Z`` for UTC (as the contract's examples write it)."""
    return moment.isoformat().replace("+00:00", "Z")


def _money(number: Decimal) -> str:
    return _text(number.quantize(_FOUR_PLACES, ROUND_HALF_EVEN))


def _coerce(kind: str, value: Value | None, what: str) -> Any:
    """A value as the payload field's JSON value (money as a string, like the contract's)."""
    if value is None:
        return None
    if kind == "money":
        return _money(_number(value, what))
    if kind == "int":
        return int(_number(value, what).to_integral_value(ROUND_HALF_EVEN))
    if kind == "float":
        return float(_number(value, what))
    if kind == "bool":
        if isinstance(value, bool):
            return value
        return _yes_no(value, YesNo(yes=list(STANDARD_YES), no=list(STANDARD_NO)), what)
    if kind == "datetime":
        if isinstance(value, datetime):
            return _iso(value)
        text = _text(value)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return text  # the contract's validation names the problem
        return _iso(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    return _text(value)


def _truthy(value: Value | None, what: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        return value != 0
    if isinstance(value, datetime):
        return True
    try:
        return _number(value, what) != 0
    except _RowError:
        return _yes_no(value, YesNo(yes=list(STANDARD_YES), no=list(STANDARD_NO)), what)


# --- the timeline -----------------------------------------------------------------------


def _month_start(year: int, month: int) -> datetime:
    return datetime(year, month, 1, tzinfo=UTC)


def _add_months(start: datetime, months: int) -> datetime:
    """The first of the month ``months`` after ``start``'s month."""
    index = start.year * 12 + start.month - 1 + months
    return _month_start(index // 12, index % 12 + 1)


def _slot(year: int, month: int, as_of: datetime) -> _Slot:
    start = _month_start(year, month)
    return _Slot(f"{year:04d}-{month:02d}", start, min(_add_months(start, 1), as_of))


def _minus_tenure(as_of: datetime, tenure: Decimal, unit: str) -> datetime:
    if tenure < 0:
        raise _RowError(f"tenure {_text(tenure)} is negative")
    if unit == "days":
        return as_of - timedelta(days=float(tenure))
    whole = int(tenure)
    index = as_of.year * 12 + as_of.month - 1 - whole
    year, month = index // 12, index % 12 + 1
    day = as_of.day
    while True:  # the same day of the month, or the month's last day
        try:
            moved = as_of.replace(year=year, month=month, day=day)
            break
        except ValueError:
            day -= 1
    return moved - timedelta(days=float((tenure - whole) * DAYS_PER_MONTH))


def _window(
    slots: list[_Slot], activation: datetime | None, as_of: datetime, before: str
) -> tuple[list[_Slot], datetime]:
    """The subscriber's periods (clipped to activation with ``drop``) and the window start."""
    if before == "drop" and activation is not None:
        kept = []
        for s in slots:
            if s.end > activation:
                kept.append(_Slot(s.period, max(s.start, activation), s.end))
        start = kept[0].start if kept else min(activation, as_of)
        return kept, start
    return slots, slots[0].start if slots else as_of


def _select(selection: Periods | list[int], slots: list[_Slot]) -> list[_Slot | None]:
    if selection == "once":
        return [None]
    chosen: list[_Slot]
    if selection == "all":
        chosen = slots
    elif selection == "first":
        chosen = slots[:1]
    elif selection == "last":
        chosen = slots[-1:]
    elif selection == "earlier":
        chosen = slots[:-1]
    else:
        # Counted back from the last period (0); the listed order does not matter.
        wanted = {len(slots) - 1 - n for n in selection}
        chosen = [s for i, s in enumerate(slots) if i in wanted]
    return list(chosen)


# --- converting rows ----------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """A row that could not be mapped, and why."""

    row: int
    line: int
    reason: str

    def __str__(self) -> str:
        return f"row {self.row} (line {self.line}): {self.reason}"


@dataclass
class ImportResult:
    """What an import produced: events (NDJSON lines, sorted by time) and what was refused."""

    table: str
    rows_read: int = 0
    events: list[bytes] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    subscribers: set[str] = field(default_factory=set)
    churned: dict[str, tuple[str, str]] = field(default_factory=dict)  # id -> (time, kind)
    by_type: Counter[str] = field(default_factory=Counter)
    latest: datetime | None = None
    seconds: float = 0.0

    def dicts(self) -> Iterator[dict[str, Any]]:
        """The events as dicts (decoded from their NDJSON lines)."""
        for line in self.events:
            yield orjson.loads(line)


def _spread(anchor: Anchor, shift: timedelta, n: int, ctx: _Ctx) -> list[datetime]:
    """The times of ``n`` events placed at ``anchor`` (spread evenly over a period)."""
    slot = ctx.slot
    if anchor == "period":
        assert slot is not None  # checked when the mapping loads
        span = (slot.end - slot.start).total_seconds()
        return [slot.start + timedelta(seconds=int((j + 0.5) * span / n)) + shift for j in range(n)]
    if anchor == "period_start":
        assert slot is not None
        at = slot.start
    elif anchor == "period_end":
        assert slot is not None
        at = slot.end
    elif anchor == "window_start":
        at = ctx.window_start
    elif anchor == "activation":
        if ctx.activation is None:
            raise _RowError("at: activation, but there is no tenure")
        at = ctx.activation
    else:
        at = ctx.as_of
    return [at + shift] * n


def _split_cdr(payload: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """A period's usage record as up to ``parts`` records, count and totals shared out."""
    count = int(payload.get("count", 1))
    n = min(parts, count)
    base, extra = divmod(count, n)
    out = []
    for i in range(n):
        share = base + (1 if i < extra else 0)
        part = dict(payload)
        part["count"] = share
        for name in _ADDITIVE:
            if payload.get(name) is not None:
                total = Decimal(str(payload[name]))
                value = total * share / count
                part[name] = (
                    _money(value)
                    if name == "charge"
                    else int(value.to_integral_value(ROUND_HALF_EVEN))
                    if name == "bytes"
                    else float(round(value, 3))
                )
        out.append(part)
    return out


class _Converter:
    """Turns rows into events for one mapping; collects events and rejections."""

    def __init__(self, loaded: LoadedMapping, as_of: datetime | None) -> None:
        self.mapping = loaded.mapping
        m = self.mapping
        end = as_of or m.timeline.end
        # Periods are UTC calendar months: work in UTC whatever zone as_of was given in.
        self.as_of = end.astimezone(UTC) if end is not None else None
        self.blanks = frozenset(v.strip() for v in m.input.blank_values)
        self.result = ImportResult(table=m.table)
        self._pending: list[tuple[float, int, int, bytes]] = []
        self._rejected_rows: set[int] = set()

    # -- per row --

    def subscriber_id(self, row: _Row) -> str:
        """The row's subscriber id (from its column, or generated from the row number)."""
        spec = self.mapping.subscriber_id
        if spec.column is None:
            raw = f"{spec.prefix}{row.number:0{spec.width}d}"
        else:
            cell = row.cells[spec.column].strip()
            if not cell or cell in self.blanks:
                raise _RowError(f"the subscriber id column {spec.column!r} is blank")
            raw = spec.prefix + cell
        try:
            return _SUBSCRIBER_ID.validate_python(raw)
        except ValidationError:
            raise _RowError(
                f"{raw!r} is not a subscriber id (1-64 letters, digits and ._:-)"
            ) from None

    def activation(self, row: _Row, as_of: datetime) -> datetime | None:
        """``as_of`` minus the row's tenure; None without a tenure (or a left-out one)."""
        tenure = self.mapping.timeline.tenure
        if tenure is None:
            return None
        ctx = _Ctx(row, None, as_of, None, as_of, self.blanks)
        value = _evaluate(tenure, ctx, "timeline.tenure")
        if value is None:
            return None
        return _minus_tenure(
            as_of, _number(value, "timeline.tenure"), self.mapping.timeline.tenure_unit
        )

    def emit_row(
        self,
        row: _Row,
        sid: str,
        slots: list[_Slot],
        own: _Slot | None,
        *,
        once: bool,
        activation: datetime | None,
        window_start: datetime,
        as_of: datetime,
    ) -> None:
        """Make this row's events: for its own period (per_period) or every selected one."""
        m = self.mapping
        made: list[tuple[datetime, dict[str, Any]]] = []
        try:
            for i, spec in enumerate(m.events):
                selection = spec.selection
                if selection == "once":
                    if not once:
                        continue
                    chosen: list[_Slot | None] = [None]
                else:
                    chosen = [s for s in _select(selection, slots) if own is None or s is own]
                for slot in chosen:
                    ctx = _Ctx(row, slot, as_of, activation, window_start, self.blanks)
                    made.extend(self._events(spec, i, ctx))
        except _RowError as exc:
            self.reject(row, str(exc))
            return
        events = []
        for index, (at, payload_event) in enumerate(made):
            event = {
                "event_id": str(derive_id(m.table, row.number, index)),
                "event_type": payload_event["event_type"],
                "subscriber_id": sid,
                "occurred_at": _iso(at),
                "source": m.source,
                "schema_version": 1,
                "payload": payload_event["payload"],
            }
            try:
                EVENT_ADAPTER.validate_python(event)
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                loc = ".".join(str(p) for p in err["loc"][1:])
                self.reject(row, f"{event['event_type']} event: {loc}: {err['msg']}")
                return
            events.append((at, index, event))
        r = self.result
        r.subscribers.add(sid)
        for at, index, event in events:
            self._pending.append((at.timestamp(), row.number, index, orjson.dumps(event)))
            r.by_type[event["event_type"]] += 1
            if r.latest is None or at > r.latest:
                r.latest = at
            if event["event_type"] == "churn":
                r.churned[sid] = (event["occurred_at"], event["payload"]["kind"])

    def _events(
        self, spec: EventSpec, index: int, ctx: _Ctx
    ) -> Iterator[tuple[datetime, dict[str, Any]]]:
        where = f"events.{index} ({spec.type})"
        if spec.when is not None and not _truthy(
            _evaluate(spec.when, ctx, f"{where} when"), f"{where} when"
        ):
            return
        repeat = 1
        if spec.repeat is not None:
            value = _evaluate(spec.repeat, ctx, f"{where} repeat")
            number = Decimal(0) if value is None else _number(value, f"{where} repeat")
            repeat = int(number.to_integral_value(ROUND_HALF_EVEN))
            if repeat < 0:
                raise _RowError(f"{where} repeat: {repeat} is negative")
            if repeat > 10_000:
                raise _RowError(f"{where} repeat: {repeat} is more than 10000")
        if repeat == 0:
            return
        infos = PAYLOAD_FIELDS[spec.type]
        payload: dict[str, Any] = {}
        for name, d in spec.fields.items():
            what = f"{spec.type}.{name}"
            value = _coerce(infos[name].kind, _evaluate(d, ctx, what), what)
            if value is not None:
                payload[name] = value
        payloads = [payload]
        if spec.type == "cdr":
            count = payload.get("count", 1)
            if isinstance(count, int) and count <= 0:
                return  # no usage in the period: nothing to record
            if spec.split > 1:
                payloads = _split_cdr(payload, spec.split)
        n = repeat * len(payloads)
        times = _spread(spec.anchor, spec.shift, n, ctx)
        for j, at in enumerate(times):
            yield at, {"event_type": spec.type, "payload": payloads[j % len(payloads)]}

    def reject(self, row: _Row, reason: str) -> None:
        """Record a refused row (once)."""
        if row.number not in self._rejected_rows:
            self._rejected_rows.add(row.number)
            self.result.rejections.append(Rejection(row.number, row.line, reason))

    # -- whole tables --

    def per_subscriber(self, rows: Iterator[_Row]) -> None:
        """One row per subscriber: each becomes the last ``months`` months up to as_of."""
        m = self.mapping
        as_of = self.as_of
        assert as_of is not None  # required for per_subscriber (Mapping._coherent)
        last = as_of - timedelta(microseconds=1)
        slots = [
            _slot(s.year, s.month, as_of)
            for s in (
                _add_months(_month_start(last.year, last.month), -k)
                for k in range(m.timeline.months)
            )
        ][::-1]
        seen: dict[str, int] = {}
        for row in rows:
            self.result.rows_read += 1
            try:
                sid = self.subscriber_id(row)
                if sid in seen:
                    raise _RowError(f"subscriber {sid} is already on row {seen[sid]}")
                activation = self.activation(row, as_of)
            except _RowError as exc:
                self.reject(row, str(exc))
                continue
            seen[sid] = row.number
            own, start = _window(slots, activation, as_of, m.timeline.before_activation)
            self.emit_row(
                row,
                sid,
                own,
                None,
                once=True,
                activation=activation,
                window_start=start,
                as_of=as_of,
            )

    def per_period(self, rows: Iterator[_Row]) -> None:
        """One row per subscriber per month: rows are grouped by subscriber, then emitted."""
        m = self.mapping
        spec = m.input.period
        assert spec is not None  # required for per_period (InputSpec._coherent)
        groups: dict[str, list[tuple[int, int, _Row]]] = {}
        for row in rows:
            self.result.rows_read += 1
            try:
                sid = self.subscriber_id(row)
                cell = row.cells[spec.column].strip()
                try:
                    moment = datetime.strptime(cell, spec.format)  # only year and month are used
                except ValueError:
                    raise _RowError(
                        f"period {cell!r} does not match the format {spec.format!r}"
                    ) from None
            except _RowError as exc:
                self.reject(row, str(exc))
                continue
            groups.setdefault(sid, []).append((moment.year, moment.month, row))
        latest_end = max(
            (_add_months(_month_start(y, mo), 1) for g in groups.values() for y, mo, _ in g),
            default=datetime(1970, 1, 1, tzinfo=UTC),
        )
        as_of = self.as_of or latest_end
        for sid, group in groups.items():
            group.sort(key=lambda item: (item[0], item[1], item[2].number))
            slots: list[_Slot] = []
            owners: list[tuple[_Row, _Slot]] = []
            for year, month, row in group:
                if slots and slots[-1].period == f"{year:04d}-{month:02d}":
                    self.reject(
                        row,
                        f"{sid} has period {slots[-1].period} twice (row {owners[-1][0].number})",
                    )
                    continue
                if _month_start(year, month) >= as_of:
                    self.reject(row, f"period {year:04d}-{month:02d} is not before as_of")
                    continue
                slot = _slot(year, month, as_of)
                slots.append(slot)
                owners.append((row, slot))
            if not owners:
                continue
            last_row = owners[-1][0]
            try:
                activation = self.activation(last_row, as_of)
            except _RowError as exc:
                for row, _ in owners:
                    self.reject(row, f"{sid}: {exc}")
                continue
            kept, start = _window(slots, activation, as_of, m.timeline.before_activation)
            by_period = {s.period: s for s in kept}
            for row, slot in owners:
                own = by_period.get(slot.period)
                is_last = row is last_row
                if own is None and not is_last:
                    continue  # a period before activation, dropped
                # The last row's period may be before activation: it still carries the
                # once-per-subscriber events (profile, churn), but no per-period ones
                # (a slot that is in no selection).
                self.emit_row(
                    row,
                    sid,
                    kept,
                    own if own is not None else _Slot("", as_of, as_of),
                    once=is_last,
                    activation=activation,
                    window_start=start,
                    as_of=as_of,
                )

    def finish(self) -> ImportResult:
        """Sort the events by time and hand over the result."""
        self._pending.sort(key=lambda item: item[:3])
        self.result.events = [item[3] for item in self._pending]
        self.result.rejections.sort(key=lambda r: r.row)
        return self.result


def _read_rows(
    path: Path, loaded: LoadedMapping, limit: int | None
) -> tuple[list[str], Iterator[_Row], IO[str]]:
    """Open the table, check the mapping's columns against its header, and iterate its rows."""
    spec = loaded.mapping.input
    try:
        handle = path.open(encoding=spec.encoding, newline="")
    except OSError as exc:
        raise MappingError(f"{path}: cannot read the table: {exc.strerror}") from exc
    reader = csv.reader(handle, delimiter=spec.delimiter)
    try:
        if spec.header:
            try:
                columns = [c.strip() for c in next(reader)]
            except StopIteration:
                columns = []
        else:
            assert spec.columns is not None  # InputSpec._coherent
            columns = list(spec.columns)
    except (UnicodeDecodeError, csv.Error) as exc:
        handle.close()
        raise MappingError(f"{path}: cannot read the table's header: {exc}") from exc
    try:
        check_columns(loaded.mapping, loaded.lines, columns, source=loaded.source)
    except MappingError:
        handle.close()
        raise

    def rows() -> Iterator[_Row]:
        number = 0
        while limit is None or number < limit:
            line = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                return
            except (UnicodeDecodeError, csv.Error) as exc:
                raise MappingError(f"{path}:{line}: cannot read the table: {exc}") from exc
            if not cells:
                continue  # a blank line
            number += 1
            if len(cells) != len(columns):
                yield _Row(number, line, {})
                continue
            yield _Row(number, line, dict(zip(columns, cells, strict=True)))

    return columns, rows(), handle


def import_table(
    path: Path,
    loaded: LoadedMapping,
    *,
    limit: int | None = None,
    as_of: datetime | None = None,
) -> ImportResult:
    """Convert a table with a loaded mapping; ``limit`` reads only the first rows.

    ``as_of`` overrides the mapping's ``timeline.as_of``. Raises ``MappingError``
    (before any row is read) when the mapping names columns the table lacks,
    or when the table cannot be read at all.
    """
    started = time.perf_counter()
    if as_of is not None and as_of.tzinfo is None:
        as_of = as_of.replace(tzinfo=UTC)
    columns, rows, handle = _read_rows(path, loaded, limit)
    converter = _Converter(loaded, as_of)

    def checked(source: Iterator[_Row]) -> Iterator[_Row]:
        for row in source:
            if not row.cells:
                converter.result.rows_read += 1
                converter.reject(row, f"the row does not have the header's {len(columns)} fields")
                continue
            yield row

    try:
        if loaded.mapping.input.layout == "per_subscriber":
            converter.per_subscriber(checked(rows))
        else:
            converter.per_period(checked(rows))
    finally:
        handle.close()
    result = converter.finish()
    result.seconds = time.perf_counter() - started
    return result


# --- output -------------------------------------------------------------------------------


def write_events(result: ImportResult, out: IO[bytes]) -> None:
    """Write the events as NDJSON, one per line, in time order."""
    for line in result.events:
        out.write(line)
        out.write(b"\n")


def write_truth(result: ImportResult, path: Path) -> None:
    """Write the ground truth: one CSV line per subscriber, churned or not, and when."""
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subscriber_id", "churned", "churn_at", "kind"])
        for sid in sorted(result.subscribers):
            at, kind = result.churned.get(sid, ("", ""))
            writer.writerow([sid, 1 if at else 0, at, kind])


def post_events(
    lines: Sequence[bytes],
    ingest_url: str,
    *,
    batch_size: int = 1000,
    client: httpx.Client | None = None,
    attempts: int = 5,
    api_key: str | None = None,
) -> tuple[int, int]:
    """POST the events to ingest's ``/v1/events`` as NDJSON in batches; return (accepted, rejected).

    ``api_key`` (else ``CHURNWATCH_API_KEY``) needs the ``events:write`` scope.

    A 503 (the broker did not acknowledge) is retried after its ``Retry-After``
    (at most 30 s) up to ``attempts`` times: resending is safe, the event ids
    make repeats harmless. Any other error status raises ``httpx.HTTPStatusError``.
    """
    url = ingest_url.rstrip("/")
    if not url.endswith("/v1/events"):
        url += "/v1/events"
    own = client is None
    http = client or httpx.Client(timeout=60)
    accepted = rejected = 0
    try:
        for start in range(0, len(lines), batch_size):
            body = b"\n".join(lines[start : start + batch_size]) + b"\n"
            for attempt in range(1, attempts + 1):
                response = http.post(
                    url,
                    content=body,
                    headers={"Content-Type": "application/x-ndjson", **api_headers(api_key)},
                )
                if response.status_code != 503 or attempt == attempts:
                    break
                time.sleep(min(30.0, float(response.headers.get("Retry-After", "1"))))
            response.raise_for_status()
            answer = response.json()
            accepted += int(answer.get("accepted", 0))
            rejected += len(answer.get("rejected", []))
    finally:
        if own:
            http.close()
    return accepted, rejected


def run(
    file: Path,
    mapping: Path,
    *,
    out: Path | None,
    truth: Path | None,
    post: str | None,
    limit: int | None,
    as_of: str | datetime | None,
    console: Console,
) -> int:
    """The ``churnwatch import-table`` command; returns the exit code.

    0: imported (rows may have been rejected; the summary says how many).
    1: the table had rows but none could be imported, or posting failed.
    2: the mapping or the table cannot be used (nothing was written).
    """
    if isinstance(as_of, str):
        try:
            as_of = datetime.fromisoformat(as_of)
        except ValueError:
            console.print(f"--as-of {as_of!r} is not an ISO date or time", highlight=False)
            return 2
    try:
        loaded = load_mapping(mapping)
        result = import_table(file, loaded, limit=limit, as_of=as_of)
    except MappingError as exc:
        console.print(f"[red]cannot import[/red]\n{exc}", markup=True, highlight=False)
        return 2
    shown = 20
    for rejection in result.rejections[:shown]:
        console.print(f"{file}: {rejection}", markup=False, highlight=False)
    if len(result.rejections) > shown:
        console.print(f"... and {len(result.rejections) - shown} more rejected rows", markup=False)
    if out is not None or post is None:
        if out is None or str(out) == "-":
            write_events(result, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            with out.open("wb") as handle:
                write_events(result, handle)
    if truth is not None:
        write_truth(result, truth)
    types = ", ".join(f"{n} {t}" for t, n in sorted(result.by_type.items()))
    console.print(
        f"{result.table}: {result.rows_read} rows read, {len(result.rejections)} rejected, "
        f"{len(result.subscribers)} subscribers ({len(result.churned)} churned), "
        f"{len(result.events)} events written ({types or 'none'}) in {result.seconds:.1f}s",
        markup=False,
        highlight=False,
    )
    if result.latest is not None and result.latest > datetime.now(UTC) + timedelta(hours=1):
        console.print(
            f"[yellow]warning[/yellow]: events run up to {result.latest.isoformat()}, in the "
            "future; ingest refuses those (use --as-of or timeline.as_of)",
            markup=True,
            highlight=False,
        )
    if post is not None:
        try:
            accepted, refused = post_events(result.events, post)
        except (httpx.HTTPError, ValueError) as exc:
            console.print(f"[red]posting to {post} failed[/red]: {exc}", highlight=False)
            return 1
        console.print(f"posted to {post}: {accepted} accepted, {refused} refused", highlight=False)
        if refused:
            return 1
    if result.rows_read and not result.events:
        return 1
    return 0


__all__ = [
    "MAPPINGS_DIR",
    "Derivation",
    "EventSpec",
    "ImportResult",
    "LoadedMapping",
    "Mapping",
    "MappingError",
    "Rejection",
    "import_table",
    "load_mapping",
    "parse_mapping",
    "parse_offset",
    "post_events",
    "run",
    "write_events",
    "write_truth",
]
