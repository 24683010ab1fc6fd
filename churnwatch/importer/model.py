"""The mapping model: what a mapping file may say, checked by pydantic as it loads.

Everything here is about the document itself (keys, types, coherent
combinations); checks that need the event contract, the line index or the
table's header are in :mod:`churnwatch.importer.checks`.
"""

from __future__ import annotations

import codecs
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
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
    "contact",
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
    "contact": ("period", timedelta(0), "all"),
    "churn": ("as_of", timedelta(0), "once"),
    "reactivation": ("as_of", timedelta(0), "once"),
    "billing": ("period_end", timedelta(days=-1), "all"),
    "payment": ("period_end", timedelta(days=-1), "all"),
    "arrears": ("period_end", timedelta(days=-1), "all"),
    "stop_notice": ("period_end", timedelta(days=-1), "all"),
}
STANDARD_YES = ("yes", "y", "true", "t", "1")
STANDARD_NO = ("no", "n", "false", "f", "0")

_OFFSET = re.compile(r"^\s*([+-]?)\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}


class MappingError(ValueError):
    """A mapping that cannot be used; the message names the file and line of each problem."""


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


class Clamp(_Strict):
    """Bounds a number: below ``low`` becomes ``low``, above ``high`` becomes ``high``."""

    low: float | None = Field(default=None, allow_inf_nan=False)
    high: float | None = Field(default=None, allow_inf_nan=False)

    @model_validator(mode="after")
    def _coherent(self) -> Clamp:
        if self.low is None and self.high is None:
            raise ValueError("clamp needs low, high or both")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ValueError(f"clamp's low ({self.low:g}) is above its high ({self.high:g})")
        return self


SOURCES = ("column", "constant", "sum", "min", "max", "previous_from_pct_change", "timeline")
"""The keys of a derivation that give its value (exactly one per derivation)."""

NUMERIC_TRANSFORMS = ("multiply", "scale", "divide", "clamp", "round", "bands")
"""Transforms that need a number (none of them goes with ``yes_no``)."""


class Derivation(_Strict):
    """How one value is computed from a row: one source, then blank handling and transforms.

    Sources (exactly one): ``column``, ``constant``, ``sum``, ``min``, ``max``,
    ``previous_from_pct_change``, ``timeline``. Transforms, in this order:
    ``map`` (with ``unmapped``), ``yes_no``, ``multiply`` / ``scale``,
    ``divide``, ``clamp``, ``round``, ``bands``.

    Blanks: an empty cell, a division by zero, a map entry of null... make the
    value blank, and so does a blank operand (of ``sum``, ``min``, ``max``,
    ``multiply``, ``divide``, ``previous_from_pct_change``) unless that
    operand has a ``default`` of its own. ``default`` replaces a blank value
    (``default: null`` leaves the field out, so the contract's default
    applies); without a default a blank rejects the row, naming the column.
    """

    column: str | None = Field(default=None, min_length=1)
    constant: Scalar | datetime | date | None = None
    sum: list[Operand] | None = Field(default=None, min_length=1)
    min: list[Operand] | None = Field(default=None, min_length=1)
    max: list[Operand] | None = Field(default=None, min_length=1)
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
    clamp: Clamp | None = None
    round: int | None = Field(default=None, ge=0, le=8)
    bands: dict[float, Scalar] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _coherent(self) -> Derivation:
        sources = [name for name in SOURCES if name in self.model_fields_set]
        if len(sources) != 1:
            given = f" (given: {', '.join(sources)})" if sources else ""
            raise ValueError(
                "give exactly one source: column, constant, sum, min, max, "
                f"previous_from_pct_change or timeline{given}"
            )
        if "unmapped" in self.model_fields_set and self.map is None:
            raise ValueError("unmapped needs a map")
        if self.multiply is not None and self.scale is not None:
            raise ValueError("scale is another name for multiply: give one of them")
        numeric = [n for n in NUMERIC_TRANSFORMS if getattr(self, n) is not None]
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
            and self.map is None
            and self.yes_no is None
            and all(getattr(self, n) is None for n in NUMERIC_TRANSFORMS)
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
