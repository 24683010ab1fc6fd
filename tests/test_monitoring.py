"""Monitoring as a Prometheus Operator platform takes it: rules, runbooks, unit tests, objects.

- Every alert in deploy/prometheus/rules.yml has a summary, a description and a
  ``runbook_url`` whose anchor is a section of docs/runbooks.md (meaning, impact,
  diagnosis, action), and ``promtool test rules`` cases where it fires and where it
  does not (deploy/prometheus/rules.test.yml); promtool runs them (skipped, with the
  reason, without Debian's ``prometheus`` package; ``.ci/run`` installs it).
- The kube-prometheus overlay: its PrometheusRule holds exactly rules.yml's groups,
  its dashboard ConfigMaps exactly the dashboard files; its ServiceMonitors and the
  PrometheusRule validate against the Prometheus Operator's own CRD schemas (vendored
  in deploy/schemas/prometheus-operator), and each ServiceMonitor selects exactly its
  Service and a port that Service has, under the job the rules select.
- The dashboards take their data source, job, namespace and instance from variables
  used in every query, and every metric the services export is on a panel or in an
  alert, or listed in docs/metrics.md with the reason it is not.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.test_deploy import (
    BASE,
    KUBECTL,
    OVERLAYS,
    SERVICES,
    component,
    kustomization,
    manifests,
    of_kind,
    rendered,
)
from tests.test_ops_metrics import (
    DASHBOARDS,
    NO_PROMTOOL,
    PROMTOOL,
    RULES,
    _load_script,
    catalogue_rows,
    code_metrics,
    dashboard_queries,
    metric_names,
    rule_queries,
)

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
RULE_TESTS = PROMETHEUS / "rules.test.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
METRICS_DOC = ROOT / "docs" / "metrics.md"
RUNBOOK_BASE = "https://churnwatch.example.com/docs/runbooks.md"
KUBE_PROMETHEUS = "kube-prometheus"
CRDS = ROOT / "deploy" / "schemas" / "prometheus-operator"
# The job rules.yml selects (`up{job="churnwatch"}`) and the dashboards default to.
JOB = "churnwatch"
RUNBOOK_PARTS = ("Meaning", "Impact", "Diagnosis", "Action")


def alerts() -> dict[str, dict[str, Any]]:
    """Every alerting rule of rules.yml by name."""
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    found = {rule["alert"]: rule for group in groups for rule in group["rules"] if "alert" in rule}
    assert found, "no alert in rules.yml"
    return found


# --- runbooks --------------------------------------------------------------------------------


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation out, spaces to '-'."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def sections(path: Path) -> dict[str, str]:
    """A Markdown file's headings by anchor, each with the text up to the next heading."""
    found: dict[str, str] = {}
    current = None
    for line in path.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"#{1,6}\s+(.*)", line)
        if heading:
            current = slug(heading.group(1))
            found[current] = ""
        elif current is not None:
            found[current] += line + "\n"
    return found


def test_slug_is_githubs() -> None:
    assert slug("ChurnwatchServiceDown") == "churnwatchservicedown"
    assert slug("Topics lost / broker restarted") == "topics-lost--broker-restarted"
    assert slug("Warm start: `churnwatch train`") == "warm-start-churnwatch-train"


@pytest.mark.parametrize("name", list(alerts()))
def test_alert_has_summary_description_and_a_runbook(name: str) -> None:
    rule = alerts()[name]
    annotations = rule.get("annotations", {})
    assert annotations.get("summary", "").strip(), f"{name}: no summary"
    assert annotations.get("description", "").strip(), f"{name}: no description"
    assert rule.get("labels", {}).get("severity") in {"page", "ticket"}, name
    url = annotations.get("runbook_url", "")
    base, _, anchor = url.partition("#")
    assert base == RUNBOOK_BASE, f"{name}: runbook_url {url!r} is not under {RUNBOOK_BASE}"
    assert anchor == name.lower(), f"{name}: the anchor should be the alert's name"
    text = sections(RUNBOOKS).get(anchor)
    assert text is not None, f"{name}: docs/runbooks.md has no section #{anchor}"
    for part in RUNBOOK_PARTS:
        assert f"**{part}:**" in text, f"docs/runbooks.md#{anchor} lacks {part}"


