"""Generate the Grafana dashboards in deploy/grafana/dashboards/ from one place.

The panels are defined in panels.py (pipeline) and panels_business.py (model,
outreach/KPI) beside this script; it adds the dashboard variables (data source,
job, namespace, instance) and renders the JSON. Run ``python
deploy/grafana/generate.py`` after editing a panel, then ``python
deploy/prometheus/generate_k8s.py`` for the kube-prometheus overlay's copies. The
JSON files are committed so Grafana's file provisioning can load them as they are.
tests/test_ops_metrics.py checks the files are what this script writes, that
every metric a query names is exported by a running service, and (with
deploy/prometheus/check_dashboards.py) runs every query against a real Prometheus;
tests/test_monitoring.py checks every selector carries the variables.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

# The panel definitions are modules beside this script (run as a script or loaded by a test).
sys.path.append(str(Path(__file__).resolve().parent))

from panels import PIPELINE, Dashboard, Panel
from panels_business import MODEL, OUTREACH

OUT = Path(__file__).resolve().parent / "dashboards"
# Every panel's data source is the dashboard's `datasource` variable (type datasource,
# any Prometheus): the provisioned one under compose (provisioning/datasources, the
# default), whichever the viewer picks in an operator's Grafana.
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# The matchers every metric selector of every panel gets: the dashboard's job, namespace
# and instance variables. Under compose there is no namespace label; ".*" (All) also
# matches a series without one.
SCOPE = 'job=~"$job", namespace=~"$namespace", instance=~"$instance"'
# The variables, in the order Grafana shows them. job lists the jobs that export
# churnwatch's HTTP metrics (so "All" never pulls in other applications' targets);
# namespace and instance narrow that down (a pod's address is its instance).
VARIABLES: tuple[dict[str, Any], ...] = (
    {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    },
    *(
        {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "query": {"query": query, "refId": f"{name}-variable"},
            "definition": query,
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "includeAll": True,
            "multi": True,
            **({"allValue": ".*"} if name != "job" else {}),
            "hide": 0,
            "refresh": 2,  # on time range change: pods come and go
            "regex": "",
            "sort": 1,
            "options": [],
        }
        for name, label, query in (
            ("job", "Job", "label_values(churnwatch_http_requests_total, job)"),
            (
                "namespace",
                "Namespace",
                'label_values(churnwatch_http_requests_total{job=~"$job"}, namespace)',
            ),
            (
                "instance",
                "Instance",
                'label_values(up{job=~"$job", namespace=~"$namespace"}, instance)',
            ),
        )
    ),
)

# PromQL words that are never metric names: aggregations (followed by `by`/`without` or
# a parenthesis), binary and set operators, modifiers. Functions are told by their `(`.
_AGGREGATIONS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
    ]
)
_KEYWORDS = frozenset(["and", "or", "unless", "bool", "offset", "inf", "nan"])
_GROUPING = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _string_end(expr: str, start: int) -> int:
    """The index after the string literal opening at ``start``."""
    quote, end = expr[start], start + 1
    while expr[end] != quote:
        end += 2 if expr[end] == "\\" else 1
    return end + 1


def _matchers_end(expr: str, start: int) -> int:
    """The index after the ``{...}`` opening at ``start`` (a ``}`` in a string is text)."""
    end = start + 1
    while expr[end] != "}":
        end = _string_end(expr, end) if expr[end] in "\"'" else end + 1
    return end + 1


def scoped(expr: str) -> str:
    """``expr`` with the dashboard's SCOPE matchers in every metric selector.

    ``rate(x{a="b"}[5m])`` becomes ``rate(x{<SCOPE>, a="b"}[5m])`` and a bare ``x``
    becomes ``x{<SCOPE>}``. Strings, range windows and grouping label lists are copied
    as they are; an identifier before ``(`` is a function, one after a digit a unit.
    """
    out: list[str] = []
    i = 0
    while i < len(expr):
        char = expr[i]
        if char in "\"'":
            end = _string_end(expr, i)
        elif char == "[":
            end = expr.index("]", i) + 1
        elif char.isalpha() or char in "_:":
            match = _IDENT.match(expr, i)
            assert match is not None
            word, end = match.group(), match.end()
            before = "".join(out).rstrip()
            rest = expr[end:].lstrip()
            if word in _GROUPING:
                if rest.startswith("("):  # a label list, not selectors
                    end = expr.index(")", end) + 1
            elif (
                word in _KEYWORDS
                or word in _AGGREGATIONS
                or rest.startswith("(")
                or (before and (before[-1].isdigit() or before[-1] == "."))
            ):
                pass  # syntax, a function, or a number's unit (5m, 1e3)
            elif expr.startswith("{", end):
                close = _matchers_end(expr, end)
                inner = expr[end + 1 : close - 1].strip()
                out.append(f"{word}{{{SCOPE}{', ' + inner if inner else ''}}}")
                i = close
                continue
            else:
                out.append(f"{word}{{{SCOPE}}}")
                i = end
                continue
        else:
            end = i + 1
        out.append(expr[i:end])
        i = end
    return "".join(out)


DASHBOARDS = (PIPELINE, MODEL, OUTREACH)


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": 8, "w": 6 if panel.kind == "stat" else 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
        "targets": [
            {
                "datasource": DATASOURCE,
                "refId": chr(ord("A") + i),
                "expr": scoped(expr),
                "legendFormat": legend,
                "range": True,
            }
            for i, (expr, legend) in enumerate(panel.queries)
        ],
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana dashboard JSON (schema of Grafana 10/11) for one dashboard."""
    panels: list[dict[str, Any]] = []
    y, panel_id = 0, 1
    for row_title, row_panels in dashboard.rows:
        panels.append(
            {
                "id": panel_id,
                "type": "row",
                "title": row_title,
                "collapsed": False,
                "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                "panels": [],
            }
        )
        panel_id, y, x = panel_id + 1, y + 1, 0
        for panel in row_panels:
            width = 6 if panel.kind == "stat" else 12
            if x + width > 24:  # wrap: two wide panels (or four stats) per line
                x, y = 0, y + 8
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id, x = panel_id + 1, x + width
        y += 8
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": list(dashboard.tags),
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": list(VARIABLES)},
        "annotations": {"list": []},
        "panels": panels,
    }


def expected_files() -> dict[Path, str]:
    """Each dashboard file and the text this script writes to it."""
    return {
        OUT / f"{d.uid}.json": json.dumps(render(d), indent=2, sort_keys=True) + "\n"
        for d in DASHBOARDS
    }


def main() -> None:
    """Write every dashboard's JSON file."""
    OUT.mkdir(parents=True, exist_ok=True)
    for path, text in expected_files().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
