"""The documentation keeps up with the code: settings, schemas, topics, metrics, tables.

Each check names what to fix when it fails. These tests need no broker and no
database.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from types import ModuleType

import pytest
from prometheus_client.metrics import MetricWrapperBase

from shared.events import (
    OutreachTask,
    RiskScore,
    TaskOutcome,
    TaskUpdate,
    json_schemas,
    parse_event,
)
from shared.topics import Topics
from tests.helpers import SETTINGS_CLASSES

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
ARCHITECTURE = REPO / "docs" / "architecture.md"
OPERATIONS = REPO / "docs" / "operations.md"
EVENT_CONTRACT = REPO / "docs" / "event-contract.md"
SCHEMAS_DIR = REPO / "docs" / "schemas"

METRICS_MODULES = [
    "shared.metrics",
    "shared.retention",
    "services.ingest.metrics",
    "services.scoring.metrics",
    "services.alerting.metrics",
    "services.outreach.metrics",
]
TABLE_MODULES = [
    "services.scoring.tables",
    "services.alerting.tables",
    "services.outreach.tables",
]


def _read(path: Path) -> str:
    assert path.is_file(), f"{path.relative_to(REPO)} is missing; write it"
    return path.read_text(encoding="utf-8")


def _settings_fields() -> list[tuple[str, str]]:
    return [(cls.__name__, field) for cls in SETTINGS_CLASSES for field in cls.model_fields]


@pytest.mark.parametrize(("cls_name", "field"), _settings_fields())
def test_every_setting_is_in_the_readme(cls_name: str, field: str) -> None:
    env_var = f"`{field.upper()}`"
    assert env_var in _read(README), (
        f"{cls_name}.{field} is not documented: add a row for {env_var} (default, used by, "
        "meaning) to the Configuration table in README.md"
    )


def test_schema_files_are_the_generated_ones() -> None:
    schemas = json_schemas()
    fix = "run `make schemas` (churnwatch schemas --out docs/schemas) and commit the result"
    for name, schema in schemas.items():
        path = SCHEMAS_DIR / f"{name}.json"
        assert path.is_file(), f"docs/schemas/{name}.json is missing: {fix}"
        expected = json.dumps(schema, indent=2, sort_keys=True) + "\n"
        assert path.read_text(encoding="utf-8") == expected, (
            f"docs/schemas/{name}.json is out of date with shared/events.py: {fix}"
        )
    stale = sorted(p.stem for p in SCHEMAS_DIR.glob("*.json") if p.stem not in schemas)
    assert not stale, (
        f"docs/schemas/ has files for schemas that no longer exist: {stale}; delete them"
    )


@pytest.mark.parametrize("topic", Topics().all())
def test_every_topic_is_in_the_architecture_doc(topic: str) -> None:
    assert topic in _read(ARCHITECTURE), (
        f"topic {topic} (shared/topics.py) is not in docs/architecture.md: add it to the "
        "picture and to the Topics table"
    )


def _metrics() -> list[tuple[str, str]]:
    found = []
    for module_name in METRICS_MODULES:
        module: ModuleType = importlib.import_module(module_name)
        for value in vars(module).values():
            if isinstance(value, MetricWrapperBase):
                found.append((module_name, value._name))
    return found


def test_metric_modules_define_metrics() -> None:
    modules = {module for module, _ in _metrics()}
    assert modules == set(METRICS_MODULES), (
        f"no metric found in {sorted(set(METRICS_MODULES) - modules)}; "
        "if a module moved, update METRICS_MODULES in tests/test_docs.py"
    )


@pytest.mark.parametrize(("module", "metric"), _metrics())
def test_every_metric_is_in_the_operations_doc(module: str, metric: str) -> None:
    assert metric in _read(OPERATIONS), (
        f"metric {metric} ({module}) is not documented: add a row (type, labels, service, "
        "meaning) to the Metrics table in docs/operations.md"
    )


def _tables() -> list[tuple[str, str]]:
    return [
        (module_name, table)
        for module_name in TABLE_MODULES
        for table in importlib.import_module(module_name).metadata.tables
    ]


@pytest.mark.parametrize(("module", "table"), _tables())
def test_every_table_is_in_the_architecture_doc(module: str, table: str) -> None:
    assert table in _read(ARCHITECTURE), (
        f"table {table} ({module}) is not in docs/architecture.md: add it to the picture "
        "(in its schema's box) and to the Tables table, with its owner"
    )


def test_table_modules_are_all_listed() -> None:
    on_disk = sorted(
        f"services.{path.parent.name}.tables" for path in (REPO / "services").glob("*/tables.py")
    )
    assert on_disk == sorted(TABLE_MODULES), (
        f"services with a tables.py: {on_disk}; update TABLE_MODULES in tests/test_docs.py "
        "and document the new tables in docs/architecture.md"
    )


def test_event_contract_examples_are_valid() -> None:
    blocks = re.findall(r"```json\n(.*?)```", _read(EVENT_CONTRACT), re.DOTALL)
    checked = 0
    for block in blocks:
        example = json.loads(block)
        if "event_type" in example:
            parse_event(example)
        elif example.get("message_type") == "risk_score":
            RiskScore.model_validate(example)
        elif example.get("message_type") == "outreach_task":
            OutreachTask.model_validate(example)
        elif example.get("message_type") == "task_update":
            TaskUpdate.model_validate(example)
        elif example.get("message_type") == "task_outcome":
            TaskOutcome.model_validate(example)
        else:
            continue
        checked += 1
    assert checked >= len(json_schemas()) - 1, (
        "docs/event-contract.md should show a valid JSON example of every event type, "
        "RiskScore, OutreachTask, TaskUpdate and TaskOutcome; fix the example that fails "
        "to parse above"
    )


def test_every_feature_is_in_the_features_doc() -> None:
    from services.scoring.features import FEATURES

    text = (REPO / "docs" / "features.md").read_text()
    missing = [name for name in FEATURES if f"`{name}`" not in text]
    assert not missing, f"document these features in docs/features.md: {missing}"


def test_the_alerting_doc_shows_the_shipped_default_rules() -> None:
    from services.alerting.rules import DEFAULT_RULES_FILE

    shipped = DEFAULT_RULES_FILE.read_text(encoding="utf-8")
    assert f"```yaml\n{shipped}```" in _read(REPO / "docs" / "alerting.md"), (
        "docs/alerting.md's copy of the default rules file is out of date: paste "
        "services/alerting/default_rules.yaml into its last yaml block"
    )


def _code_map_rows() -> list[tuple[list[str], list[str]]]:
    """docs/architecture.md's code map: (modules, names) of each row."""
    text = _read(REPO / "docs" / "architecture.md")
    section = text.split("## Code map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[1].startswith("`"):
            continue
        modules = re.findall(r"`([\w/]+\.py)`", cells[1])
        # Names of code; not file names, nor topic names (``churnwatch.outcomes``).
        names = [
            n
            for n in re.findall(r"`([A-Za-z_][\w.]*)`", cells[2])
            if not n.endswith(".py") and not n.startswith("churnwatch.")
        ]
        rows.append((modules, names))
    return rows


def test_the_code_map_names_code_that_exists() -> None:
    """Every module in the map exists; every name is defined or imported in its row's modules."""
    rows = _code_map_rows()
    assert len(rows) >= 25
    missing = []
    for modules, names in rows:
        sources = []
        for module in modules:
            path = REPO / module
            if not path.is_file():
                missing.append(module)
                continue
            sources.append(path.read_text(encoding="utf-8"))
        for name in names:
            owner, _, member = name.partition(".")
            word = re.escape(owner)
            defined = re.compile(
                rf"^\s*(?:async def|def|class) {word}\b|^{word}\b.*=|import[^\n]*\b{word}\b",
                re.M,
            )
            if not any(defined.search(source) for source in sources) or (
                member
                and not any(
                    re.search(rf"^\s+(?:async def|def) {re.escape(member)}\b", source, re.M)
                    for source in sources
                )
            ):
                missing.append(name)
    assert missing == []