def test_every_runbook_is_for_an_alert() -> None:
    runbooks = {anchor for anchor in sections(RUNBOOKS) if anchor.startswith("churnwatch")}
    assert runbooks == {name.lower() for name in alerts()}


def test_runbook_links_resolve() -> None:
    """Relative links in docs/runbooks.md name files that exist and anchors they have."""
    text = RUNBOOKS.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        if link.startswith("http"):
            continue
        target, _, anchor = link.partition("#")
        path = (RUNBOOKS.parent / target) if target else RUNBOOKS
        assert path.is_file(), f"docs/runbooks.md links to missing {target}"
        if anchor:
            assert anchor in sections(path), f"docs/runbooks.md: {link}: no such anchor"


# --- promtool unit tests ---------------------------------------------------------------------


def rule_test_cases() -> list[dict[str, Any]]:
    """Every alert_rule_test case of rules.test.yml."""
    tests = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    assert tests["rule_files"] == [RULES.name]
    return [case for group in tests["tests"] for case in group.get("alert_rule_test", [])]


@pytest.mark.parametrize("name", list(alerts()))
def test_every_alert_has_firing_and_quiet_unit_tests(name: str) -> None:
    cases = [case for case in rule_test_cases() if case["alertname"] == name]
    assert any(case.get("exp_alerts") for case in cases), f"{name}: no case where it fires"
    assert any(not case.get("exp_alerts") for case in cases), f"{name}: no case where it is quiet"
    for case in cases:
        for expected in case.get("exp_alerts") or []:
            # The rendered annotations are compared in full: templates are tested too.
            assert set(expected["exp_annotations"]) == set(alerts()[name]["annotations"])


def test_unit_tests_name_only_existing_alerts() -> None:
    assert {case["alertname"] for case in rule_test_cases()} <= set(alerts())


def test_promtool_is_installed_where_required() -> None:
    """CI (.ci/run) sets CHURNWATCH_REQUIRE_PROMTOOL=1: there the rule tests must not skip."""
    if os.environ.get("CHURNWATCH_REQUIRE_PROMTOOL") != "1":
        pytest.skip("CHURNWATCH_REQUIRE_PROMTOOL is not set: only CI requires promtool")
    assert PROMTOOL is not None, NO_PROMTOOL


