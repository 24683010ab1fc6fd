"""The deployment artefacts: docker-compose.yml and the kustomize tree in deploy/k8s.

Static checks that need neither Docker nor a cluster: every environment variable is a
real setting, every port is the settings default, probes hit real endpoints, pods are
locked down, no Secret value lives in the base. ``kubectl kustomize`` renders each
overlay when kubectl is installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

from churnwatch.gateway import GatewaySettings, create_gateway_app
from services.alerting.settings import AlertingSettings
from services.ingest.settings import IngestSettings
from services.outreach.settings import OutreachSettings
from services.scoring.settings import ScoringSettings
from shared.health import health_router
from shared.settings import BaseServiceSettings
from tests.helpers import SETTINGS_CLASSES

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAYS = {"dev": K8S / "overlays" / "dev", "production": K8S / "overlays" / "production"}
# production plus the Prometheus Operator objects (its own checks: tests/test_monitoring.py).
OVERLAYS["kube-prometheus"] = K8S / "overlays" / "kube-prometheus"

SETTING_NAMES = frozenset(name.upper() for cls in SETTINGS_CLASSES for name in cls.model_fields)
# Credentials: only ever from a Secret, never a literal in a manifest or ConfigMap.
SECRET_SETTINGS = frozenset(
    {
        "DATABASE_URL",
        "SMS_GATEWAY_TOKEN",
        "SMS_RECEIPT_SECRET",
        "KAFKA_SASL_PASSWORD",
        "PHONE_KEY",
        "PHONE_OLD_KEYS",
    }
)

SERVICES = ("ingest", "scoring", "alerting", "outreach")
# Each component's settings class (to validate its environment) and port default.
COMPONENT_SETTINGS: dict[str, tuple[type[BaseSettings], str]] = {
    "ingest": (IngestSettings, "ingest_port"),
    "scoring": (ScoringSettings, "scoring_port"),
    "alerting": (AlertingSettings, "alerting_port"),
    "outreach": (OutreachSettings, "outreach_port"),
    "sms-gateway": (GatewaySettings, "sms_gateway_port"),
}
PORTS = {
    component: cls.model_fields[field].default
    for component, (cls, field) in COMPONENT_SETTINGS.items()
}
COMMANDS = {
    **{name: ["python", "-m", f"services.{name}"] for name in SERVICES},
    "sms-gateway": ["churnwatch", "sms-gateway"],
    "migrate": ["churnwatch", "migrate"],
}

SERVICE_PROBES = {getattr(r, "path", None) for r in health_router({}).routes}
GATEWAY_ROUTES = {getattr(r, "path", None) for r in create_gateway_app(GatewaySettings()).routes}
READINESS_PATH = dict.fromkeys([*SERVICES, "sms-gateway"], "/readyz")
SERVED_PATHS = {**dict.fromkeys(SERVICES, SERVICE_PROBES), "sms-gateway": GATEWAY_ROUTES}

# Secrets the manifests may reference outside dev: churnwatch's own and, in production,
# each service's Strimzi KafkaUser Secret (deploy/k8s/overlays/strimzi/users.yaml).
EXTERNAL_SECRETS = frozenset({"churnwatch-secrets", *(f"churnwatch-{s}" for s in SERVICES)})

USER_ID = 10001
TMP = "/tmp"  # noqa: S108 - the emptyDir mount point checked below, not a temp file
COMPONENT_LABEL = "app.kubernetes.io/component"


# --- loading ------------------------------------------------------------------------------


def load_all(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def load_one(path: Path) -> dict[str, Any]:
    docs = load_all(path)
    assert len(docs) == 1, f"{path} should hold one YAML document"
    return docs[0]


@cache
def compose() -> dict[str, Any]:
    return load_one(COMPOSE_FILE)


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def churnwatch_compose_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the churnwatch image."""
    return {
        name: svc
        for name, svc in compose_services().items()
        if "build" in svc or str(svc.get("image", "")).startswith("churnwatch")
    }


def compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): str(v) for k, v in env.items()}


def kustomization(directory: Path) -> dict[str, Any]:
    return load_one(directory / "kustomization.yaml")


