"""README's Configuration table and the settings classes stay in step, row by row.

Every setting a service reads from the environment (a field of a settings class:
``services/*/settings.py``, the shared base ``shared/settings.py`` and its mixins,
the SMS gateway stand-in's ``GatewaySettings``) has a row; every row is a real
setting; the row's default is the code's; its "Used by" column names each
service that reads it, and no service that does not. The Ports table's settings
and ports are real too, and no doc names a setting that does not exist.

Which service reads a shared setting is found from the code: the modules a
service's entry point imports (shared/ and its own package, followed through
imports) and the attributes they read. Each failure lists exactly which names
are missing or wrong, and where. These tests need no broker and no database.
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from churnwatch.gateway import GatewaySettings
from shared.settings import BaseServiceSettings

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
SERVICES = ("ingest", "scoring", "alerting", "outreach")
STAND_IN = "SMS gateway stand-in"
# Besides the services and the stand-in, "Used by" may name these tools (not checked
# against the code: they build a service's settings object, or read one variable).
TOOLS = (
    "`churnwatch up`",
    "`churnwatch migrate`",
    "`churnwatch train`",
    "`alembic`",
)
# Shared settings a service's code path mentions but that do not apply to it, and why.
NOT_USED_DESPITE_THE_CODE = {
    ("KAFKA_BATCH_MAX_RECORDS", "scoring"): "its consumer passes SCORING_BATCH_MAX_RECORDS",
}
# A doc naming `SOMETHING` in one of these families means one of our settings.
SETTING_FAMILIES = (
    "ALERTING_",
    "AUTH_",
    "DATABASE_",
    "INGEST_",
    "KAFKA_",
    "OUTREACH_",
    "PHONE_",
    "RETENTION_",
    "SCORING_",
    "SMS_",
    "WORKBENCH_",
)
# What the Default column says for a setting that has no value by default.
NO_VALUE = ("unset", "empty")


@dataclass(frozen=True)
class Row:
    """One row of the Configuration table."""

    name: str
    default: str
    used_by: tuple[str, ...]
    line: int


def _section(text: str, title: str) -> tuple[str, int]:
    start = text.index(f"\n## {title}\n") + 1
    end = text.find("\n## ", start)
    return text[start : end if end != -1 else len(text)], text.count("\n", 0, start) + 1


def _cells(line: str) -> list[str]:
    # Split on the pipes of the table, not on escaped ones (`a\|b`) inside a cell.
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def _used_by(cell: str) -> tuple[str, ...]:
    """``ingest, scoring (consumer), `churnwatch up``` -> the names, without remarks."""
    parts = re.split(r",\s*(?![^()]*\))", cell)
    return tuple(re.sub(r"\s*\([^)]*\)$", "", p).strip() for p in parts if p.strip())


@cache
def table() -> dict[str, Row]:
    """The Configuration table's rows by variable name."""
    section, first = _section(README.read_text(encoding="utf-8"), "Configuration")
    rows: dict[str, Row] = {}
    for offset, line in enumerate(section.splitlines()):
        cells = _cells(line) if line.startswith("|") else []
        if len(cells) != 4 or not re.fullmatch(r"`[A-Z][A-Z0-9_]*`", cells[0]):
            continue
        name = cells[0].strip("`")
        assert name not in rows, f"README.md:{first + offset}: {name} has a second row"
        rows[name] = Row(name, cells[1], _used_by(cells[2]), first + offset)
    assert rows, "README.md has no Configuration table (| `NAME` | default | used by | meaning |)"
    return rows


@cache
def service_classes() -> dict[str, type[BaseServiceSettings]]:
    """Each service's settings class, found in services/<name>/settings.py."""
    found: dict[str, type[BaseServiceSettings]] = {}
    for name in SERVICES:
        module = importlib.import_module(f"services.{name}.settings")
        classes = [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, BaseServiceSettings)
            and value.__module__ == module.__name__
        ]
        assert len(classes) == 1, f"services/{name}/settings.py: expected one settings class"
        found[name] = classes[0]
    return found


def owners() -> dict[str, dict[str, FieldInfo]]:
    """Every environment variable -> {reader: its field}: services and the stand-in."""
    out: dict[str, dict[str, FieldInfo]] = {}
    readers: dict[str, type[BaseSettings]] = {**service_classes(), STAND_IN: GatewaySettings}
    for reader, cls in readers.items():
        for field, info in cls.model_fields.items():
            out.setdefault(field.upper(), {})[reader] = info
    return out


