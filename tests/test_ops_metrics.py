"""Dashboards, alerting rules and the metrics catalogue agree with what the services export.

- The Grafana JSON files are what deploy/grafana/generate.py writes.
- ``promtool`` accepts the rules and the scrape config (skipped, with the reason,
  where Debian's ``prometheus`` package is not installed; ``.ci/run`` installs it).
- Every metric a dashboard query or a rule names is exported by a running
  service: ``churnwatch up --sample`` starts the four services as separate
  processes on the session's broker and database, and each ``/metrics`` is scraped.
- docs/metrics.md lists exactly the metrics the code defines, with their labels,
  and no metric has an unbounded label (a subscriber, a phone, a task id).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from churnwatch.embedded import free_port
from tests.conftest import REPO, Stack, as_environ, fresh_env
from tests.helpers import spawn_up
from tests.test_docs import METRICS_MODULES

DEPLOY = REPO / "deploy"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "rules.yml"
METRICS_DOC = REPO / "docs" / "metrics.md"
PROMTOOL = shutil.which("promtool")
PROMETHEUS_BIN = shutil.which("prometheus")
NO_PROMTOOL = (
    "promtool is not installed (Debian package `prometheus`: "
    "apt-get install --no-install-recommends prometheus; .ci/run does this)"
)
SERVICE_PORTS = {
    "ingest": "INGEST_PORT",
    "scoring": "SCORING_PORT",
    "alerting": "ALERTING_PORT",
    "outreach": "OUTREACH_PORT",
}
# Series Prometheus makes itself rather than scraping them.
PROMETHEUS_SERIES = frozenset({"up", "scrape_duration_seconds", "scrape_samples_scraped"})


# --- PromQL: which metrics does an expression read ---------------------------------------

# Words that are PromQL syntax, never metric names (functions are recognised by the `(`).
PROMQL_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
    }
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects.

    Strings, label matchers, range and subquery windows and grouping clauses
    (label names) are removed first; then an identifier followed by ``(`` is a
    function or an aggregation and a keyword is syntax; what is left names a metric.
    """
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        word = match.group()
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or word.lower() in PROMQL_KEYWORDS:
            continue
        before = text[: match.start()]
        if before and (before[-1].isdigit() or before[-1] == "."):
            continue  # a number's exponent or duration suffix: 1e3, 5m
        names.add(word)
    return names


def test_metric_names_parser() -> None:
    expr = (
        'sum by (service, le) (rate(churnwatch_x_bucket{status="5xx", a=~"b|c"}[5m])) '
        "/ on (service) group_left sum without (topic) (churnwatch_y_total offset 1h) > 0.5 "
        "and histogram_quantile(0.95, churnwatch_z_bucket[10m:1m]) or vector(0) > 1e3"
    )
    assert metric_names(expr) == {
        "churnwatch_x_bucket",
        "churnwatch_y_total",
        "churnwatch_z_bucket",
    }
    assert metric_names('up{job="churnwatch"} == 0') == {"up"}


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) for every panel target."""
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                found.append((path.name, panel["title"], target["expr"]))
    return found


def rule_queries() -> list[tuple[str, str]]:
    """(alert name, expression) for every rule in deploy/prometheus/rules.yml."""
    rules = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def referenced_metrics() -> dict[str, list[str]]:
    """Metric name -> where it is used (dashboard panels and rules)."""
    where: dict[str, list[str]] = {}
    for file, title, expr in dashboard_queries():
        for name in metric_names(expr):
            where.setdefault(name, []).append(f"{file}: {title}")
    for alert, expr in rule_queries():
        for name in metric_names(expr):
            where.setdefault(name, []).append(f"rules.yml: {alert}")
    return where


# --- static checks -------------------------------------------------------------------------


def _load_script(name: str, path: Path) -> Any:
    """Import one of deploy/'s scripts (they are not in a package)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


def _load_generator() -> Any:
    return _load_script("churnwatch_grafana_generate", DEPLOY / "grafana" / "generate.py")