def kustomization_files() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def manifests(directory: Path) -> list[dict[str, Any]]:
    """Every document a kustomization lists as a resource, following directories.

    A missing resource is skipped here (this runs at collection time);
    test_kustomization_resources_exist reports it.
    """
    docs: list[dict[str, Any]] = []
    for resource in kustomization(directory).get("resources", []):
        path = (directory / resource).resolve()
        if not path.exists():
            continue
        docs.extend(manifests(path) if path.is_dir() else load_all(path))
    return docs


def config_literals(directory: Path) -> dict[str, str]:
    """churnwatch-config as the configMapGenerators of this tree build it (base first)."""
    data: dict[str, str] = {}
    kust = kustomization(directory)
    for resource in kust.get("resources", []):
        path = (directory / resource).resolve()
        if path.is_dir():
            data.update(config_literals(path))
    for gen in kust.get("configMapGenerator", []):
        if gen["name"] == "churnwatch-config":
            assert not gen.get("envs"), "use literals only"
            assert not gen.get("files"), "use literals only"
            data.update(literal.split("=", 1) for literal in gen.get("literals", []))
    return data


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc.get("kind") == kind]


def component(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["labels"][COMPONENT_LABEL])


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = workload["spec"]["template"]["spec"]
    return [*pod.get("initContainers", []), *pod["containers"]]


def all_trees() -> dict[str, Path]:
    return {"base": BASE, **OVERLAYS}


def all_workloads() -> list[tuple[str, dict[str, Any]]]:
    """(tree, Deployment or Job) for the base and each overlay, deduplicated by name."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    for tree, directory in all_trees().items():
        for doc in manifests(directory):
            if doc["kind"] in {"Deployment", "Job"}:
                seen.setdefault(f"{doc['kind']}/{doc['metadata']['name']}", (tree, doc))
    return list(seen.values())


def deployments(directory: Path) -> dict[str, dict[str, Any]]:
    return {component(doc): doc for doc in of_kind(manifests(directory), "Deployment")}


def every_deployment() -> list[dict[str, Any]]:
    return [doc for _, doc in all_workloads() if doc["kind"] == "Deployment"]


def settings_for(comp: str, env: dict[str, str]) -> BaseSettings:
    """The component's settings built from these variables (init kwargs beat os.environ)."""
    cls, _ = COMPONENT_SETTINGS.get(comp, (BaseServiceSettings, ""))
    return cls(**{name.lower(): value for name, value in env.items()})


# --- the artefacts exist and say what they are --------------------------------------------


def yaml_files() -> list[Path]:
    return [COMPOSE_FILE, *sorted(K8S.rglob("*.yaml"))]


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_file_starts_with_a_comment(path: Path) -> None:
    assert path.read_text(encoding="utf-8").startswith("#"), f"{path}: no leading comment"
    assert load_all(path), f"{path} is empty"


def test_dockerfile_runs_as_uid_10001_without_dev_extras() -> None:
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    assert re.search(r"^FROM python:3\.11-slim|^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.M)
    assert re.search(r"^USER 10001", text, re.M)
    assert re.search(r"pip install \.(\s|$)", text), "install the project without extras"
    assert "[dev]" not in text
    assert re.search(r'^CMD \["churnwatch", "--help"\]', text, re.M)
    assert (ROOT / ".dockerignore").is_file()


# --- settings: every variable is a real one -----------------------------------------------


def test_setting_names_are_known() -> None:
    # Guards the guard: if these moved, the name checks below would prove nothing.
    assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "HOST", "SMS_GATEWAY_URL"} <= SETTING_NAMES
    assert PORTS == {
        "ingest": 8081,
        "scoring": 8082,
        "alerting": 8083,
        "outreach": 8084,
        "sms-gateway": 8085,
    }


