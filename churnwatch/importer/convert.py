"""Converting a table's rows into events with a loaded mapping."""

from __future__ import annotations

import csv
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import TypeAdapter, ValidationError

from churnwatch.importer.checks import LoadedMapping, check_columns, field_info
from churnwatch.importer.contract import Kind, needs_version_2
from churnwatch.importer.model import Derivation, EventSpec, MappingError
from churnwatch.importer.result import ImportResult, Rejection
from churnwatch.importer.timeline import (
    _add_months,
    _minus_tenure,
    _month_start,
    _select,
    _slot,
    _spread,
    _window,
)
from churnwatch.importer.values import (
    _coerce,
    _Ctx,
    _evaluate,
    _iso,
    _money,
    _number,
    _Row,
    _RowError,
    _Slot,
    _truthy,
)
from shared.events import EVENT_ADAPTER, SubscriberId, derive_id

_SUBSCRIBER_ID: TypeAdapter[str] = TypeAdapter(SubscriberId)
# cdr fields that add up: split across the records of a ``split`` in proportion to count.
_ADDITIVE = ("duration_s", "bytes", "charge")
_MAX_REPEAT = 10_000


def _apportion(total: int, weights: list[int]) -> list[int]:
    """``total`` shared out in proportion to ``weights`` in whole numbers (largest remainder).

    The shares add up to ``total``; none is above its exact quota rounded up,
    so with ``total <= sum(weights)`` none is above its weight. Ties go to the
    earlier share.
    """
    whole = sum(weights)
    quotas = [divmod(total * w, whole) for w in weights]
    shares = [q for q, _ in quotas]
    left = total - sum(shares)
    for i in sorted(range(len(weights)), key=lambda i: (-quotas[i][1], i))[:left]:
        shares[i] += 1
    return shares


def _split_cdr(payload: dict[str, Any], parts: int) -> list[dict[str, Any]]:
    """A period's usage record as up to ``parts`` records, count and totals shared out.

    ``distinct_counterparts`` is shared out like a total, in proportion to
    count, so the records' distinct counts add up to the period's and none is
    above its record's count (a feature summing them over the period gets the
    table's figure back).
    """
    count = int(payload.get("count", 1))
    n = min(parts, count)
    base, extra = divmod(count, n)
    shares = [base + (1 if i < extra else 0) for i in range(n)]
    distinct = payload.get("distinct_counterparts")
    distinct_shares: list[int] | None = None
    if distinct is not None:
        if distinct > count:
            raise _RowError(
                f"cdr.distinct_counterparts: {distinct} is more than the count ({count})",
                "contract:cdr.distinct_counterparts",
            )
        distinct_shares = _apportion(distinct, shares)
    out = []
    for i, share in enumerate(shares):
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
        if distinct_shares is not None:
            part["distinct_counterparts"] = distinct_shares[i]
        out.append(part)
    return out


def _put(payload: dict[str, Any], name: str, value: Any) -> None:
    """Set a payload field; ``handset.age_months`` goes into the nested ``handset`` object."""
    head, dot, rest = name.partition(".")
    if dot:
        payload.setdefault(head, {})[rest] = value
    else:
        payload[name] = value


def _contract_kind(event_type: str, loc: tuple[int | str, ...]) -> str:
    """The reason class of a contract refusal: ``contract:<type>.<field>`` (no list indices)."""
    parts = [str(p) for p in loc[1:] if not isinstance(p, int)]
    if parts[:1] == ["payload"] and len(parts) > 1:
        parts = parts[1:]
    return f"contract:{'.'.join([event_type, *parts])}"


