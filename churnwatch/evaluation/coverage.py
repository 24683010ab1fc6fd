"""Which source columns of an imported table reach which contract field and scoring feature.

Read from the mapping itself: each event's ``fields:`` derivations and the
columns they read (through any nesting: sums, defaults, operands), the
``timeline.tenure`` columns behind ``{timeline: activation}``, and the
``when:``/``repeat:`` columns that decide whether (and how often) an event
exists; then ``services.scoring.features.FEATURE_SOURCES`` (feature -> the
``event_type.field`` s it reads) says which features read each field.

A field named with dots (``handset.age_months`` on a ``subscriber`` event:
contract v2) is the field ``subscriber.handset.age_months``; a feature
source matches it when it names that field or an enclosing one
(``subscriber.handset``). A source may be narrowed to events whose field has
a given constant, ``cdr.count[service=voice|sms]``: a ``cdr`` event whose
``service`` is a constant outside those values does not reach it (one whose
``service`` comes from a column might, and counts).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel

from churnwatch.importer import Derivation, EventSpec, ImportResult, LoadedMapping

_CONDITION = re.compile(
    r"^(?P<field>[^\[\]]+)(?:\[(?P<key>[a-z_][a-z0-9_.]*)=(?P<values>[^\]]*)\])?$"
)


def _walk(obj: Any) -> Iterator[Derivation]:
    """Every derivation inside ``obj`` (itself included), through any model, list or dict."""
    if isinstance(obj, Derivation):
        yield obj
    if isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _walk(getattr(obj, name))
    elif isinstance(obj, list | tuple):
        for item in obj:
            yield from _walk(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _walk(item)


def columns_read(obj: Any, tenure: Iterable[str] = ()) -> set[str]:
    """The columns a derivation (or any part of a mapping) reads.

    ``tenure``: the columns of ``timeline.tenure``, read by ``{timeline: activation}``.
    """
    out: set[str] = set()
    for d in _walk(obj):
        if d.column is not None:
            out.add(d.column)
        if d.timeline == "activation":
            out.update(tenure)
    return out


def _constant(spec: EventSpec, name: str) -> object | None:
    d = spec.fields.get(name)
    if d is not None and d.is_plain_constant:
        return d.constant
    return None


def source_reads(source: str, field: str, spec: EventSpec) -> bool:
    """Whether the feature source ``source`` reads ``field`` as filled by ``spec``."""
    match = _CONDITION.match(source)
    if match is None:
        return False
    wanted = match["field"]
    if not (field == wanted or field.startswith(wanted + ".") or wanted.startswith(field + ".")):
        return False
    key = match["key"]
    if key is None:
        return True
    if wanted.split(".", 1)[0] != spec.type:
        return False
    value = _constant(spec, key)
    if value is None:
        return True  # from a column, or absent: it may take one of the values
    text = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return text in {v.strip() for v in match["values"].split("|")}


def features_reading(
    field: str, spec: EventSpec, sources: Mapping[str, Sequence[str]]
) -> list[str]:
    """The features that read ``field`` of an event made by ``spec``."""
    return sorted(
        f for f, srcs in sources.items() if any(source_reads(s, field, spec) for s in srcs)
    )


def _default_sources() -> dict[str, tuple[str, ...]]:
    from services.scoring.features import FEATURE_SOURCES

    return dict(FEATURE_SOURCES)


def label_columns(loaded: LoadedMapping) -> set[str]:
    """Columns the ``churn`` events read (``when``, ``repeat``, fields): the label.

    Every column a churn event reads carries the label (or, like a churn
    reason, is filled only for churners), so none may be a baseline input.
    """
    return set().union(*(columns_read(s) for s in loaded.mapping.events if s.type == "churn"))


def id_columns(loaded: LoadedMapping) -> set[str]:
    """The subscriber id column and the period column (per-period tables), if any."""
    m = loaded.mapping
    out = {m.subscriber_id.column} if m.subscriber_id.column else set()
    if m.input.period is not None:
        out.add(m.input.period.column)
    return out


def coverage(
    loaded: LoadedMapping,
    header: Sequence[str],
    sources: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """The coverage table: column -> contract fields -> features (see the module doc).

    Returns ``columns`` (every column of the table, in order, with its role
    ``id``, ``label`` or null, the fields it reaches and the features those
    read), ``columns_reaching_no_feature`` (inputs that no feature sees),
    ``fields`` (every field the mapping fills, constants included, with its
    columns and features) and ``features_without_input`` (features no field of
    the mapping reaches).
    """
    sources = sources if sources is not None else _default_sources()
    m = loaded.mapping
    tenure = columns_read(m.timeline.tenure) if m.timeline.tenure is not None else set()
    reaches: dict[str, set[str]] = defaultdict(set)  # column -> fields
    feats: dict[str, set[str]] = defaultdict(set)  # column -> features
    fields: dict[str, tuple[set[str], set[str]]] = {}
    reached: set[str] = set()

    def record(field: str, cols: set[str], found: set[str]) -> None:
        """``cols`` fill ``field``, which ``found`` features read."""
        entry = fields.setdefault(field, (set(), set()))
        entry[0].update(cols)
        entry[1].update(found)
        for c in cols:
            reaches[c].add(field)
            feats[c] |= found

    for spec in m.events:
        if spec.type == "churn":
            continue
        spec_features: set[str] = set()
        for name, d in sorted(spec.fields.items()):
            field = f"{spec.type}.{name}"
            found = set(features_reading(field, spec, sources))
            spec_features |= found
            record(field, columns_read(d, tenure), found)
        # Whether the event exists (and when) feeds the features of its fields and
        # those reading its time: ``cdr.occurred_at`` (days since activity), ...
        spec_features |= set(features_reading(f"{spec.type}.occurred_at", spec, sources))
        reached |= spec_features
        for name in ("when", "repeat"):
            d = getattr(spec, name)
            if d is None:
                continue
            record(f"{spec.type}.({name})", columns_read(d, tenure), spec_features)
    labels = label_columns(loaded)
    ids = id_columns(loaded)
    rows = []
    for c in header:
        role = "id" if c in ids else "label" if c in labels else None
        rows.append(
            {
                "column": c,
                "role": role,
                "fields": sorted(reaches.get(c, ())),
                "features": sorted(feats.get(c, ())),
            }
        )
    return {
        "columns": rows,
        "columns_reaching_no_feature": [
            r["column"] for r in rows if r["role"] is None and not r["features"]
        ],
        "fields": [
            {"field": f, "columns": sorted(cols), "features": sorted(fs)}
            for f, (cols, fs) in sorted(fields.items())
        ],
        "features_without_input": sorted(set(sources) - reached),
    }


def _generic_reason(reason: str) -> str:
    # A rejection's text names the row's own values (quoted) and numbers; without
    # them, rows refused for the same reason fall together.
    text = re.sub(r"'[^']*'", "'…'", reason)
    return re.sub(r"\d+(?:\.\d+)?", "N", text)


def rejections_by_reason(result: ImportResult) -> dict[str, int]:
    """Rejected rows by reason: the importer's ``rejected_by_reason()`` when it has one.

    Otherwise the rejections counted by their text with the row's own values
    (quoted) and numbers replaced, most frequent first.
    """
    method = getattr(result, "rejected_by_reason", None)
    if callable(method):
        counted = dict(method())
    else:
        counted = dict(Counter(_generic_reason(r.reason) for r in result.rejections))
    return dict(sorted(counted.items(), key=lambda kv: (-kv[1], kv[0])))