@pytest.mark.parametrize("tree", list(all_trees()))
def test_configmap_keys_are_settings(tree: str) -> None:
    data = config_literals(all_trees()[tree])
    assert data, f"{tree}: churnwatch-config is empty"
    assert set(data) <= SETTING_NAMES, f"not settings: {sorted(set(data) - SETTING_NAMES)}"
    assert not set(data) & SECRET_SETTINGS, "credentials belong in a Secret"
    assert data["HOST"] == "0.0.0.0"
    plain = [
        doc
        for doc in of_kind(manifests(all_trees()[tree]), "ConfigMap")
        # Grafana dashboards for the sidecar (kube-prometheus overlay), not settings.
        if "grafana_dashboard" not in doc["metadata"].get("labels", {})
    ]
    for doc in plain:
        assert set(doc.get("data", {})) <= SETTING_NAMES


def test_configmap_environment_per_overlay() -> None:
    assert config_literals(OVERLAYS["dev"])["ENVIRONMENT"] == "development"
    assert config_literals(OVERLAYS["production"])["ENVIRONMENT"] == "production"


@pytest.mark.parametrize("tree", list(all_trees()))
def test_configmap_values_are_valid_settings(tree: str) -> None:
    data = config_literals(all_trees()[tree])
    # Credentials the Secret would provide (non-default, so production's checks pass).
    secrets = {
        "DATABASE_URL": "postgresql+asyncpg://u:p@db.invalid:5432/churnwatch",
        "SMS_GATEWAY_TOKEN": "not-the-dev-token",
        "SMS_RECEIPT_SECRET": "not-the-dev-secret",
        "PHONE_KEY": "bm90LXRoZS1kZXYta2V5LW5vdC10aGUtZGV2LWtleSE=",
    }
    for comp in SERVICES:
        settings_for(comp, {**data, **secrets})


def test_k8s_env_names_are_settings() -> None:
    for _, workload in all_workloads():
        for container in containers(workload):
            names = {item["name"] for item in container.get("env", [])}
            assert names <= SETTING_NAMES, (
                f"{workload['metadata']['name']}: not settings: {sorted(names - SETTING_NAMES)}"
            )


def test_compose_env_names_are_settings() -> None:
    services = churnwatch_compose_services()
    assert set(services) == {*SERVICES, "sms-gateway", "migrate"}
    for name, svc in services.items():
        names = set(compose_env(svc))
        assert names <= SETTING_NAMES, f"{name}: not settings: {sorted(names - SETTING_NAMES)}"


@pytest.mark.parametrize("name", [*SERVICES, "sms-gateway", "migrate"])
def test_compose_env_values_are_valid_settings(name: str) -> None:
    settings = settings_for(name, compose_env(churnwatch_compose_services()[name]))
    if name != "migrate":
        assert getattr(settings, "host", None) == "0.0.0.0"


# --- compose ------------------------------------------------------------------------------


def test_compose_commands() -> None:
    services = churnwatch_compose_services()
    for name, expected in COMMANDS.items():
        command = services[name]["command"]
        if isinstance(command, str):
            command = command.split()
        assert command == expected, name


def test_compose_depends_on_existing_services() -> None:
    services = compose_services()
    for name, svc in services.items():
        depends = svc.get("depends_on", {})
        if isinstance(depends, list):
            depends = {dep: {"condition": "service_started"} for dep in depends}
        for dep, spec in depends.items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name
            condition = spec["condition"]
            assert condition in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
            if condition == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
            if condition == "service_completed_successfully":
                assert services[dep].get("restart", "no") == "no", f"{dep} must be one-shot"


def test_compose_dependencies_cover_what_each_service_needs() -> None:
    services = compose_services()

    def needs(name: str) -> dict[str, str]:
        return {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}

    assert needs("migrate") == {"postgres": "service_healthy"}
    for name in SERVICES:
        assert needs(name).get("kafka") == "service_healthy", name
    # Every service uses PostgreSQL, ingest too (API keys, shared.auth): each waits for
    # it to be healthy and for the migrations to have run.
    for name in SERVICES:
        assert needs(name).get("postgres") == "service_healthy", name
        assert needs(name).get("migrate") == "service_completed_successfully", name
    assert needs("outreach").get("sms-gateway") == "service_healthy"