def test_dashboards_are_the_generated_ones() -> None:
    expected = _load_generator().expected_files()
    on_disk = {p: p.read_text(encoding="utf-8") for p in DASHBOARDS.glob("*.json")}
    assert set(on_disk) == set(expected), "run: python deploy/grafana/generate.py"
    for path, text in expected.items():
        assert on_disk[path] == text, f"{path.name} is stale: run python deploy/grafana/generate.py"


def test_dashboards_use_the_provisioned_datasource() -> None:
    """Under compose, the datasource variable lands on the provisioned Prometheus.

    Panels name the ``datasource`` variable (tests/test_monitoring.py); Grafana fills it
    with the default data source of its type: the provisioned one must be that.
    """
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "churnwatch.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    uids = set()
    for path in DASHBOARDS.glob("*.json"):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        uids.add(dashboard["uid"])
        (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
        assert variable["query"] == source["type"]
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        assert panels, path.name
        for panel in panels:
            assert panel["targets"], f"{path.name}: {panel['title']} has no query"
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert uids == {"churnwatch-pipeline", "churnwatch-model", "churnwatch-outreach"}


def test_rules_cover_what_the_issue_asks_for() -> None:
    alerts = dict(rule_queries())
    used = {name for expr in alerts.values() for name in metric_names(expr)}
    for metric in (
        "up",  # a service down
        "churnwatch_consumer_lag",  # lag growing
        "churnwatch_dlq_messages_total",  # DLQ growing
        "churnwatch_outreach_receipts_total",  # SMS failure ratio
        "churnwatch_ingest_events_total",  # no events ingested
        "churnwatch_scoring_model_drift",  # model drift
    ):
        assert metric in used, f"no rule reads {metric}"


@pytest.mark.skipif(PROMTOOL is None, reason=NO_PROMTOOL)
def test_promtool_accepts_the_rules_and_config(tmp_path: Path) -> None:
    assert PROMTOOL is not None
    for args in (
        ["check", "rules", str(RULES)],
        ["check", "config", str(PROMETHEUS / "prometheus.yml")],
    ):
        result = subprocess.run(
            [PROMTOOL, *args], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a rule with a PromQL syntax error is refused.
    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n- name: x\n  rules:\n  - alert: X\n    expr: sum(rate(x[5m])\n")
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0


# --- the catalogue: docs/metrics.md against the code -----------------------------------------

# Labels that would make a series per subscriber, message or call: never allowed.
UNBOUNDED_LABELS = frozenset(
    {"subscriber_id", "subscriber", "phone", "msisdn", "task_id", "event_id", "message_id", "id"}
)


def code_metrics() -> dict[str, MetricWrapperBase]:
    """Every metric the metrics modules define, by exposed base name."""
    found: dict[str, MetricWrapperBase] = {}
    for module_name in METRICS_MODULES:
        for value in vars(importlib.import_module(module_name)).values():
            if isinstance(value, MetricWrapperBase):
                found[value._name] = value
    return found


def exposed_name(metric: MetricWrapperBase) -> str:
    """The name a query uses: counters get ``_total`` (histograms their suffixes)."""
    return f"{metric._name}_total" if metric._type == "counter" else metric._name


def catalogue_rows() -> dict[str, list[str]]:
    """docs/metrics.md table rows keyed by metric name: the cells after the name."""
    rows: dict[str, list[str]] = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\|\s*`(churnwatch_[a-z0-9_]+)`\s*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = [cell.strip() for cell in match.group(2).split("|")]
    return rows


def test_catalogue_lists_every_metric_with_its_type_and_labels() -> None:
    rows = catalogue_rows()
    metrics = {exposed_name(m): m for m in code_metrics().values()}
    missing = sorted(set(metrics) - set(rows))
    assert not missing, f"add rows to docs/metrics.md for {missing}"
    stale = sorted(set(rows) - set(metrics))
    assert not stale, f"docs/metrics.md lists metrics the code does not define: {stale}"
    for name, metric in metrics.items():
        kind, labels = rows[name][0], rows[name][1]
        assert kind == metric._type, f"{name}: docs say {kind}, code says {metric._type}"
        documented = set(re.findall(r"`([a-z_]+)`", labels))
        assert documented == set(metric._labelnames), f"{name}: labels in docs/metrics.md"


def test_no_metric_has_an_unbounded_label() -> None:
    for name, metric in code_metrics().items():
        bad = set(metric._labelnames) & UNBOUNDED_LABELS
        assert not bad, f"{name} is labelled by {bad}: one series per subscriber"


# --- the running services export every metric the dashboards and rules read ------------------


def exported_series(text: str) -> set[str]:
    """Sample names a /metrics page exposes, including families with no sample yet."""
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(sample.name for sample in family.samples)
        # A labelled metric never used yet has HELP/TYPE but no sample: still exported.
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


@pytest.fixture(scope="module")
def running(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """The four services as processes (``churnwatch up --sample``): their ports, by name."""
    environ = {
        **{
            k: v
            for k, v in os.environ.items()
            if k not in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL")
        },
        **as_environ(fresh_env(stack)),
        # Refresh the swept gauges (subscribers by tier, KPIs) within the test's time.
        "ALERTING_SWEEP_INTERVAL_S": "1",
        "OUTREACH_KPI_INTERVAL_S": "1",
    }
    workdir = tmp_path_factory.mktemp("ops-metrics")
    output = workdir / "up.log"
    process, environ = spawn_up(["--sample", "--data-dir", str(workdir / "data")], environ, output)
    try:
        deadline = time.monotonic() + 150
        while "churnwatch is up" not in output.read_text(errors="replace"):
            assert process.poll() is None, output.read_text(errors="replace")
            assert time.monotonic() < deadline, output.read_text(errors="replace")
            time.sleep(0.2)
        yield {service: int(environ[variable]) for service, variable in SERVICE_PORTS.items()}
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.fixture(scope="module")
def scraped(running: dict[str, int]) -> dict[str, str]:
    """``/metrics`` of each running service, by name."""
    pages = {}
    with httpx.Client(timeout=10) as client:
        for service, port in running.items():
            response = client.get(f"http://127.0.0.1:{port}/metrics")
            response.raise_for_status()
            pages[service] = response.text
    return pages


@pytest.mark.e2e
def test_every_queried_metric_is_exported_by_a_running_service(scraped: dict[str, str]) -> None:
    exported = {service: exported_series(text) for service, text in scraped.items()}
    everything = set().union(*exported.values())
    missing = {
        name: where
        for name, where in referenced_metrics().items()
        if name not in everything and name not in PROMETHEUS_SERIES
    }
    assert not missing, f"queried but not exported by any service: {missing}"
    # A service's own metrics come from that service's process.
    for name in referenced_metrics():
        match = re.match(r"churnwatch_(ingest|scoring|alerting|outreach)_", name)
        if match:
            assert name in exported[match.group(1)], f"{name} not exported by {match.group(1)}"


@pytest.mark.e2e
def test_the_sample_run_produced_pipeline_samples(scraped: dict[str, str]) -> None:
    """Not just declared: the sample's events went through and were counted."""

    def total(service: str, sample_name: str, **labels: str) -> float:
        return sum(
            sample.value
            for family in text_string_to_metric_families(scraped[service])
            for sample in family.samples
            if sample.name == sample_name
            and all(sample.labels.get(k) == v for k, v in labels.items())
        )

    assert total("ingest", "churnwatch_ingest_events_total", result="accepted") > 0
    assert total("scoring", "churnwatch_scoring_events_total", result="applied") > 0
    assert total("scoring", "churnwatch_consumer_records_total") > 0
    assert total("alerting", "churnwatch_alerting_score_to_decision_seconds_count") > 0
    assert total("outreach", "churnwatch_outreach_sms_total", result="sent") > 0


@pytest.mark.asyncio(loop_scope="session")
async def test_request_metrics_label_the_route_template() -> None:
    """The ``route`` label is the template of the route in an included router, not a path."""
    from fastapi import APIRouter, FastAPI

    from shared.metrics import HTTP_REQUESTS, install_metrics

    router = APIRouter()

    @router.get("/v1/things/{thing_id}")
    async def thing(thing_id: str) -> dict[str, str]:
        return {"id": thing_id}

    app = FastAPI()
    install_metrics(app, "route-test")
    app.include_router(router)

    def count(route: str, status: str) -> float:
        return float(HTTP_REQUESTS.labels("route-test", route, "GET", status)._value.get())

    before = count("/v1/things/{thing_id}", "2xx"), count("unmatched", "4xx")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/v1/things/a")).status_code == 200
        assert (await client.get("/v1/things/b")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
    assert count("/v1/things/{thing_id}", "2xx") == before[0] + 2
    assert count("unmatched", "4xx") == before[1] + 1


# Dashboard panels with no series after the tiny built-in sample, and why: each
# counts something the sample never does, or a KPI whose denominator is still 0.
EMPTY_AFTER_THE_SAMPLE = {
    "HTTP 5xx /s": "no API request fails",
    "Failed batches /s": "no batch fails",
    "Dead-lettered records (1h)": "no record is malformed",
    "Landing records /s: consumed, relayed, dead-lettered": "nothing is published to Kafka",
    "Landing dead letters (1h) by reason": "nothing is published to Kafka",
    "Reminder before suspension (this month)": "no VIP is suspended",
    "Win-back rate (this month)": "no win-back offer is made",
    "Retention call outcomes by tier (1d)": "no agent records a call outcome",
    "Deferred and suppressed (1h)": "the contact policy holds nothing back",
    "Call events (1h)": "no call is claimed, requeued or expires",
    "Opt-outs (1d)": "nobody opts out",
    "Topic checks failed (1h) by kind": "every topic check passes",
    "Topics re-created empty (1d)": "no topic is lost",
    "Ingest refusals /s by reason": "ingest refuses no request",
    "Consumer anomalies (1d)": "no header disagrees and no topic is re-created",
    "Retention purge: rows deleted (1d)": "nothing is old enough to purge",
    "Task updates published /s": "alerting cancels, closes or reroutes no task",
    "Task updates applied /s": "no task update reaches outreach",
    "Calls spilled to overflow (1d)": "no manager's day is full",
    "SMS reconciled (1h) by result": "no SMS waits SMS_RECONCILE_AFTER_S for its receipt",
}


SERVICE_MONITORS = DEPLOY / "k8s" / "overlays" / "kube-prometheus" / "servicemonitors.yaml"
_META = "__meta_kubernetes_service_label_"


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def kube_prometheus_config(checker: Any, directory: Path, ports: dict[str, int]) -> Path:
    """A scrape config labelling targets as the Prometheus Operator does for our ServiceMonitors.

    One job per ServiceMonitor, its target carrying the labels the operator gives an
    endpoint of a Service (namespace, service, pod, container, endpoint, the Service's
    labels as ``__meta_kubernetes_service_label_*``), then the operator's jobLabel
    relabeling and the ServiceMonitor's own relabelings, unchanged. So the dashboards
    and rules are checked against series labelled as under kube-prometheus.
    """
    config = yaml.safe_load(checker.write_config(directory, ports, interval="1s").read_text())
    monitors = {
        doc["metadata"]["name"]: doc
        for doc in yaml.safe_load_all(SERVICE_MONITORS.read_text(encoding="utf-8"))
    }
    jobs = []
    for name, port in ports.items():
        monitor = monitors[f"churnwatch-{name}"]
        (endpoint,) = monitor["spec"]["endpoints"]
        service_labels = {
            "app.kubernetes.io/component": name,
            "app.kubernetes.io/part-of": "churnwatch",
        }
        labels = {
            **{_META + re.sub(r"\W", "_", k): v for k, v in service_labels.items()},
            "namespace": "churnwatch",
            "service": f"churnwatch-{name}",
            "pod": f"churnwatch-{name}-0",
            "container": name,
            "endpoint": endpoint["port"],
        }
        job_label = _META + re.sub(r"\W", "_", monitor["spec"]["jobLabel"])
        jobs.append(
            {
                "job_name": f"serviceMonitor/churnwatch/churnwatch-{name}/0",
                "metrics_path": endpoint["path"],
                "static_configs": [{"targets": [f"127.0.0.1:{port}"], "labels": labels}],
                "relabel_configs": [
                    {"source_labels": [job_label], "target_label": "job", "regex": "(.+)"},
                    *(
                        {_camel_to_snake(k): v for k, v in relabeling.items()}
                        for relabeling in endpoint["relabelings"]
                    ),
                ],
            }
        )
    config["scrape_configs"] = jobs
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.mark.e2e
@pytest.mark.skipif(
    PROMETHEUS_BIN is None,
    reason="prometheus is not installed (Debian package `prometheus`; .ci/run installs it)",
)
@pytest.mark.parametrize("labelled_as", ["compose", "kube-prometheus"])
def test_a_real_prometheus_answers_every_dashboard_query(
    running: dict[str, int], tmp_path: Path, labelled_as: str
) -> None:
    """Prometheus scrapes the running services; every query parses, evaluates, mostly has data.

    Once with deploy/prometheus/prometheus.yml's labels (compose), once with the labels
    the kube-prometheus overlay's ServiceMonitors give (namespace, and the operator's
    ``service`` target label that the ServiceMonitors drop).
    """
    assert PROMETHEUS_BIN is not None
    checker = _load_script("churnwatch_check_dashboards", PROMETHEUS / "check_dashboards.py")
    if labelled_as == "compose":
        config = checker.write_config(tmp_path, running, interval="1s")
        variables = checker.ALL_VARIABLES
    else:
        config = kube_prometheus_config(checker, tmp_path, running)
        variables = {**checker.ALL_VARIABLES, "namespace": "churnwatch"}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(
            [
                PROMETHEUS_BIN,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        with httpx.Client(timeout=10) as client:
            checker.wait_for_targets(client, url, len(running), timeout_s=60)
            # rate() needs two samples of a series in its window: poll until every
            # target was scraped at least twice.
            deadline = time.monotonic() + 30
            twice = 'count(count_over_time(up{job="churnwatch"}[5m]) >= 2)'
            while [len(running)] != [
                int(r["value"][1]) for r in checker.query(client, url, twice)["data"]["result"]
            ]:
                assert time.monotonic() < deadline, "not every target scraped twice within 30 s"
                time.sleep(0.5)
            answers = [
                (where, expr, checker.query(client, url, expr))
                for where, expr in checker.queries(variables)
            ]
            # Every selector of every panel obeys the dashboard's variables: with an
            # instance nobody has, no panel shows anything.
            nowhere = {**variables, "instance": "nowhere:1"}
            leaks = [
                where
                for where, expr in checker.queries(nowhere)
                if not where.startswith("rule ")
                and checker.query(client, url, expr)["data"]["result"]
            ]
            rules = client.get(f"{url}/api/v1/rules").json()["data"]["groups"]

            def label_values(expr: str, label: str) -> set[str]:
                result = checker.query(client, url, expr)["data"]["result"]
                return {series["metric"].get(label, "") for series in result}

            # The metrics' own `service` label survives (never exported_service), and
            # every target is labelled with its component, as the rules' summaries say.
            services = label_values("churnwatch_http_requests_total", "service")
            renamed = label_values('{exported_service!=""}', "exported_service")
            components = label_values('up{job="churnwatch"}', "component")
    finally:
        process.terminate()
        process.wait(30)
    errors = [(where, a.get("error")) for where, _, a in answers if a["status"] != "success"]
    assert not errors
    assert not leaks, f"panels not narrowed by the instance variable: {leaks}"
    assert services == set(running)
    assert renamed == set()
    assert components == set(running)
    loaded = {rule["name"]: rule for group in rules for rule in group["rules"]}
    assert set(loaded) == {name for name, _ in rule_queries()}
    assert all(rule["health"] != "err" for rule in loaded.values()), loaded
    empty = {
        where.split(": ", 1)[1]
        for where, _, answer in answers
        if not where.startswith("rule ") and not answer["data"]["result"]
    }
    unexplained = empty - set(EMPTY_AFTER_THE_SAMPLE)
    assert not unexplained, f"dashboard panels with no data after the sample: {unexplained}"