def aliases() -> set[str]:
    """Other names a setting is read under (``OUTREACH_PHONE_KEY``)."""
    names: set[str] = set()
    classes: list[type[BaseSettings]] = [*service_classes().values(), GatewaySettings]
    for cls in classes:
        for info in cls.model_fields.values():
            choices = getattr(info.validation_alias, "choices", ())
            names.update(c.upper() for c in choices if isinstance(c, str))
    return names


# --- which service's code reads a shared setting ---------------------------------------


def _module_path(name: str) -> Path | None:
    base = REPO / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, allowed: tuple[str, ...]) -> Iterable[str]:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from shared import db` imports a module; `from shared.db import x` a name.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        yield from (n for n in names if n == allowed[0] or n.startswith(allowed[1:]))


@cache
def code_of(service: str) -> tuple[Path, ...]:
    """The files of shared/ and services/<service>/ that its entry point imports."""
    allowed = ("shared", "shared.", f"services.{service}.")
    todo, seen = [f"services.{service}.__main__"], set()
    files: list[Path] = []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _module_path(name)
        if path is None:
            continue
        files.append(path)
        todo.extend(_imports(path, allowed))
        parent = name.rpartition(".")[0]
        if parent:
            todo.append(parent)  # a package's __init__ runs first
    return tuple(files)


@cache
def _attributes(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute))


_VALIDATORS = frozenset({"model_validator", "field_validator"})


@cache
def _accessors() -> dict[str, frozenset[str]]:
    """Field -> the settings methods that read it (``otlp_headers`` reads the OTLP headers).

    A service that calls such a method reads the field through it; a validator
    (decorated ``model_validator``/``field_validator``) only checks it.
    """
    found: dict[str, set[str]] = {}
    for path in (REPO / "shared" / "settings.py", *REPO.glob("services/*/settings.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
                continue
            decorators = {
                getattr(d.func if isinstance(d, ast.Call) else d, "id", "")
                for d in node.decorator_list
            }
            if decorators & _VALIDATORS:
                continue
            for sub in ast.walk(node):
                if (
                    isinstance(sub, ast.Attribute)
                    and isinstance(sub.value, ast.Name)
                    and sub.value.id == "self"
                ):
                    found.setdefault(sub.attr, set()).add(node.name)
    return {field: frozenset(methods) for field, methods in found.items()}


def readers_in_code(variable: str) -> dict[str, Path]:
    """The services whose code reads this shared setting, with a file that does."""
    field = variable.lower()
    names = {field} | _accessors().get(field, frozenset())
    found: dict[str, Path] = {}
    for service in SERVICES:
        for path in code_of(service):
            # A settings class's own validators check its fields: that is not a use.
            if path.name != "settings.py" and names & _attributes(path):
                found[service] = path
                break
    return found


# --- defaults ----------------------------------------------------------------------------


def _default(info: FieldInfo) -> Any:
    if info.default is PydanticUndefined and info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    value = info.default
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _documented_default_matches(cell: str, value: Any) -> bool:
    quoted = re.match(r"`([^`]*)`", cell)
    if quoted is None:  # words: "unset", "empty", "kind's default", "a development key"
        # "unset" and "empty" mean no value; other words explain one (not checked).
        return value is None or value == "" or not cell.startswith(NO_VALUE)
    text = quoted.group(1)
    if isinstance(value, bool):
        return text == str(value).lower()
    if isinstance(value, (int, float)):
        try:
            return float(text) == float(value)
        except ValueError:
            return False
    if isinstance(value, BaseModel):
        return text == "{}" and value == type(value)()
    return text == str(value)


# --- the tests ---------------------------------------------------------------------------


def _fail(problems: list[str], heading: str) -> None:
    assert not problems, heading + "\n  " + "\n  ".join(problems)


def test_every_setting_has_a_row() -> None:
    rows = table()
    missing = [
        f"{name} (read by {', '.join(sorted(readers))}; add: | `{name}` | default | "
        f"{', '.join(sorted(readers))} | meaning |)"
        for name, readers in sorted(owners().items())
        if name not in rows
    ]
    _fail(missing, "README.md Configuration table: no row for these settings:")


def test_every_row_is_a_setting() -> None:
    known = owners()
    stale = [
        f"README.md:{row.line}: {row.name} is no field of any settings class "
        "(services/*/settings.py, shared/settings.py, churnwatch/gateway.py)"
        for row in table().values()
        if row.name not in known
    ]
    _fail(stale, "README.md Configuration table: rows for settings that do not exist:")


def test_used_by_names_every_reader_and_no_other() -> None:
    problems: list[str] = []
    base = set(BaseServiceSettings.model_fields)
    for name, readers in sorted(owners().items()):
        row = table().get(name)
        if row is None:
            continue  # test_every_setting_has_a_row names it
        named = set(row.used_by)
        where = f"README.md:{row.line}: {name}"
        for unknown in sorted(named - {*SERVICES, STAND_IN, *TOOLS}):
            problems.append(f"{where}: 'Used by' names {unknown!r}, which reads no settings")
        if name.lower() in base:
            # A shared setting: the services whose code reads it.
            reading = readers_in_code(name)
            for (variable, service), _why in NOT_USED_DESPITE_THE_CODE.items():
                if variable == name:
                    reading.pop(service, None)
            expected = set(reading)
        else:
            expected = {r for r in readers if r != STAND_IN}  # its own field: it reads it
        if STAND_IN in readers:
            expected.add(STAND_IN)
        for service in sorted(expected - named):
            source = readers_in_code(name).get(service) if name.lower() in base else None
            how = f" ({source.relative_to(REPO)} reads it)" if source else ""
            problems.append(f"{where}: 'Used by' lacks {service}{how}")
        for service in sorted((named & {*SERVICES, STAND_IN}) - expected):
            problems.append(f"{where}: 'Used by' names {service}, whose code never reads it")
    _fail(problems, "README.md Configuration table: wrong 'Used by' column:")


def test_the_code_search_follows_a_service_s_imports_only() -> None:
    ingest = {str(p.relative_to(REPO)) for p in code_of("ingest")}
    assert {"services/ingest/app.py", "shared/consumer.py", "shared/db.py"} <= ingest
    assert not any(p.startswith(("services/scoring", "services/outreach")) for p in ingest)
    assert "shared/retention.py" not in ingest  # ingest purges nothing
    assert set(readers_in_code("RETENTION_DAYS")) == {"scoring", "alerting", "outreach"}


def test_the_exceptions_to_the_code_search_are_still_needed() -> None:
    stale = [
        f"{variable} for {service}: its code no longer mentions it; drop it from "
        "NOT_USED_DESPITE_THE_CODE"
        for (variable, service) in NOT_USED_DESPITE_THE_CODE
        if service not in readers_in_code(variable)
    ]
    _fail(stale, "tests/test_config_table.py:")


def test_defaults_are_the_code_defaults() -> None:
    problems: list[str] = []
    for name, readers in sorted(owners().items()):
        row = table().get(name)
        if row is None:
            continue
        for reader, info in sorted(readers.items()):
            value = _default(info)
            if not _documented_default_matches(row.default, value):
                shown = "(secret)" if isinstance(info.default, SecretStr) else repr(value)
                problems.append(
                    f"README.md:{row.line}: {name}: the table says {row.default}, "
                    f"{reader}'s default is {shown}"
                )
    _fail(problems, "README.md Configuration table: defaults that are not the code's:")


def test_the_ports_table_names_real_settings_and_their_defaults() -> None:
    section, first = _section(README.read_text(encoding="utf-8"), "Ports")
    known = owners()
    problems: list[str] = []
    rows = 0
    for offset, line in enumerate(section.splitlines()):
        cells = _cells(line) if line.startswith("|") else []
        if len(cells) != 4 or not cells[1].isdigit():
            continue
        rows += 1
        name = cells[2].strip("`")
        defaults = {_default(info) for info in known.get(name, {}).values()}
        if not defaults:
            problems.append(f"README.md:{first + offset}: {name} is no setting")
        elif defaults != {int(cells[1])}:
            problems.append(f"README.md:{first + offset}: {name} defaults to {defaults}")
    assert rows >= 5, "README.md's Ports table was not found"
    _fail(problems, "README.md Ports table:")


def test_docs_name_no_setting_that_does_not_exist() -> None:
    real = set(owners()) | aliases()
    problems: list[str] = []
    for path in [README, *sorted((REPO / "docs").rglob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)(?:=[^`]*)?`", text):
            name = match.group(1)
            if name.startswith(SETTING_FAMILIES) and name not in real:
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{path.relative_to(REPO)}:{line}: {name}")
    _fail(problems, "docs name settings that no settings class has (renamed or removed?):")