def test_compose_kafka_keeps_its_log_on_a_named_volume() -> None:
    kafka = compose_services()["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    mounts = dict(volume.split(":", 1) for volume in kafka["volumes"])
    named = {target: source for source, target in mounts.items() if not source.startswith(".")}
    assert log_dirs in named, "KAFKA_LOG_DIRS must be on a volume, not in the container"
    assert named[log_dirs] in compose()["volumes"], "a named volume, declared at the top"


@pytest.mark.parametrize("name", [*SERVICES, "sms-gateway"])
def test_compose_ports_and_healthcheck(name: str) -> None:
    svc = churnwatch_compose_services()[name]
    port = PORTS[name]
    published = [str(p) for p in svc.get("ports", [])]
    assert published == [f"{port}:{port}"], f"{name} should publish {port}"
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD", "slim has no shell tools worth relying on; exec python"
    assert test[1:3] == ["python", "-c"]
    urls = re.findall(r"https?://[^'\"\s)]+", test[3])
    assert len(urls) == 1, test
    url = urlsplit(urls[0])
    assert url.port == port
    assert url.path == READINESS_PATH[name]
    assert url.path in SERVED_PATHS[name]
    compile(test[3], f"{name} healthcheck", "exec")  # the one-liner is valid Python


def test_compose_wiring_points_at_compose_services() -> None:
    services = compose_services()
    for name in (*SERVICES, "migrate"):
        env = compose_env(services[name])
        db = urlsplit(env["DATABASE_URL"])
        assert db.scheme == "postgresql+asyncpg"
        assert db.hostname in services
        for server in env["KAFKA_BOOTSTRAP_SERVERS"].split(","):
            host, _, port = server.rpartition(":")
            assert host in services, server
            listeners = compose_env(services[host])["KAFKA_ADVERTISED_LISTENERS"]
            assert f"//{host}:{port}" in listeners, f"{server} is not an advertised listener"
    gateway = urlsplit(compose_env(services["outreach"])["SMS_GATEWAY_URL"])
    assert gateway.hostname == "sms-gateway"
    assert gateway.port == PORTS["sms-gateway"]


def test_compose_kafka_and_postgres() -> None:
    services = compose_services()
    kafka = compose_env(services["kafka"])
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"], "KRaft mode"
    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    assert str(services["postgres"]["image"]).startswith("postgres:16")


# --- kustomize ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", kustomization_files(), ids=lambda p: str(p.parent.relative_to(ROOT))
)
def test_kustomization_resources_exist(path: Path) -> None:
    kust = load_one(path)
    assert kust["kind"] == "Kustomization"
    for resource in kust.get("resources", []):
        target = (path.parent / resource).resolve()
        assert target.exists(), f"{path}: missing resource {resource}"
        if target.is_dir():
            assert (target / "kustomization.yaml").is_file(), f"{target}: no kustomization"