def _evaluation_order(spec: EventSpec) -> list[tuple[str, Derivation, Kind]]:
    """The spec's fields with their kinds, in the order they are computed.

    A cdr's ``count`` comes first: a count of 0 makes no record, so the other
    fields (an average per call, blank or a division by that 0) need no value then.
    """
    fields = [(name, d, field_info(spec.type, name).kind) for name, d in spec.fields.items()]
    if spec.type == "cdr":
        fields.sort(key=lambda item: item[0] != "count")  # stable: the rest keep their order
    return fields


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
        # Per event spec: its fields with their kinds (looked up once, not per row), and
        # its schema version: 2 when it makes a version 2 type or fills a version 2
        # field, so that a mapping using neither writes exactly what it wrote before.
        self._fields = [_evaluation_order(s) for s in m.events]
        self._versions = [2 if needs_version_2(s.type, list(s.fields)) else 1 for s in m.events]

    # -- per row --

    def subscriber_id(self, row: _Row) -> str:
        """The row's subscriber id (from its column, or generated from the row number)."""
        spec = self.mapping.subscriber_id
        if spec.column is None:
            raw = f"{spec.prefix}{row.number:0{spec.width}d}"
        else:
            cell = row.cells[spec.column].strip()
            if not cell or cell in self.blanks:
                raise _RowError(
                    f"the subscriber id column {spec.column!r} is blank", f"blank:{spec.column}"
                )
            raw = spec.prefix + cell
        try:
            return _SUBSCRIBER_ID.validate_python(raw)
        except ValidationError:
            raise _RowError(
                f"{raw!r} is not a subscriber id (1-64 letters, digits and ._:-)",
                "bad_subscriber_id",
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
            as_of,
            _number(value, "timeline.tenure", tenure.column),
            self.mapping.timeline.tenure_unit,
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
    ) -> bool:
        """Make this row's events: for its own period (per_period) or every selected one.

        Returns False when the row was rejected (none of its events is kept).
        """
        m = self.mapping
        made: list[tuple[datetime, int, dict[str, Any]]] = []
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
                    made.extend((at, i, payload) for at, payload in self._events(spec, i, ctx))
        except _RowError as exc:
            self.reject(row, str(exc), exc.kind)
            return False
        events = []
        for index, (at, spec_index, payload) in enumerate(made):
            event_type = m.events[spec_index].type
            event: dict[str, Any] = {
                "event_id": str(derive_id(m.table, row.number, index)),
                "event_type": event_type,
                "subscriber_id": sid,
                "occurred_at": _iso(at),
                "source": m.source,
                "schema_version": self._versions[spec_index],
                "payload": payload,
            }
            try:
                EVENT_ADAPTER.validate_python(event)
            except ValidationError as exc:
                err = exc.errors(include_url=False)[0]
                loc = ".".join(str(p) for p in err["loc"][1:])
                self.reject(
                    row,
                    f"{event_type} event: {loc}: {err['msg']}",
                    _contract_kind(event_type, tuple(err["loc"])),
                )
                return False
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
        return True

    def _events(
        self, spec: EventSpec, index: int, ctx: _Ctx
    ) -> Iterator[tuple[datetime, dict[str, Any]]]:
        where = f"events.{index} ({spec.type})"
        if spec.when is not None and not _truthy(
            _evaluate(spec.when, ctx, f"{where} when"), f"{where} when", spec.when.column
        ):
            return
        repeat = 1
        if spec.repeat is not None:
            value = _evaluate(spec.repeat, ctx, f"{where} repeat")
            number = (
                Decimal(0)
                if value is None
                else _number(value, f"{where} repeat", spec.repeat.column)
            )
            repeat = int(number.to_integral_value(ROUND_HALF_EVEN))
            if repeat < 0:
                raise _RowError(
                    f"{where} repeat: {repeat} is negative", f"negative:{spec.type}.repeat"
                )
            if repeat > _MAX_REPEAT:
                raise _RowError(
                    f"{where} repeat: {repeat} is more than {_MAX_REPEAT}",
                    f"too_many:{spec.type}.repeat",
                )
        if repeat == 0:
            return
        values: dict[str, Any] = {}
        for name, d, kind in self._fields[index]:
            what = f"{spec.type}.{name}"
            value = _coerce(kind, _evaluate(d, ctx, what), what, d.column)
            if spec.type == "cdr" and name == "count" and value is not None:
                if value < 0:
                    raise _RowError(f"{what}: {value} is negative", f"negative:{what}")
                if value == 0:
                    return  # no usage in the period: nothing to record
            values[name] = value
        payload: dict[str, Any] = {}
        for name in spec.fields:  # in the mapping's order, as always (the same bytes)
            if values[name] is not None:
                _put(payload, name, values[name])
        payloads = [payload]
        if spec.type == "cdr" and spec.split > 1:
            payloads = _split_cdr(payload, spec.split)
        n = repeat * len(payloads)
        times = _spread(spec.anchor, spec.shift, n, ctx)
        for j, at in enumerate(times):
            yield at, payloads[j % len(payloads)]

    def reject(self, row: _Row, reason: str, kind: str) -> None:
        """Record a refused row (once) with its reason and reason class."""
        if row.number not in self._rejected_rows:
            self._rejected_rows.add(row.number)
            self.result.rejections.append(Rejection(row.number, row.line, reason, kind))

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
                    raise _RowError(
                        f"subscriber {sid} is already on row {seen[sid]}", "duplicate_subscriber"
                    )
                activation = self.activation(row, as_of)
            except _RowError as exc:
                self.reject(row, str(exc), exc.kind)
                continue
            seen[sid] = row.number
            own, start = _window(slots, activation, as_of, m.timeline.before_activation)
            imported = self.emit_row(
                row,
                sid,
                own,
                None,
                once=True,
                activation=activation,
                window_start=start,
                as_of=as_of,
            )
            self.result.rows_imported += int(imported)

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
                        f"period {cell!r} does not match the format {spec.format!r}", "bad_period"
                    ) from None
            except _RowError as exc:
                self.reject(row, str(exc), exc.kind)
                continue
            groups.setdefault(sid, []).append((moment.year, moment.month, row))
        latest_end = max(
            (_add_months(_month_start(y, mo), 1) for g in groups.values() for y, mo, _ in g),
            default=datetime(1970, 1, 1, tzinfo=UTC),
        )
        as_of = self.as_of or latest_end
        for sid, group in groups.items():
            self._subscriber_periods(sid, group, as_of)

    def _subscriber_periods(
        self, sid: str, group: list[tuple[int, int, _Row]], as_of: datetime
    ) -> None:
        """One subscriber's rows of a ``per_period`` table, in period order."""
        m = self.mapping
        group.sort(key=lambda item: (item[0], item[1], item[2].number))
        slots: list[_Slot] = []
        owners: list[tuple[_Row, _Slot]] = []
        for year, month, row in group:
            if slots and slots[-1].period == f"{year:04d}-{month:02d}":
                self.reject(
                    row,
                    f"{sid} has period {slots[-1].period} twice (row {owners[-1][0].number})",
                    "duplicate_period",
                )
                continue
            if _month_start(year, month) >= as_of:
                self.reject(
                    row, f"period {year:04d}-{month:02d} is not before as_of", "period_after_as_of"
                )
                continue
            slot = _slot(year, month, as_of)
            slots.append(slot)
            owners.append((row, slot))
        if not owners:
            return
        last_row = owners[-1][0]
        try:
            activation = self.activation(last_row, as_of)
        except _RowError as exc:
            for row, _ in owners:
                self.reject(row, f"{sid}: {exc}", exc.kind)
            return
        kept, start = _window(slots, activation, as_of, m.timeline.before_activation)
        by_period = {s.period: s for s in kept}
        for row, slot in owners:
            own = by_period.get(slot.period)
            is_last = row is last_row
            if own is None and not is_last:
                # A period before activation (before_activation: drop): the row is
                # read and accepted, and the mapping says it makes no events.
                self.result.rows_imported += 1
                continue
            # The last row's period may be before activation: it still carries the
            # once-per-subscriber events (profile, churn), but no per-period ones
            # (a slot that is in no selection).
            imported = self.emit_row(
                row,
                sid,
                kept,
                own if own is not None else _Slot("", as_of, as_of),
                once=is_last,
                activation=activation,
                window_start=start,
                as_of=as_of,
            )
            self.result.rows_imported += int(imported)

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
                yield _Row(number, line, {}, len(cells))
                continue
            yield _Row(number, line, dict(zip(columns, cells, strict=True)), len(cells))

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
            if row.width != len(columns):
                converter.result.rows_read += 1
                converter.reject(
                    row,
                    f"the row does not have the header's {len(columns)} fields",
                    "short_row" if row.width < len(columns) else "long_row",
                )
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
