"""What the event contract says about each payload field a mapping may fill.

The mapping's ``fields:`` name payload fields of the contract
(:mod:`shared.events`): flat ones (``monthly_value``), the fields of a nested
object (``handset.age_months``, ``plan.international``) and the entries of a
dict (``attributes.payment_method``). Each gets a *kind* (how a cell's text
becomes its JSON value) and a validator with the field's constraints, so that
values written in the mapping are checked when it loads, and a field name the
contract does not have is a mapping error naming its line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import AwareDatetime, BaseModel, TypeAdapter, ValidationError

from shared.events import EVENT_MODELS, V2_EVENT_TYPES, V2_FIELDS

Kind = Literal["money", "int", "float", "bool", "datetime", "str", "list"]
"""How a value becomes a field's JSON value (money is a string, like the contract's)."""


@dataclass(frozen=True)
class FieldInfo:
    """One payload field (or one field of a nested object) a mapping may fill."""

    kind: Kind
    adapter: TypeAdapter[Any]
    required: bool


@dataclass(frozen=True)
class DictInfo:
    """A dict field (``attributes``): any key the contract's key type accepts."""

    key: TypeAdapter[Any]
    value: FieldInfo
    max_entries: int | None


@dataclass(frozen=True)
class PayloadInfo:
    """The fields of one event type's payload, as a mapping names them."""

    event_type: str
    fields: dict[str, FieldInfo]
    """Flat fields by name, and nested objects' fields as ``object.field``."""
    objects: dict[str, tuple[str, ...]]
    """Nested objects (``handset``, ``plan``) and their fields' names."""
    dicts: dict[str, DictInfo]
    """Dict fields (``attributes``) by name."""
    version_2: frozenset[str]
    """Top-level fields that need ``schema_version: 2``."""

    def names(self) -> list[str]:
        """Every name a mapping may use, for error messages (``attributes.<key>`` for dicts)."""
        shown = [n for n in self.fields if "." not in n]
        shown += [f"{o}.<{'|'.join(sub)}>" for o, sub in self.objects.items()]
        shown += [f"{d}.<key>" for d in self.dicts]
        return shown

    def lookup(self, name: str) -> FieldInfo | str:
        """The field a mapping's ``fields:`` key names, or why there is none (a message)."""
        if name in self.fields:
            return self.fields[name]
        etype = self.event_type
        head, dot, rest = name.partition(".")
        if name in self.objects:
            example = ", ".join(f"{name}.{s}" for s in self.objects[name][:2])
            return f"{etype}.{name} is an object: map its fields, e.g. {example}"
        if name in self.dicts:
            return f"{etype}.{name} is a dict: map its entries as {name}.<key>"
        if dot and head in self.objects:
            return f"{etype}.{head} has no field {rest!r} (it has {', '.join(self.objects[head])})"
        if dot and head in self.dicts:
            info = self.dicts[head]
            try:
                info.key.validate_python(rest)
            except ValidationError as exc:
                message = exc.errors(include_url=False)[0]["msg"]
                return f"{rest!r} is not a valid key of {etype}.{head}: {message}"
            return info.value
        return f"{etype} has no field {name!r} (it has {', '.join(self.names())})"


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


def _field_kind(annotation: Any) -> Kind:
    inner = _unwrap(annotation)
    if inner is Decimal:
        return "money"
    if inner is bool:
        return "bool"
    if inner is int:
        return "int"
    if inner is float:
        return "float"
    if get_origin(inner) is list:
        return "list"
    if isinstance(inner, type) and issubclass(inner, datetime | AwareDatetime):
        return "datetime"
    return "str"


def _constrained(annotation: Any, metadata: list[Any]) -> Any:
    """The field's type with its constraints (min_length, pattern, ge...), kept in metadata."""
    if not metadata:
        return annotation
    return Annotated.__class_getitem__((annotation, *metadata))  # type: ignore[attr-defined]


def _info(annotation: Any, metadata: list[Any], required: bool) -> FieldInfo:
    return FieldInfo(
        _field_kind(annotation), TypeAdapter(_constrained(annotation, metadata)), required
    )


def _max_length(metadata: list[Any]) -> int | None:
    for item in metadata:
        limit = getattr(item, "max_length", None)
        if isinstance(limit, int):
            return limit
    return None


def payload_info(
    event_type: str, payload: type[BaseModel], version_2: frozenset[str]
) -> PayloadInfo:
    """A payload model's fields as a mapping names them (nested objects and dicts expanded)."""
    fields: dict[str, FieldInfo] = {}
    objects: dict[str, tuple[str, ...]] = {}
    dicts: dict[str, DictInfo] = {}
    for name, finfo in payload.model_fields.items():
        inner = _unwrap(finfo.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            objects[name] = tuple(inner.model_fields)
            for sub, sinfo in inner.model_fields.items():
                fields[f"{name}.{sub}"] = _info(
                    sinfo.annotation, sinfo.metadata, sinfo.is_required()
                )
        elif get_origin(inner) is dict:
            key, value = get_args(inner)
            dicts[name] = DictInfo(
                TypeAdapter(key), _info(value, [], False), _max_length(finfo.metadata)
            )
        else:
            fields[name] = _info(finfo.annotation, finfo.metadata, finfo.is_required())
    return PayloadInfo(event_type, fields, objects, dicts, version_2)


def _payloads() -> dict[str, PayloadInfo]:
    out: dict[str, PayloadInfo] = {}
    for name, model in EVENT_MODELS.items():
        payload = model.model_fields["payload"].annotation
        assert isinstance(payload, type)
        assert issubclass(payload, BaseModel)
        out[name] = payload_info(name, payload, V2_FIELDS.get(name, frozenset()))
    return out


PAYLOADS = _payloads()
"""Per event type: the payload fields a mapping may fill."""

PAYLOAD_FIELDS: dict[str, dict[str, FieldInfo]] = {t: p.fields for t, p in PAYLOADS.items()}
"""Per event type: each field's kind, validator and whether it is required (nested as ``a.b``)."""

VERSION_2_TYPES: frozenset[str] = V2_EVENT_TYPES
"""Event types that exist only in version 2 of the contract (``contact``)."""


def needs_version_2(event_type: str, field_names: list[str]) -> bool:
    """True when events of this type with these mapped fields need ``schema_version: 2``."""
    if event_type in VERSION_2_TYPES:
        return True
    info = PAYLOADS.get(event_type)
    if info is None:
        return False
    return any(name.partition(".")[0] in info.version_2 for name in field_names)
