"""Evaluating derivations: a row's cells to the values of payload fields.

Errors carry a *reason class* besides their message (``blank:<column>``,
``not_a_number:<column>``, ...): the import counts rejected rows by it
(:meth:`churnwatch.importer.ImportResult.rejected_by_reason`). Where the
value came from a column, the class names the column; otherwise it names the
field (``cdr.count``, ``timeline.tenure``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from churnwatch.importer.model import (
    STANDARD_NO,
    STANDARD_YES,
    Derivation,
    TimelineValue,
    YesNo,
)

_FOUR_PLACES = Decimal("0.0001")
_EVENT_WHAT = re.compile(r"^events\.\d+ \((\w+)\) (\w+)")


class _RowError(Exception):
    """A row that cannot be mapped: the message says why, ``kind`` is its reason class."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Blank(Exception):
    """A blank value (empty cell, division by zero) where a value was needed.

    ``column`` is the blank cell's column; None for a value that came out blank
    (a division by zero, a map entry of null, a number below the lowest band).
    """

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column

    def kind(self, what: str) -> str:
        """The reason class of a row rejected for this blank."""
        return f"blank:{self.column}" if self.column else f"no_value:{target(what)}"


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
    cells: dict[str, str]  # empty when the row does not have the header's fields
    width: int = 0  # how many fields the row has


@dataclass(slots=True)
class _Ctx:
    row: _Row
    slot: _Slot | None
    as_of: datetime
    activation: datetime | None
    window_start: datetime
    blanks: frozenset[str]


def target(what: str) -> str:
    """What an error is about, without the detail: ``cdr.count``, ``complaint.repeat``.

    ``what`` is the prefix of an error message (``subscriber.monthly_value (sum
    item 1)``, ``events.3 (cdr) when``); the reason classes use this shorter
    form so that the same problem in different places counts as one class.
    """
    if m := _EVENT_WHAT.match(what):
        return f"{m.group(1)}.{m.group(2)}"
    return what.split(" (", 1)[0]


def _from_yaml(value: object) -> Value | None:
    """A value written in the mapping, as the evaluator's types."""
    if value is None or isinstance(value, bool | str | datetime):
        return value
    if isinstance(value, int | float):
        return Decimal(str(value))
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise _RowError(f"unsupported value {value!r}", "other")


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


