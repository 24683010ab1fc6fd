"""The Strimzi objects (deploy/k8s/overlays/strimzi) against the code and the production overlay.

- One ``KafkaTopic`` per churnwatch topic, with the partitions, replicas and configs the
  services would give it themselves (``shared.kafka.topic_configs``) under the production
  overlay's settings: the two ways of making topics cannot drift apart.
- One ``KafkaUser`` per service, named as the service's ``KAFKA_SASL_USERNAME`` in the
  production overlay, whose ACLs let it read and write exactly its own topics and read
  its own consumer group, and nothing else (no Create, Delete, Alter, cluster ACLs).
"""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from services.alerting.settings import AlertingSettings
from services.ingest.settings import IngestSettings
from services.outreach.settings import OutreachSettings
from services.scoring.settings import ScoringSettings
from shared.kafka import topic_configs
from shared.settings import BaseServiceSettings
from shared.topics import Topics
from tests.test_deploy import K8S, OVERLAYS, config_literals
from tests.test_deploy_production import render

STRIMZI = K8S / "overlays" / "strimzi"
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed; cannot render the overlays"
)

# Credentials the Secrets would provide (non-default, so production's checks pass).
SECRETS = {
    "DATABASE_URL": "postgresql+asyncpg://u:p@db.invalid:5432/churnwatch",
    "KAFKA_SASL_USERNAME": "u",
    "KAFKA_SASL_PASSWORD": "p",
}


def production_settings() -> BaseServiceSettings:
    """The settings every service shares under the production overlay's ConfigMap."""
    env = {**config_literals(OVERLAYS["production"]), **SECRETS}
    return BaseServiceSettings(**{k.lower(): v for k, v in env.items()})


def what_each_service_uses() -> dict[str, dict[str, set[str]]]:
    """Per service: topics it reads, topics it writes, its consumer groups (from the code)."""
    topics = Topics(production_settings().kafka_topic_prefix)
    return {
        "ingest": {
            "read": {topics.landing},
            "write": {topics.events, topics.dlq},
            "group": {IngestSettings.model_fields["ingest_landing_consumer_group"].default},
        },
        "scoring": {
            "read": {topics.events, topics.outcomes},
            "write": {topics.scores, topics.dlq},
            "group": {ScoringSettings.model_fields["scoring_consumer_group"].default},
        },
        "alerting": {
            "read": {topics.events, topics.scores},
            "write": {topics.tasks, topics.dlq},
            "group": {AlertingSettings.model_fields["alerting_consumer_group"].default},
        },
        "outreach": {
            "read": {topics.tasks},
            "write": {topics.outcomes, topics.dlq},
            "group": {OutreachSettings.model_fields["outreach_consumer_group"].default},
        },
    }


def of_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def test_every_object_is_for_the_cluster_in_its_namespace() -> None:
    docs = render(STRIMZI)
    assert {d["kind"] for d in docs} == {"KafkaTopic", "KafkaUser"}
    namespaces = {d["metadata"]["namespace"] for d in docs}
    clusters = {d["metadata"]["labels"]["strimzi.io/cluster"] for d in docs}
    assert len(namespaces) == 1 and len(clusters) == 1
    # The production overlay's bootstrap Service is that cluster's, in that namespace.
    (cluster,), (namespace,) = clusters, namespaces
    bootstrap = config_literals(OVERLAYS["production"])["KAFKA_BOOTSTRAP_SERVERS"]
    assert bootstrap.startswith(f"{cluster}-kafka-bootstrap.{namespace}.svc:")
    for doc in docs:
        assert doc["apiVersion"] == "kafka.strimzi.io/v1"  # Strimzi 0.49+; 1.0 dropped v1beta2


def test_kafka_topics_match_what_the_services_would_create() -> None:
    settings = production_settings()
    topics = of_kind(render(STRIMZI), "KafkaTopic")
    names = Topics(settings.kafka_topic_prefix).all()
    assert sorted(topics) == sorted(names)
    for name, topic in topics.items():
        spec = topic["spec"]
        assert spec.get("topicName", name) == name
        assert spec["partitions"] == settings.kafka_topic_partitions, name
        assert spec["replicas"] == settings.kafka_replication_factor, name
        config = {key: str(value) for key, value in spec["config"].items()}
        assert config == topic_configs(settings, name), name
    # The production values are the safe ones: one broker down still takes writes.
    assert settings.kafka_replication_factor >= 3
    assert settings.kafka_min_insync_replicas is not None
    assert 2 <= settings.kafka_min_insync_replicas < settings.kafka_replication_factor
    assert settings.kafka_enable_idempotence
    assert not settings.kafka_create_topics, "the Topic Operator owns the topics"
    assert not settings.kafka_recreate_lost_topics


