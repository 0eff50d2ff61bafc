"""The kustomize tree renders (base, both overlays, their replay Jobs), every rendered resource
is valid for Kubernetes 1.27 to 1.37 (custom resources against deploy/schemas), and the
overlays keep the rules a platform team relies on."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from consumer.mapping import load_mapping
from consumer.settings import known_variables, unknown_variables
from tests.deploy.tools import DEPLOY, KUBERNETES, render

RENDERS = ["base", "overlays/staging", "overlays/production"]
REPLAYS = ["overlays/staging/replay", "overlays/production/replay"]
OVERLAYS = ["overlays/staging", "overlays/production"]
K8S_VERSIONS = [f"1.{minor}.0" for minor in range(27, 38)]
SCHEMAS = DEPLOY / "schemas"


def _custom_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in SCHEMAS.glob("*.json"):
        schema = json.loads(path.read_text(encoding="utf-8"))
        gvk = schema["x-kubernetes-group-version-kind"]
        out[(f"{gvk['group']}/{gvk['version']}", gvk["kind"])] = schema
    return out


CUSTOM = _custom_schemas()


def _of(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> Iterator[dict[str, Any]]:
    return (
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    )


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [doc] = list(_of(docs, kind, name))
    return doc


def _env_of(docs: list[dict[str, Any]], name_prefix: str) -> dict[str, str]:
    [cm] = [d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].startswith(name_prefix)]
    data: dict[str, str] = cm["data"]
    return data


@pytest.mark.parametrize("directory", RENDERS + REPLAYS)
def test_renders_and_every_resource_is_valid_for_each_kubernetes_version(directory: str) -> None:
    docs = render(directory)
    assert docs
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM:
            jsonschema.validate(doc, CUSTOM[key])
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(
                    f"{directory}: {doc['kind']}/{doc['metadata']['name']} on {version}: {exc}"
                )
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(f"{directory}: no schema for {key} (add it to deploy/schemas)")


def test_custom_resource_schemas_refuse_unknown_fields() -> None:
    [monitor] = [d for d in render("base") if d["kind"] == "ServiceMonitor"]
    bad = json.loads(json.dumps(monitor))
    bad["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.validate(bad, CUSTOM[("monitoring.coreos.com/v1", "ServiceMonitor")])
    assert {kind for _, kind in CUSTOM} >= {
        "ServiceMonitor",
        "PrometheusRule",
        "ScaledObject",
        "TriggerAuthentication",
    }


@pytest.mark.parametrize("directory", OVERLAYS)
def test_overlay_namespace_runs_under_the_restricted_pod_security_standard(directory: str) -> None:
    docs = render(directory)
    ns = _one(docs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == ns["metadata"]["name"], doc["kind"]


@pytest.mark.parametrize("directory", OVERLAYS + REPLAYS)
def test_images_are_pinned_by_digest(directory: str) -> None:
    docs = render(directory)
    pods = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in {"Deployment", "Job"}]
    images = [c["image"] for p in pods for c in p.get("initContainers", []) + p["containers"]]
    assert images
    for image in images:
        assert "@sha256:" in image and len(image.rsplit(":", 1)[1]) == 64, image


@pytest.mark.parametrize("directory", OVERLAYS)
def test_settings_and_mapping_are_generated_so_a_change_rolls_the_pods(directory: str) -> None:
    docs = render(directory)
    deployment = _one(docs, "Deployment", "consent-sync")
    spec = json.dumps(deployment["spec"]["template"]["spec"])
    for prefix in ("consent-sync-env-", "consent-sync-kafka-", "consent-sync-mapping-"):
        [cm] = [d for d in _of(docs, "ConfigMap") if d["metadata"]["name"].startswith(prefix)]
        assert f'"{cm["metadata"]["name"]}"' in spec, prefix  # the hashed name is referenced


@pytest.mark.parametrize("directory", OVERLAYS)
def test_the_consumers_environment_is_every_setting_and_nothing_else(directory: str) -> None:
    docs = render(directory)
    deployment = _one(docs, "Deployment", "consent-sync")
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    env = {**_env_of(docs, "consent-sync-kafka-"), **_env_of(docs, "consent-sync-env-")}
    env.update({e["name"]: e.get("value", "") for e in container.get("env", [])})
    secret_keys = {"SALESFORCE_CLIENT_ID", "SALESFORCE_CLIENT_SECRET"}
    secret_keys |= {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
    assert unknown_variables(env) == []
    # KAFKA_SSL_CAFILE only with a private CA (deployment.yaml says how); the pool is sized
    # for the lanes and the mapping unless set.
    optional = {"KAFKA_SSL_CAFILE", "SALESFORCE_POOL_SIZE"}
    assert known_variables() - env.keys() - secret_keys == optional
    assert deployment["spec"]["template"]["spec"]["enableServiceLinks"] is False


def test_the_deployed_mapping_is_a_valid_mapping(tmp_path: Path) -> None:
    [cm] = [d for d in render("base") if d["metadata"]["name"].startswith("consent-sync-mapping-")]
    path = tmp_path / "mapping.yaml"
    path.write_text(cm["data"]["mapping.yaml"], encoding="utf-8")
    mapping = load_mapping(path)
    assert {t.sobject for t in mapping.targets} == {"Contact", "Lead"}


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_replay_job_gets_only_the_kafka_settings_of_its_environment(env: str) -> None:
    service, replay = render(f"overlays/{env}"), render(f"overlays/{env}/replay")
    assert sorted(d["kind"] for d in replay) == ["ConfigMap", "Job"]
    # Same content, so the same generated name as the consumers' (applying it changes nothing).
    [kafka] = list(_of(replay, "ConfigMap"))
    assert kafka in list(_of(service, "ConfigMap"))
    assert all(key.startswith("KAFKA_") for key in kafka["data"])
    pod = _one(replay, "Job")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][0] == "replay" and "--dry-run" in container["args"]
    assert container["envFrom"] == [{"configMapRef": {"name": kafka["metadata"]["name"]}}]
    secrets = {e["valueFrom"]["secretKeyRef"]["key"] for e in container["env"]}
    assert secrets == {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
    assert "volumes" not in pod  # no mapping
    images = {
        c["image"] for c in _one(service, "Deployment")["spec"]["template"]["spec"]["containers"]
    }
    assert images == {container["image"]}


def test_production_scales_on_lag_with_keda_up_to_the_partition_count() -> None:
    docs = render("overlays/production")
    assert "replicas" not in _one(docs, "Deployment", "consent-sync")["spec"]
    scaled = _one(docs, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "consent-sync"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    # Brokers, group and topic are the consumers' own variables: one source of truth.
    kafka = _env_of(docs, "consent-sync-kafka-")
    for param in ("bootstrapServers", "consumerGroup", "topic"):
        assert meta[f"{param}FromEnv"] in kafka
    assert meta["allowIdleConsumers"] == "false"
    assert meta["offsetResetPolicy"] == kafka["KAFKA_AUTO_OFFSET_RESET"]
    auth = _one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"username", "password"}
    # Staging has a fixed replica count and no autoscaler.
    staging = render("overlays/staging")
    assert _one(staging, "Deployment", "consent-sync")["spec"]["replicas"] == 1
    assert not list(_of(staging, "ScaledObject"))


@pytest.mark.parametrize("directory", OVERLAYS)
def test_network_policies_allow_only_dns_brokers_salesforce_and_prometheus(directory: str) -> None:
    docs = render(directory)
    kafka = _one(docs, "NetworkPolicy", "consent-sync-kafka")
    consumer = _one(docs, "NetworkPolicy", "consent-sync-consumer")
    assert kafka["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "consent-sync"}

    def ports(rules: list[dict[str, Any]]) -> set[tuple[str, int]]:
        return {(p["protocol"], p["port"]) for r in rules for p in r["ports"]}

    brokers = {
        int(hp.rsplit(":", 1)[1])
        for hp in _env_of(docs, "consent-sync-kafka-")["KAFKA_BOOTSTRAP_SERVERS"].split(",")
    }
    assert ports(kafka["spec"]["egress"]) == {("UDP", 53), ("TCP", 53)} | {
        ("TCP", port) for port in brokers
    }
    assert kafka["spec"]["ingress"] == []
    assert ports(consumer["spec"]["egress"]) == {("TCP", 443)}
    assert ports(consumer["spec"]["ingress"]) == {("TCP", 9102)}
    for policy in (kafka, consumer):
        assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}


@pytest.mark.parametrize("directory", OVERLAYS)
def test_prometheus_finds_the_service_monitor_and_rules_by_the_release_label(
    directory: str,
) -> None:
    docs = render(directory)
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert _one(docs, kind)["metadata"]["labels"]["release"]


def test_no_manifest_left_out_of_the_tree() -> None:
    # Every YAML file is a kustomization, a resource of one, or the example Secret.
    listed = {"secret.example.yaml"}
    for kustomization in KUBERNETES.rglob("kustomization.yaml"):
        text = kustomization.read_text(encoding="utf-8")
        listed |= {p.name for p in kustomization.parent.glob("*.yaml") if p.name in text}
        listed.add("kustomization.yaml")
    assert {p.name for p in KUBERNETES.rglob("*.yaml")} <= listed
