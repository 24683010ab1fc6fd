"""Write the kube-prometheus overlay's generated manifests from the monitoring sources.

Run ``python deploy/prometheus/generate_k8s.py`` after editing ``rules.yml`` or
regenerating the dashboards (``python deploy/grafana/generate.py``). It writes,
into deploy/k8s/overlays/kube-prometheus/:

- ``prometheusrule.yaml``: a ``monitoring.coreos.com/v1`` PrometheusRule whose
  ``spec.groups`` are rules.yml's groups, unchanged;
- ``grafana-dashboards.yaml``: one ConfigMap per dashboard JSON file, labelled
  ``grafana_dashboard: "1"`` (the Grafana sidecar of kube-prometheus-stack loads those).

tests/test_monitoring.py checks the files are what this script writes and that the
PrometheusRule holds exactly the rules of rules.yml.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "rules.yml"
DASHBOARDS = HERE.parent / "grafana" / "dashboards"
OVERLAY = HERE.parent / "k8s" / "overlays" / "kube-prometheus"
LABELS = {"app.kubernetes.io/name": "churnwatch", "app.kubernetes.io/part-of": "churnwatch"}

RULE_HEADER = """\
# GENERATED from deploy/prometheus/rules.yml by deploy/prometheus/generate_k8s.py: edit
# rules.yml and run the script (tests/test_monitoring.py fails while this is stale).
# The labels prometheus: k8s and role: alert-rules are the ones older kube-prometheus
# ruleSelectors match; kustomization.yaml adds kube-prometheus-stack's release label.
"""
DASHBOARD_HEADER = """\
# GENERATED from deploy/grafana/dashboards by deploy/prometheus/generate_k8s.py: edit
# deploy/grafana/generate.py, run it, then run this script.
# One ConfigMap per dashboard, labelled grafana_dashboard: "1" for the Grafana sidecar
# (kube-prometheus-stack). The dashboards pick their data source from a variable.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions) as literal blocks, like rules.yml."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(docs: list[dict[str, Any]]) -> str:
    return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def prometheus_rule() -> dict[str, Any]:
    """The PrometheusRule holding rules.yml's groups."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "churnwatch",
            "labels": {**LABELS, "prometheus": "k8s", "role": "alert-rules"},
        },
        "spec": {"groups": rules["groups"]},
    }


def dashboard_config_maps() -> list[dict[str, Any]]:
    """One ConfigMap per dashboard file, holding the file's text as it is."""
    maps = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        dashboard = json.loads(text)
        maps.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {
                    "name": f"{dashboard['uid']}-dashboard",
                    "labels": {**LABELS, "grafana_dashboard": "1"},
                },
                "data": {path.name: text},
            }
        )
    return maps


def expected_files() -> dict[Path, str]:
    """Each generated file and the text this script writes to it."""
    return {
        OVERLAY / "prometheusrule.yaml": RULE_HEADER + _dump([prometheus_rule()]),
        OVERLAY / "grafana-dashboards.yaml": DASHBOARD_HEADER + _dump(dashboard_config_maps()),
    }


def main() -> None:
    """Write the generated manifests."""
    for path, text in expected_files().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