def _number(value: Value, what: str, origin: str | None = None) -> Decimal:
    """The value as a number; ``origin`` (the column it came from) names the reason class."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            number = Decimal("NaN")
        if number.is_finite():
            return number
    raise _RowError(
        f"{what}: {_text(value)!r} is not a number", f"not_a_number:{origin or target(what)}"
    )


def _yes_no(value: Value, spec: YesNo, what: str, origin: str | None = None) -> bool:
    text = _text(value).strip().lower()
    if text in (v.lower() for v in spec.yes):
        return True
    if spec.no is None or text in (v.lower() for v in spec.no):
        return False
    raise _RowError(
        f"{what}: {_text(value)!r} is neither yes ({', '.join(spec.yes)}) nor no",
        f"not_yes_no:{origin or target(what)}",
    )


_STANDARD = YesNo(yes=list(STANDARD_YES), no=list(STANDARD_NO))


def _evaluate(d: Derivation, ctx: _Ctx, what: str, *, operand: bool = False) -> Value | None:
    """The value of ``d`` for this row and period; None means "leave the field out".

    A blank without a ``default`` rejects the row, unless ``d`` is an operand
    of another derivation (``operand``): then the blank goes up and makes the
    enclosing value blank, so that its ``default`` applies (docs/import.md,
    "Blanks"). The operand's own ``default``, when given, comes first.
    """
    try:
        value = _source(d, ctx, what)
        return _transform(d, value, ctx, what)
    except _Blank as blank:
        if not d.has_default:
            if operand:
                raise
            raise _RowError(f"{what}: {blank} and there is no default", blank.kind(what)) from None
        if d.default is None:
            return None
        return _evaluate(d.default, ctx, f"{what} (default)", operand=operand)


def _operand(d: Derivation, ctx: _Ctx, what: str) -> Decimal:
    value = _evaluate(d, ctx, what, operand=True)
    if value is None:  # `default: null` on an operand: nothing to compute with
        raise _Blank(f"{what} is left out")
    return _number(value, what, d.column)


def _operands(items: list[Derivation], ctx: _Ctx, what: str, name: str) -> list[Decimal]:
    return [_operand(item, ctx, f"{what} ({name} item {i})") for i, item in enumerate(items)]


def _source(d: Derivation, ctx: _Ctx, what: str) -> Value:
    if d.column is not None:
        cell = ctx.row.cells[d.column].strip()
        if not cell or cell in ctx.blanks:
            raise _Blank(f"column {d.column!r} is blank", d.column)
        return cell
    if d.sum is not None:
        return sum(_operands(d.sum, ctx, what, "sum"), Decimal(0))
    if d.min is not None:
        return min(_operands(d.min, ctx, what, "min"))
    if d.max is not None:
        return max(_operands(d.max, ctx, what, "max"))
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
    origin = d.column
    if d.map is not None:
        key = _text(value)
        if key in d.map:
            mapped = d.map[key]
        elif "unmapped" in d.model_fields_set:
            mapped = d.unmapped
        else:
            shown = ", ".join(repr(k) for k in list(d.map)[:8])
            raise _RowError(
                f"{what}: {key!r} is not in the map ({shown})",
                f"not_in_map:{origin or target(what)}",
            )
        result = _from_yaml(mapped)
        if result is None:
            raise _Blank(f"{key!r} maps to nothing")
        value = result
    if d.yes_no is not None:
        return _yes_no(value, d.yes_no, what, origin)
    factor = d.multiply or d.scale
    if factor is not None:
        value = _number(value, what, origin) * _operand(factor, ctx, f"{what} (multiply)")
    if d.divide is not None:
        divisor = _operand(d.divide, ctx, f"{what} (divide)")
        if divisor == 0:
            raise _Blank("division by zero")
        value = _number(value, what, origin) / divisor
    if d.clamp is not None:
        number = _number(value, what, origin)
        if d.clamp.low is not None:
            number = max(number, Decimal(str(d.clamp.low)))
        if d.clamp.high is not None:
            number = min(number, Decimal(str(d.clamp.high)))
        value = number
    if d.round is not None:
        value = _number(value, what, origin).quantize(Decimal(1).scaleb(-d.round), ROUND_HALF_EVEN)
    if d.bands is not None:
        number = _number(value, what, origin)
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


def _coerce(kind: str, value: Value | None, what: str, origin: str | None = None) -> Any:
    """A value as the payload field's JSON value (money as a string, like the contract's)."""
    if value is None:
        return None
    if kind == "money":
        return _money(_number(value, what, origin))
    if kind == "int":
        return int(_number(value, what, origin).to_integral_value(ROUND_HALF_EVEN))
    if kind == "float":
        return float(_number(value, what, origin))
    if kind == "bool":
        if isinstance(value, bool):
            return value
        return _yes_no(value, _STANDARD, what, origin)
    if kind == "datetime":
        if isinstance(value, datetime):
            return _iso(value)
        text = _text(value)
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return text  # the contract's validation names the problem
        return _iso(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
    if kind == "list":
        # A list field (handset.capabilities) from one cell: comma-separated items.
        return [item.strip() for item in _text(value).split(",") if item.strip()]
    return _text(value)


def _truthy(value: Value | None, what: str, origin: str | None = None) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, Decimal):
        return value != 0
    if isinstance(value, datetime):
        return True
    try:
        return _number(value, what, origin) != 0
    except _RowError:
        return _yes_no(value, _STANDARD, what, origin)
