"""Production starts from the documented steps: the rendered overlay gives every setting.

``kubectl kustomize`` renders the production overlay; each workload's environment is
built the way the kubelet would (the ConfigMap through ``envFrom``, literal ``value``s,
and a placeholder for every non-optional ``secretKeyRef``), and the component's own
settings class must build from it with ``ENVIRONMENT=production``: its validators are
what "required in production" means (``SMS_GATEWAY_TOKEN``, ``PHONE_KEY``, ...). Each
required Secret key must really be required (leaving it out fails), and docs/deploy.md's
secret instructions must list every Secret key the overlay references.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from churnwatch.phonekeys import PhoneKeyToolSettings
from services.alerting.settings import AlertingSettings
from services.ingest.settings import IngestSettings
from services.outreach.settings import OutreachSettings
from services.scoring.settings import ScoringSettings
from shared.settings import BaseServiceSettings
from tests.test_deploy import OVERLAYS, ROOT, SETTING_NAMES

KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed; cannot render the overlay"
)
DEPLOY_MD = ROOT / "docs" / "deploy.md"

# What each workload runs as: its settings class (the migration Job reads the database
# URL and the phone keys, churnwatch.phonekeys' settings).
SETTINGS: dict[str, type[BaseSettings]] = {
    "churnwatch-ingest": IngestSettings,
    "churnwatch-scoring": ScoringSettings,
    "churnwatch-alerting": AlertingSettings,
    "churnwatch-outreach": OutreachSettings,
    "churnwatch-migrate": PhoneKeyToolSettings,
}
KAFKA_CLIENTS = {
    "churnwatch-ingest",
    "churnwatch-scoring",
    "churnwatch-alerting",
    "churnwatch-outreach",
}

# Placeholder Secret values: well-formed, and none of them a development default.
PLACEHOLDERS = {
    "DATABASE_URL": "postgresql+asyncpg://churnwatch:x@db.invalid:5432/churnwatch",
    "PHONE_KEY": base64.b64encode(b"production-placeholder-key-32-b!").decode(),
    "PHONE_OLD_KEYS": base64.b64encode(b"an-older-placeholder-key-32-byte").decode(),
}


def placeholder(env_name: str, secret: str, key: str) -> str:
    return PLACEHOLDERS.get(env_name, f"placeholder-{secret}-{key}")


def render(directory: Path) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] in {"Deployment", "Job"}}


def container_env(
    docs: list[dict[str, Any]], container: dict[str, Any], *, optional: bool = False
) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """The container's environment as the kubelet builds it, and its required Secret refs.

    Secret values are placeholders; optional refs are left out unless ``optional``
    (a pod must start without them).
    """
    config_maps = {
        d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"
    }
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(config_maps[source["configMapRef"]["name"]])
    required: dict[str, tuple[str, str]] = {}
    for item in container.get("env", []):
        name = item["name"]
        if "value" in item:
            env[name] = str(item["value"])
            continue
        source = item["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[name] = config_maps[ref["name"]][ref["key"]]
            continue
        ref = source["secretKeyRef"]
        if ref.get("optional", False) and not optional:
            continue
        env[name] = placeholder(name, ref["name"], ref["key"])
        if not ref.get("optional", False):
            required[name] = (ref["name"], ref["key"])
    return env, required


def build(cls: type[BaseSettings], env: dict[str, str]) -> BaseSettings:
    return cls(**{name.lower(): value for name, value in env.items()})


@pytest.fixture(autouse=True)
def _no_settings_from_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the rendered environment counts: drop any setting this test process has."""
    for name in list(os.environ):
        if name.upper() in SETTING_NAMES or name.upper() == "OUTREACH_PHONE_KEY":
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return render(OVERLAYS["production"])


def test_every_workload_has_a_settings_class(production: list[dict[str, Any]]) -> None:
    assert set(workloads(production)) == set(SETTINGS)


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("with_optional", [False, True], ids=["required-only", "all-refs"])
def test_each_workload_builds_its_production_settings(
    production: list[dict[str, Any]], name: str, with_optional: bool
) -> None:
    workload = workloads(production)[name]
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    env, _ = container_env(production, container, optional=with_optional)
    assert env["ENVIRONMENT"] == "production"
    settings = build(SETTINGS[name], env)
    assert isinstance(settings, BaseServiceSettings)
    assert settings.environment == "production"
    if name in KAFKA_CLIENTS:
        # What shared.kafka.client_options refuses at start-up.
        assert settings.missing_kafka_credentials() == [], name


@pytest.mark.parametrize("name", list(SETTINGS))
def test_every_required_secret_key_is_needed(production: list[dict[str, Any]], name: str) -> None:
    """Leaving out any non-optional Secret key stops the workload: none is decoration.

    The same proves the check above can fail.
    """
    (container,) = workloads(production)[name]["spec"]["template"]["spec"]["containers"]
    env, required = container_env(production, container)
    assert required, f"{name} references no Secret"
    for env_name in required:
        without = {k: v for k, v in env.items() if k != env_name}
        try:
            settings = build(SETTINGS[name], without)
        except ValidationError:
            continue
        assert isinstance(settings, BaseServiceSettings)
        assert env_name in settings.missing_kafka_credentials(), (
            f"{name} starts without {env_name}: mark it optional or drop it"
        )


def referenced_secret_keys(docs: list[dict[str, Any]]) -> set[tuple[str, str, bool]]:
    """(Secret, key, optional) for every Secret key the rendered objects reference."""
    refs: set[tuple[str, str, bool]] = set()
    for workload in workloads(docs).values():
        pod = workload["spec"]["template"]["spec"]
        for container in pod["containers"]:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    refs.add((ref["name"], ref["key"], bool(ref.get("optional", False))))
        for volume in pod.get("volumes", []):
            secret = volume.get("secret")
            if secret:
                for item in secret["items"]:
                    refs.add((secret["secretName"], item["key"], bool(secret.get("optional"))))
    for auth in (d for d in docs if d["kind"] == "TriggerAuthentication"):
        for ref in auth["spec"].get("secretTargetRef", []):
            refs.add((ref["name"], ref["key"], False))
    return refs


def secrets_section() -> str:
    text = DEPLOY_MD.read_text(encoding="utf-8")
    start = text.index("**Secrets.**")
    return text[start : text.index("\n## ", start)]


def documented_keys() -> set[tuple[str, str]]:
    """(Secret, key) of each row of the Secrets table in docs/deploy.md."""
    rows = re.findall(r"^\| `([a-z0-9-]+)` +\| `([A-Za-z0-9_.]+)` +\|", secrets_section(), re.M)
    return set(rows)


def test_deploy_md_lists_every_secret_key_the_overlay_references(
    production: list[dict[str, Any]],
) -> None:
    refs = referenced_secret_keys(production)
    assert ("churnwatch-secrets", "PHONE_KEY", False) in refs  # the guard guards something
    documented = documented_keys()
    missing = {(secret, key) for secret, key, _ in refs} - documented
    assert not missing, f"docs/deploy.md's Secrets table leaves out {sorted(missing)}"
    assert not documented - {(secret, key) for secret, key, _ in refs}, "stale rows"
    # The quick manual command creates every required key of churnwatch-secrets.
    section = secrets_section()
    command = section[section.index("create secret generic churnwatch-secrets") :]
    command = command[: command.index("```")]
    for secret, key, optional in refs:
        if secret == "churnwatch-secrets" and not optional:
            assert f"--from-literal={key}=" in command, f"the command leaves out {key}"
