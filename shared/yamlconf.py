"""YAML configuration files whose errors name the file and the line.

Operators edit churnwatch's YAML files by hand (the alerting rules, the
history-import mappings). A typo must stop the program with a message they can
act on, so this module reads a document twice: once as data for pydantic to
validate, once as a node tree that gives every key path its line. A pydantic
error then becomes ``file:LINE: dotted.field: message``.

It also reads YAML 1.2 booleans (only ``true``/``false``): YAML 1.1 reads
``on``, ``off``, ``yes`` and ``no`` as booleans, which would turn a trigger key
``on:`` into ``True`` and a yes/no value table into booleans.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

LineIndex = dict[tuple[Any, ...], int]
"""Key path (mapping keys and sequence indexes) -> 1-based line in the document."""

M = TypeVar("M", bound=BaseModel)


class Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true/false."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and line."""


def _line_index(node: yaml.Node, path: tuple[Any, ...], out: LineIndex) -> None:
    """Map each key path in the YAML document to its 1-based line."""
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            k = key.value
            out[(*path, k)] = key.start_mark.line + 1
            _line_index(value, (*path, k), out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _line_index(item, (*path, i), out)


def parse_yaml(
    text: str, *, source: str, error: type[ValueError] = ConfigError
) -> tuple[Any, LineIndex]:
    """Parse a YAML document into ``(data, line index)``.

    Raises ``error`` (``ConfigError`` unless the caller has its own subclass)
    naming the line when the text is not valid YAML. An empty document gives
    ``(None, {})``.
    """
    try:
        root = yaml.compose(text, Loader=Loader)
        data = yaml.load(text, Loader=Loader)  # noqa: S506 - Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise error(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    lines: LineIndex = {}
    if root is not None:
        _line_index(root, (), lines)
    return data, lines


def locate(lines: LineIndex, loc: Sequence[Any], *, missing: bool = False) -> tuple[str, int]:
    """The dotted field path of an error location and the line it is on.

    Pydantic's ``loc`` also holds union tags (``rules.0.trigger.score.threshold``)
    that are not keys in the document: a part that is not a key is such a tag
    and is dropped, except the last part of a missing-key error (the key). The
    line is that of the deepest part of the path present in the document (the
    enclosing mapping, when a required key is missing).
    """
    path: tuple[Any, ...] = ()
    shown: list[str] = []
    for i, part in enumerate(loc):
        if (*path, part) in lines:
            path = (*path, part)
            shown.append(str(part))
        elif missing and i == len(loc) - 1:
            shown.append(str(part))
    return ".".join(shown) or "(top)", lines.get(path, 1)


def problems(exc: ValidationError, lines: LineIndex, *, source: str) -> list[str]:
    """One ``source:LINE: dotted.field: message`` line per error of a validation."""
    out = []
    for err in exc.errors(include_url=False):
        dotted, line = locate(lines, err["loc"], missing=err["type"] == "missing")
        out.append(f"{source}:{line}: {dotted}: {err['msg']}")
    return out


def load_model(
    model: type[M],
    text: str,
    *,
    source: str,
    error: type[ValueError] = ConfigError,
    not_mapping: str = "the file must be a YAML mapping",
) -> tuple[M, LineIndex]:
    """Parse ``text`` and validate it as ``model``; return it with its line index.

    Every problem becomes one line of the raised ``error``, naming the line.
    ``not_mapping`` is the message when the document is not a mapping at all.
    The line index lets the caller name lines in checks of its own after
    pydantic's (see :func:`locate`).
    """
    data, lines = parse_yaml(text, source=source, error=error)
    if not isinstance(data, dict):
        raise error(f"{source}:1: {not_mapping}")
    try:
        return model.model_validate(data), lines
    except ValidationError as exc:
        raise error("\n".join(problems(exc, lines, source=source))) from exc