def acls(user: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(resource type, name, pattern type, operation) for each ACL rule of a KafkaUser."""
    assert user["spec"]["authorization"]["type"] == "simple"
    out = []
    for rule in user["spec"]["authorization"]["acls"]:
        resource = rule["resource"]
        assert rule.get("type", "allow") == "allow"
        for operation in rule["operations"]:
            out.append(
                (
                    resource["type"],
                    resource.get("name", ""),
                    resource.get("patternType", "literal"),
                    operation,
                )
            )
    return out


def test_each_service_runs_as_its_own_kafka_user() -> None:
    users = of_kind(render(STRIMZI), "KafkaUser")
    production = render(OVERLAYS["production"])
    for name, deployment in of_kind(production, "Deployment").items():
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item for item in container["env"]}
        username = env["KAFKA_SASL_USERNAME"]["value"]
        assert username == name, "one user per service, named after it"
        assert username in users
        assert users[username]["spec"]["authentication"]["type"] == "scram-sha-512"
        # The password comes from the Secret Strimzi writes for that user.
        ref = env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (username, "password")
        assert ref.get("optional") is False
    config = config_literals(OVERLAYS["production"])
    assert config["KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert set(users) == {f"churnwatch-{service}" for service in what_each_service_uses()}


@pytest.mark.parametrize("service", list(what_each_service_uses()))
def test_acls_allow_exactly_the_services_own_topics_and_group(service: str) -> None:
    users = of_kind(render(STRIMZI), "KafkaUser")
    uses = what_each_service_uses()[service]
    prefix = f"{production_settings().kafka_topic_prefix}."
    granted = acls(users[f"churnwatch-{service}"])

    def literal(kind: str, operation: str) -> set[str]:
        return {
            name
            for typ, name, pattern, op in granted
            if typ == kind and pattern == "literal" and op == operation
        }

    assert literal("topic", "Read") == uses["read"]
    assert literal("topic", "Write") == uses["write"]
    assert literal("group", "Read") == uses["group"]
    # Beyond those, only looking: metadata and configs of churnwatch's topics.
    looks = {(t, n, p, o) for t, n, p, o in granted if p == "prefix"}
    assert looks == {
        ("topic", prefix, "prefix", "Describe"),
        ("topic", prefix, "prefix", "DescribeConfigs"),
    }
    operations = {op for *_, op in granted}
    assert operations <= {"Read", "Write", "Describe", "DescribeConfigs"}
    assert {typ for typ, *_ in granted} <= {"topic", "group"}, "no cluster ACLs"


def test_each_topic_has_one_writer_and_its_readers() -> None:
    """Who writes a topic is unambiguous (the DLQ aside, which every service writes)."""
    uses = what_each_service_uses()
    topics = Topics(production_settings().kafka_topic_prefix)
    writers = {topic: {s for s, u in uses.items() if topic in u["write"]} for topic in topics.all()}
    assert writers[topics.dlq] == set(uses)
    assert writers[topics.landing] == set(), "billing systems write it, not churnwatch"
    for topic in (topics.events, topics.scores, topics.tasks, topics.outcomes):
        assert len(writers[topic]) == 1, topic
        assert any(topic in u["read"] for u in uses.values()), f"nobody reads {topic}"


def test_keda_reads_lag_as_scoring_over_the_same_listener() -> None:
    production = render(OVERLAYS["production"])
    (scaled,) = of_kind(production, "ScaledObject").values()
    (trigger,) = scaled["spec"]["triggers"]
    auths = of_kind(production, "TriggerAuthentication")
    auth = auths[trigger["authenticationRef"]["name"]]
    # KAFKA_SECURITY_PROTOCOL=SASL_SSL and SCRAM-SHA-512, in KEDA's words.
    assert trigger["metadata"]["sasl"] == "scram_sha512"
    assert trigger["metadata"]["tls"] == "enable"
    target = of_kind(production, "Deployment")[scaled["spec"]["scaleTargetRef"]["name"]]
    (container,) = target["spec"]["template"]["spec"]["containers"]
    env_names = {item["name"] for item in container["env"]}
    from_env = {e["parameter"]: e for e in auth["spec"]["env"]}
    assert set(from_env) == {"username", "password"}
    assert from_env["username"]["name"] == "KAFKA_SASL_USERNAME"
    assert from_env["password"]["name"] == "KAFKA_SASL_PASSWORD"
    for item in from_env.values():
        assert item["containerName"] == container["name"]
        assert item["name"] in env_names
    (ca,) = auth["spec"]["secretTargetRef"]
    volumes = {
        v["secret"]["secretName"]: [i["key"] for i in v["secret"]["items"]]
        for v in target["spec"]["template"]["spec"]["volumes"]
        if "secret" in v
    }
    assert ca["parameter"] == "ca"
    assert ca["key"] in volumes[ca["name"]], "the CA the service itself trusts"
