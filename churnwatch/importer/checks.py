"""Loading a mapping: the checks that need the contract, the line index or the header.

A bad mapping is refused before any data row is read, each problem as
``mapping.yaml:LINE: field: message`` (:mod:`shared.yamlconf`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from churnwatch.importer.contract import PAYLOADS, FieldInfo
from churnwatch.importer.model import MAPPINGS_DIR, Derivation, EventSpec, Mapping, MappingError
from churnwatch.importer.values import _coerce, _from_yaml, _RowError
from shared.yamlconf import LineIndex, load_model, locate

Path_ = tuple[Any, ...]


def _walk(d: Derivation, path: Path_) -> Iterator[tuple[Path_, Derivation]]:
    """Every derivation inside ``d`` (itself included) with its key path in the document."""
    yield path, d
    for name in ("sum", "min", "max"):
        items: list[Derivation] | None = getattr(d, name)
        for i, item in enumerate(items or ()):
            yield from _walk(item, (*path, name, i))
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


def field_info(event_type: str, name: str) -> FieldInfo:
    """The contract's field a loaded mapping's ``fields:`` key names (checked at load)."""
    info = PAYLOADS[event_type].lookup(name)
    assert isinstance(info, FieldInfo), f"{event_type}.{name} was checked when the mapping loaded"
    return info


def _check_fields(spec: EventSpec, problem: Callable[[Path_, str], None], at: Path_) -> None:
    """The spec's ``fields:`` against the contract: unknown names, missing required ones."""
    payload = PAYLOADS[spec.type]
    for fname in spec.fields:
        found = payload.lookup(fname)
        if isinstance(found, str):
            problem((*at, "fields", fname), found)
    used = {f.partition(".")[0] for f in spec.fields if "." in f}
    missing = [
        f
        for f, info in payload.fields.items()
        if info.required and f not in spec.fields and ("." not in f or f.partition(".")[0] in used)
    ]
    if missing:
        problem((*at, "fields"), f"{spec.type} needs {', '.join(missing)}")
    for name, info in payload.dicts.items():
        keys = [f for f in spec.fields if f.partition(".")[0] == name]
        if info.max_entries is not None and len(keys) > info.max_entries:
            problem(
                (*at, "fields", keys[info.max_entries]),
                f"{spec.type}.{name} takes at most {info.max_entries} entries",
            )


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
        _check_fields(spec, problem, ("events", i))
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
        info = (
            PAYLOADS[owner.type].lookup(path[-1])
            if owner is not None and path[2] == "fields"
            else None
        )
        for sub_path, d in _walk(top, path):
            if d.timeline in ("period", "period_start", "period_end") and (
                owner is None or owner.selection == "once"
            ):
                problem((*sub_path, "timeline"), f"timeline: {d.timeline} needs a period")
            if d.timeline == "activation" and mapping.timeline.tenure is None:
                problem((*sub_path, "timeline"), "timeline: activation needs timeline.tenure")
        if not isinstance(info, FieldInfo) or owner is None:
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
    elif (
        d.map is not None
        and d.yes_no is None
        and all(getattr(d, n) is None for n in ("multiply", "scale", "divide", "clamp", "round"))
    ):
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