def promtool(*args: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    checked = promtool("check", "rules", RULES.name)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout
    tested = promtool("test", "rules", RULE_TESTS.name)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_unit_tests_catch_a_changed_rule(tmp_path: Path) -> None:
    """The unit tests can fail: a threshold changed in a copy of the rules breaks them."""
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    text = RULES.read_text(encoding="utf-8")
    assert text.count("> 0.05") == 1
    (tmp_path / RULES.name).write_text(text.replace("> 0.05", "> 0.5"), encoding="utf-8")
    tested = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert tested.returncode != 0
    assert "ChurnwatchHttpErrors" in tested.stdout + tested.stderr


# --- the kube-prometheus overlay: generated files --------------------------------------------


def _generator() -> Any:
    return _load_script("churnwatch_generate_k8s", PROMETHEUS / "generate_k8s.py")


def test_overlay_generated_files_are_current() -> None:
    for path, text in _generator().expected_files().items():
        assert path.read_text(encoding="utf-8") == text, (
            f"{path.name} is stale: run python deploy/prometheus/generate_k8s.py"
        )


def overlay_docs() -> list[dict[str, Any]]:
    """The kube-prometheus overlay's own documents and production's, as listed."""
    return manifests(OVERLAYS[KUBE_PROMETHEUS])


def test_prometheus_rule_holds_exactly_the_rules() -> None:
    (rule,) = of_kind(overlay_docs(), "PrometheusRule")
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    assert rule["spec"]["groups"] == groups
    names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert sorted(names) == sorted(alerts())


def test_dashboard_config_maps_hold_the_dashboard_files() -> None:
    maps = [
        doc
        for doc in of_kind(overlay_docs(), "ConfigMap")
        if doc["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    files = {p.name: p.read_text(encoding="utf-8") for p in DASHBOARDS.glob("*.json")}
    held = {name: text for doc in maps for name, text in doc["data"].items()}
    assert held == files


# --- the kube-prometheus overlay: custom resources against the operator's CRDs ---------------


def _strict(schema: Any) -> Any:
    """The schema refusing unknown fields, as ``kubectl apply --validate=strict`` does."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and "(?i)" in pattern[1:]:
        # Go's RE2 takes a flag anywhere; Python's re only at the start.
        out["pattern"] = "(?i)" + pattern.replace("(?i)", "")
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@cache
def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    """A validator for ``kind`` from the vendored monitoring.coreos.com CRD (version v1)."""
    (crd,) = (
        doc
        for path in CRDS.glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc and doc["spec"]["names"]["kind"] == kind
    )
    assert crd["spec"]["group"] == "monitoring.coreos.com"
    (version,) = (v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # metadata is the API server's to check; the CRD schema says only "object".
    schema["properties"]["metadata"] = {"type": "object"}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict[str, Any]) -> list[str]:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1", doc["apiVersion"]
    return [
        f"{doc['kind']}/{doc['metadata']['name']}: "
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in crd_validator(doc["kind"]).iter_errors(doc)
    ]


MONITORING_KINDS = ("ServiceMonitor", "PrometheusRule")


def test_custom_resources_validate_against_the_operators_crds() -> None:
    docs = [doc for doc in overlay_docs() if doc["kind"] in MONITORING_KINDS]
    assert {doc["kind"] for doc in docs} == set(MONITORING_KINDS)
    for doc in docs:
        assert crd_errors(doc) == []


def test_crd_check_can_fail() -> None:
    (monitor, *_) = of_kind(overlay_docs(), "ServiceMonitor")
    endpoint = monitor["spec"]["endpoints"][0]
    typo = {**monitor, "spec": {**monitor["spec"], "endpoint": [endpoint]}}
    assert crd_errors(typo), "an unknown field is refused"
    numeric = {**monitor, "spec": {**monitor["spec"], "endpoints": [{**endpoint, "port": 8081}]}}
    assert crd_errors(numeric), "port is a port name (a string)"
    (rule,) = of_kind(overlay_docs(), "PrometheusRule")
    group = rule["spec"]["groups"][0]
    no_expr = {**group, "rules": [{"alert": "X"}]}
    assert crd_errors({**rule, "spec": {"groups": [no_expr]}}), "a rule needs its expr"


def base_labels() -> dict[str, str]:
    """The labels deploy/k8s/base's kustomization puts on every object it renders."""
    pairs: dict[str, str] = {}
    for entry in kustomization(BASE).get("labels", []):
        pairs.update(entry["pairs"])
    return pairs


def check_service_monitors(docs: list[dict[str, Any]], *, rendered: bool = False) -> None:
    """Each ServiceMonitor selects one churnwatch Service by labels and a port it names.

    Unrendered (kustomization resources as written), a Service gets the labels the base
    kustomization adds; rendered, it must already carry them.
    """
    services = of_kind(docs, "Service")
    if not rendered:
        services = [
            {
                **svc,
                "metadata": {
                    **svc["metadata"],
                    "labels": {**base_labels(), **svc["metadata"]["labels"]},
                },
            }
            for svc in services
        ]
    monitors = of_kind(docs, "ServiceMonitor")
    selected = set()
    for monitor in monitors:
        spec, name = monitor["spec"], monitor["metadata"]["name"]
        labels = spec["selector"]["matchLabels"]
        assert not spec["selector"].get("matchExpressions"), name
        matches = [svc for svc in services if labels.items() <= svc["metadata"]["labels"].items()]
        assert len(matches) == 1, f"{name} selects {[s['metadata']['name'] for s in matches]}"
        (service,) = matches
        selected.add(component(service))
        # Same namespace (no namespaceSelector): the Service's, when the tree sets one.
        assert "namespaceSelector" not in spec, name
        assert monitor["metadata"].get("namespace") == service["metadata"].get("namespace")
        # job = the value of the Service's jobLabel label: what rules.yml selects.
        assert service["metadata"]["labels"][spec["jobLabel"]] == JOB, name
        ports = {port["name"] for port in service["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in ports, f"{name}: {service['metadata']['name']} has {ports}"
            assert endpoint.get("path", "/metrics") == "/metrics"
            # The metrics' own `service` label must survive: the operator's target label
            # of that name is dropped, so nothing becomes exported_service.
            assert {"action": "labeldrop", "regex": "service"} in endpoint["relabelings"], name
    assert selected == set(SERVICES)
    assert len(monitors) == len(SERVICES)


def test_service_monitors_select_each_service_and_its_metrics_port() -> None:
    check_service_monitors(overlay_docs())


def test_service_monitor_check_can_fail() -> None:
    docs = overlay_docs()
    monitor, *others = of_kind(docs, "ServiceMonitor")
    rest = [doc for doc in docs if doc["kind"] != "ServiceMonitor"]
    bad_port = {
        **monitor,
        "spec": {**monitor["spec"], "endpoints": [{"port": "metrics", "relabelings": []}]},
    }
    with pytest.raises(AssertionError):
        check_service_monitors([*rest, *others, bad_port])
    selector = {"matchLabels": {"app.kubernetes.io/name": "churnwatch"}}
    too_wide = {**monitor, "spec": {**monitor["spec"], "selector": selector}}
    with pytest.raises(AssertionError):
        check_service_monitors([*rest, *others, too_wide])


def test_prometheus_may_discover_the_namespace() -> None:
    docs = overlay_docs()
    (role,) = of_kind(docs, "Role")
    (binding,) = of_kind(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    granted = {
        (group, res)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        if {"get", "list", "watch"} <= set(rule["verbs"])
    }
    assert {("", "services"), ("", "endpoints"), ("", "pods")} <= granted
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount"


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed; cannot render overlays")
def test_rendered_kube_prometheus_overlay() -> None:
    """What `kubectl apply -k` would send: namespaced, labelled for the operator's selectors."""
    docs = rendered(KUBE_PROMETHEUS)
    check_service_monitors(docs, rendered=True)
    for doc in docs:
        if doc["kind"] in MONITORING_KINDS:
            assert crd_errors(doc) == []
            assert doc["metadata"]["namespace"] == "churnwatch"
            assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (binding,) = of_kind(docs, "RoleBinding")
    # kustomize's namespace must not move the Prometheus service account's subject.
    assert binding["subjects"][0]["namespace"] == "monitoring"
    # Everything production has is in this overlay too.
    production = {(d["kind"], d["metadata"]["name"]) for d in rendered("production")}
    assert production <= {(d["kind"], d["metadata"]["name"]) for d in docs}


# --- dashboards: variables ------------------------------------------------------------------

SCOPE = ('job=~"$job"', 'namespace=~"$namespace"', 'instance=~"$instance"')


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(DASHBOARDS.glob("*.json"))
    }


@pytest.mark.parametrize("name", list(dashboards()))
def test_dashboard_variables(name: str) -> None:
    dashboard = dashboards()[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "job", "namespace", "instance"]
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    source = {"type": "prometheus", "uid": "${datasource}"}
    for var in ("job", "namespace", "instance"):
        assert variables[var]["type"] == "query"
        assert variables[var]["datasource"] == source
        assert variables[var]["includeAll"] is True
    # The job list is churnwatch's jobs only; the others narrow it down.
    assert "churnwatch_" in variables["job"]["definition"]
    assert '$job"' in variables["namespace"]["definition"]
    assert '$namespace"' in variables["instance"]["definition"]
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == source, panel["title"]


def scope_problem(expr: str) -> str | None:
    """Why ``expr`` is not narrowed by the dashboard variables everywhere, or None.

    Counts the metric selectors (every occurrence of a metric name outside the label
    matchers) and requires each matcher of SCOPE once per selector; no fixed job, no
    other variable.
    """
    if 'job="' in expr:
        return "a fixed job"
    names = metric_names(expr)
    if not names:
        return "no metric"
    outside_matchers = re.sub(r"\{[^}]*\}", "", expr)
    selectors = sum(
        len(re.findall(rf"(?<![\w:]){re.escape(name)}(?![\w:])", outside_matchers))
        for name in names
    )
    for matcher in SCOPE:
        if expr.count(matcher) != selectors:
            return f"{matcher} in {expr.count(matcher)} of {selectors} selectors"
    stripped = expr
    for matcher in SCOPE:
        stripped = stripped.replace(matcher, "")
    if "$" in stripped:
        return "an unknown variable"
    return None


def test_every_selector_is_scoped_by_the_variables() -> None:
    problems = {
        f"{file}: {title}": problem
        for file, title, expr in dashboard_queries()
        if (problem := scope_problem(expr))
    }
    assert problems == {}


def test_scope_check_can_fail() -> None:
    scope = ", ".join(SCOPE)
    assert scope_problem(f"sum(rate(a_total{{{scope}}}[5m]))") is None
    assert scope_problem(f"a{{{scope}}} / b") == 'job=~"$job" in 1 of 2 selectors'
    assert scope_problem(f'up{{{scope}, job="churnwatch"}}') == "a fixed job"
    assert scope_problem(f'x{{{scope}, pod=~"$pod"}}') == "an unknown variable"


# --- every exported metric is on a panel or in an alert (or says why not) --------------------


def exposed_names(metric: Any) -> set[str]:
    """The sample names a metric is queried by."""
    if metric._type == "counter":
        return {f"{metric._name}_total"}
    if metric._type == "histogram":
        return {f"{metric._name}{suffix}" for suffix in ("_bucket", "_sum", "_count")}
    return {metric._name}


NOT_SHOWN = "not shown:"
DASHBOARD_NAMES = {
    "churnwatch-pipeline.json": "pipeline",
    "churnwatch-model.json": "model",
    "churnwatch-outreach.json": "outreach/KPI",
}


def shown_where() -> dict[str, set[str]]:
    """Sample name -> the dashboards (short names) and rules ("rule X") that read it."""
    where: dict[str, set[str]] = {}
    for file, _, expr in dashboard_queries():
        for name in metric_names(expr):
            where.setdefault(name, set()).add(DASHBOARD_NAMES[file])
    for alert, expr in rule_queries():
        for name in metric_names(expr):
            where.setdefault(name, set()).add(alert)
    return where


def coverage_problems(
    metrics: dict[str, set[str]], where: dict[str, set[str]], cells: dict[str, str]
) -> list[str]:
    """What is wrong with how metrics are shown.

    ``metrics``: catalogue name -> the sample names it is queried by; ``where``: sample
    name -> the dashboards and rules that read it; ``cells``: catalogue name -> its
    "Dashboards and rules" cell in docs/metrics.md.
    """
    problems = []
    for name, samples in metrics.items():
        cell = cells[name]
        readers = set().union(*(where.get(sample, set()) for sample in samples))
        if cell.startswith(NOT_SHOWN):
            if readers:
                problems.append(f"{name} is shown ({sorted(readers)}), yet '{NOT_SHOWN}'")
            if len(cell) < len(NOT_SHOWN) + 10:
                problems.append(f"{name}: say why it is not shown")
        elif not readers:
            problems.append(
                f"{name} is on no dashboard (deploy/grafana/panels*.py) and in no alert: "
                f"add it, or say in docs/metrics.md why not ('{NOT_SHOWN} ...')"
            )
        else:
            problems.extend(
                f"docs/metrics.md: {name} should name {reader}"
                for reader in sorted(readers)
                if reader not in cell
            )
    return problems


def test_every_exported_metric_is_on_a_panel_or_in_an_alert() -> None:
    rows = catalogue_rows()
    metrics = {
        (f"{m._name}_total" if m._type == "counter" else m._name): exposed_names(m)
        for m in code_metrics().values()
    }
    cells = {name: rows[name][-1] for name in metrics}
    assert coverage_problems(metrics, shown_where(), cells) == []


def test_coverage_check_can_fail() -> None:
    metrics = {"a_total": {"a_total"}, "b": {"b"}, "c": {"c"}, "d": {"d"}, "e": {"e"}}
    where = {"a_total": {"pipeline", "RuleA"}, "c": {"model"}, "e": {"model"}}
    cells = {
        "a_total": "pipeline, rule RuleA",  # right
        "b": f"{NOT_SHOWN} a debugging aid only developers read",  # right
        "c": f"{NOT_SHOWN} stale",  # shown after all, and no real reason
        "d": "pipeline",  # claims a panel nobody has
        "e": "pipeline",  # names the wrong dashboard
    }
    problems = coverage_problems(metrics, where, cells)
    assert [p.split(" ")[0] for p in problems] == ["c", "c:", "d", "docs/metrics.md:"]
    assert "should name model" in problems[-1]