def test_every_manifest_is_listed_in_a_kustomization() -> None:
    listed = {
        (path.parent / resource).resolve()
        for path in kustomization_files()
        for resource in load_one(path).get("resources", [])
    } | {  # patch files count as listed too
        (path.parent / patch["path"]).resolve()
        for path in kustomization_files()
        for patch in load_one(path).get("patches", [])
        if "path" in patch
    }
    manifest_files = {p.resolve() for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert manifest_files <= listed, f"orphans: {sorted(map(str, manifest_files - listed))}"


def test_base_is_namespace_agnostic_and_without_the_gateway() -> None:
    assert "namespace" not in kustomization(BASE)
    for doc in manifests(BASE):
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
    assert set(deployments(BASE)) == set(SERVICES)
    assert of_kind(manifests(BASE), "Job"), "the migration Job is in the base"


def test_overlays_deployments() -> None:
    assert set(deployments(OVERLAYS["dev"])) == {*SERVICES, "sms-gateway"}
    assert set(deployments(OVERLAYS["production"])) == set(SERVICES)
    base_ingest = deployments(BASE)["ingest"]["spec"]["replicas"]
    prod = {r["name"]: r["count"] for r in kustomization(OVERLAYS["production"])["replicas"]}
    assert prod["churnwatch-ingest"] > base_ingest
    dev = {r["name"]: r["count"] for r in kustomization(OVERLAYS["dev"])["replicas"]}
    assert set(dev.values()) == {1}
    assert {f"churnwatch-{c}" for c in (*SERVICES, "sms-gateway")} <= set(dev)


def test_no_secret_values_outside_the_dev_overlay() -> None:
    for tree in ("base", "production", "kube-prometheus"):
        directory = all_trees()[tree]
        for doc in of_kind(manifests(directory), "Secret"):
            assert not doc.get("data"), f"{tree}: Secret data"
            assert not doc.get("stringData"), f"{tree}: Secret data"
        assert "secretGenerator" not in kustomization(directory), f"{tree}: secretGenerator"
    dev = kustomization(OVERLAYS["dev"])["secretGenerator"]
    for gen in dev:
        for literal in gen["literals"]:
            key, _, value = literal.partition("=")
            assert key in SECRET_SETTINGS
            assert "dev" in value, f"dev Secret literal {key} must be an obvious dev value"


def test_credentials_only_from_secret_refs() -> None:
    seen: set[str] = set()
    for _, workload in all_workloads():
        for container in containers(workload):
            for item in container.get("env", []):
                if item["name"] not in SECRET_SETTINGS:
                    continue
                seen.add(item["name"])
                assert "value" not in item, f"{item['name']} has a literal value"
                ref = item["valueFrom"]["secretKeyRef"]
                assert ref["name"] == "churnwatch-secrets"
                assert ref["key"] == item["name"]
                if item["name"] == "KAFKA_SASL_PASSWORD":
                    assert ref.get("optional") is True
    assert seen == SECRET_SETTINGS


@pytest.mark.parametrize("comp", SERVICES)
def test_base_deployment_secret_refs(comp: str) -> None:
    (container,) = containers(deployments(BASE)[comp])
    names = {item["name"] for item in container["env"]}
    assert {"DATABASE_URL", "KAFKA_SASL_PASSWORD"} <= names
    assert ("SMS_GATEWAY_TOKEN" in names) == (comp == "outreach")
    refs = [ref["configMapRef"]["name"] for ref in container["envFrom"]]
    assert refs == ["churnwatch-config"]


def check_locked_down(workload: dict[str, Any]) -> None:
    name = workload["metadata"]["name"]
    pod = workload["spec"]["template"]["spec"]
    pod_sc = pod.get("securityContext", {})
    tmp_volumes = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
    for container in containers(workload):
        sc = {**pod_sc, **container.get("securityContext", {})}
        assert sc.get("runAsNonRoot") is True, name
        assert sc.get("runAsUser") == USER_ID, name
        assert sc.get("readOnlyRootFilesystem") is True, name
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), name
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert mounts.get(TMP) in tmp_volumes, f"{name}: /tmp must be an emptyDir"
        resources = container.get("resources", {})
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name}: {kind}"


@pytest.mark.parametrize(
    "workload",
    [w for _, w in all_workloads()],
    ids=lambda w: f"{w['kind']}/{w['metadata']['name']}",
)
def test_workloads_are_locked_down(workload: dict[str, Any]) -> None:
    check_locked_down(workload)
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    expected = COMMANDS[component(workload)]
    assert container["command"] == expected
    assert not container.get("args")


@pytest.mark.parametrize("deployment", every_deployment(), ids=lambda d: d["metadata"]["name"])
def test_deployment_probes_and_port(deployment: dict[str, Any]) -> None:
    comp = component(deployment)
    port = PORTS[comp]
    assert deployment["spec"]["selector"]["matchLabels"][COMPONENT_LABEL] == comp
    (container,) = containers(deployment)
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert list(ports.values()) == [port], f"{comp} listens on {port}"

    def probe_target(probe: str) -> tuple[str, int]:
        get = container[probe]["httpGet"]
        target = get["port"]
        return get["path"], ports[target] if isinstance(target, str) else target

    assert probe_target("livenessProbe") == ("/healthz", port)
    assert probe_target("readinessProbe") == (READINESS_PATH[comp], port)
    if "startupProbe" in container:
        assert probe_target("startupProbe") == ("/healthz", port)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if probe in container:
            assert container[probe]["httpGet"]["path"] in SERVED_PATHS[comp]


def test_services_match_deployments() -> None:
    for tree, directory in all_trees().items():
        docs = manifests(directory)
        services = {component(doc): doc for doc in of_kind(docs, "Service")}
        assert set(services) == set(deployments(directory)), tree
        for comp, svc in services.items():
            assert svc["spec"]["selector"][COMPONENT_LABEL] == comp
            (port,) = svc["spec"]["ports"]
            assert port["port"] == PORTS[comp]
            assert port["targetPort"] in {"http", PORTS[comp]}


def test_pod_disruption_budgets_cover_the_services() -> None:
    pdbs = of_kind(manifests(BASE), "PodDisruptionBudget")
    assert {pdb["spec"]["selector"]["matchLabels"][COMPONENT_LABEL] for pdb in pdbs} == set(
        SERVICES
    )
    for pdb in pdbs:
        assert "maxUnavailable" in pdb["spec"] or "minAvailable" in pdb["spec"]


def test_k8s_wiring_points_at_the_gateway_service() -> None:
    url = urlsplit(config_literals(OVERLAYS["dev"])["SMS_GATEWAY_URL"])
    services = {doc["metadata"]["name"] for doc in of_kind(manifests(OVERLAYS["dev"]), "Service")}
    assert url.hostname in services
    assert url.port == PORTS["sms-gateway"]


# --- kubectl kustomize (when kubectl is installed) ----------------------------------------

KUBECTL = shutil.which("kubectl")


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed; cannot render overlays")
@pytest.mark.parametrize("tree", list(all_trees()))
def test_kubectl_kustomize_renders(tree: str) -> None:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(all_trees()[tree])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
    (config,) = [
        d
        for d in of_kind(docs, "ConfigMap")
        if d["metadata"]["name"].startswith("churnwatch-config")
    ]
    assert config["data"] == config_literals(all_trees()[tree])
    secrets = {d["metadata"]["name"] for d in of_kind(docs, "Secret")}
    if tree != "dev":
        assert not secrets
    for workload in (*of_kind(docs, "Deployment"), *of_kind(docs, "Job")):
        check_locked_down(workload)
        for container in containers(workload):
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == config["metadata"]["name"]
            for item in container.get("env", []):
                assert item["name"] in SETTING_NAMES
                if "value" in item:  # production's KAFKA_SASL_USERNAME: a name, not a secret
                    assert item["name"] not in SECRET_SETTINGS
                    continue
                ref = item["valueFrom"]["secretKeyRef"]["name"]
                # Generated in dev (hashed name); external everywhere else: churnwatch-secrets
                # or, in production, the service's Strimzi KafkaUser Secret.
                assert ref in secrets if tree == "dev" else ref in EXTERNAL_SECRETS


def rendered(tree: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` output for one tree (the caller skips without kubectl)."""
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(all_trees()[tree])],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


# Custom resources kubernetes-validate has no schema for; checked by their own tests below.
CUSTOM_KINDS = frozenset({"ScaledObject", "TriggerAuthentication"})
# The Prometheus Operator's: validated against its CRDs in tests/test_monitoring.py.
CUSTOM_KINDS |= {"ServiceMonitor", "PrometheusRule"}


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed; cannot render overlays")
@pytest.mark.parametrize("tree", list(OVERLAYS))
def test_rendered_overlay_validates_against_kubernetes_schemas(tree: str) -> None:
    docs = rendered(tree)
    version = kubernetes_validate.latest_version()
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            # strict: unknown fields (a typo such as `readinessprobe`) fail too.
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{tree}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert {"Deployment", "Service", "PodDisruptionBudget", "Job", "ConfigMap"} <= kinds


def test_kubernetes_validate_rejects_a_broken_manifest() -> None:
    """The schema check above can fail: a misspelt field in a Deployment is refused."""
    doc = deployments(BASE)["scoring"]
    broken = {**doc, "spec": {**doc["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


# --- KEDA: scoring scales on consumer lag, capped by the partition count --------------------


def scaled_objects(tree: str) -> list[dict[str, Any]]:
    return of_kind(manifests(all_trees()[tree]), "ScaledObject")


def test_keda_scales_scoring_within_the_partition_count() -> None:
    (scaled,) = scaled_objects("production")
    config = config_literals(OVERLAYS["production"])
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployments(BASE)["scoring"]["metadata"]["name"],
    }
    partitions = int(config["KAFKA_TOPIC_PARTITIONS"])
    # A consumer group gives a partition to one member: more replicas would idle.
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["allowIdleConsumers"] == "false"
    assert meta["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
    assert meta["topic"] == f"{config['KAFKA_TOPIC_PREFIX']}.events"
    scoring = settings_for("scoring", {**config, "DATABASE_URL": "postgresql+asyncpg://u:p@db:1/x"})
    assert meta["consumerGroup"] == scoring.scoring_consumer_group  # type: ignore[attr-defined]
    assert int(meta["lagThreshold"]) > 0
    assert not scaled_objects("dev"), "dev runs without KEDA"


@pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed; cannot render overlays")
@pytest.mark.parametrize("tree", list(OVERLAYS))
def test_keda_alone_sets_the_replicas_of_what_it_scales(tree: str) -> None:
    """A Deployment a ScaledObject targets sets no `replicas`: KEDA's HPA owns the count.

    With both, every `kubectl apply` resets the count KEDA chose, and the two fight.
    """
    docs = rendered(tree)
    deployments_by_name = {d["metadata"]["name"]: d for d in of_kind(docs, "Deployment")}
    for scaled in of_kind(docs, "ScaledObject"):
        target = scaled["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment"
        deployment = deployments_by_name[target["name"]]
        assert "replicas" not in deployment["spec"], f"{target['name']}: KEDA owns replicas"
        spec = scaled["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    scaled_names = {s["spec"]["scaleTargetRef"]["name"] for s in of_kind(docs, "ScaledObject")}
    # The others keep a fixed count (production: ingest 3, the rest 2).
    for name, deployment in deployments_by_name.items():
        if name not in scaled_names:
            assert deployment["spec"]["replicas"] >= 1, name
    if tree == "production":
        assert scaled_names == {"churnwatch-scoring"}


# --- docker-compose.yml against the Compose Specification ------------------------------------

# The Compose Specification's JSON schema, vendored (see deploy/schemas/README.md).
COMPOSE_SCHEMA = ROOT / "deploy" / "schemas" / "compose-spec.json"


@cache
def compose_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    assert schema["title"] == "Compose Specification"
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def test_compose_file_validates_against_the_compose_spec() -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in compose_validator().iter_errors(compose())
    ]
    assert errors == []


def test_compose_spec_check_can_fail() -> None:
    broken = {**compose(), "services": {"x": {"image": "a", "depends_on": {"y": {}}}}}
    assert list(compose_validator().iter_errors(broken)), "condition is required"
    assert list(compose_validator().iter_errors({**compose(), "servces": {}}))


def test_compose_runs_prometheus_and_grafana_with_the_repo_config() -> None:
    services = compose_services()
    prometheus, grafana = services["prometheus"], services["grafana"]
    for svc in (prometheus, grafana):
        assert "healthcheck" in svc
        for volume in svc["volumes"]:
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{source} is mounted but missing"
    mounted = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"]}
    assert mounted["./deploy/prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounted["./deploy/prometheus/rules.yml"] == "/etc/prometheus/rules.yml"
    # Prometheus scrapes each service at its compose name and port.
    config = load_one(ROOT / "deploy" / "prometheus" / "prometheus.yml")
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {f"{name}:{PORTS[name]}" for name in SERVICES}
    assert grafana["depends_on"]["prometheus"]["condition"] == "service_healthy"
    datasource = load_one(
        ROOT / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    )
    (source,) = datasource["datasources"]
    assert urlsplit(source["url"]).hostname == "prometheus"
    assert urlsplit(source["url"]).port == int(prometheus["ports"][0].split(":")[1])
