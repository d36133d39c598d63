"""Kubernetes manifests under deploy/k8s: schema-valid, and wired together right.

Built-in kinds are validated (strict: unknown fields rejected) against the Kubernetes
JSON schemas that the ``kubernetes-validate`` package bundles (offline). It has no
schema for custom resources, so the ServiceMonitor (monitoring.coreos.com/v1) is
validated against tests/deploy/schemas/servicemonitor-monitoring-v1.json, a strict
subset of the Prometheus Operator's CRD schema.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from gateway.config import ConfigError, load_config
from tests.deploy.helpers import DEPLOY, HERE, load_yaml_docs

K8S = DEPLOY / "k8s"
# Oldest and newest Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ("1.29.0", "1.37.0")
CUSTOM_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): HERE
    / "schemas"
    / "servicemonitor-monitoring-v1.json"
}
SECRET_ENV = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|REDIS_URL", re.I)


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail(
            "kubernetes-validate is not installed: it belongs to the dev dependencies "
            "(pip install 'kubernetes-validate>=1.37')",
            pytrace=False,
        )
    return kubernetes_validate


def _all_docs() -> list[tuple[Path, dict[str, Any]]]:
    return [(path, doc) for path in sorted(K8S.glob("*.yaml")) for doc in load_yaml_docs(path)]


def _one(kind: str) -> dict[str, Any]:
    docs = [d for _, d in _all_docs() if d["kind"] == kind and d["metadata"]["name"] != "example"]
    assert len(docs) >= 1, f"no {kind} in deploy/k8s"
    return docs[0]


def _config_maps() -> dict[str, dict[str, str]]:
    return {d["metadata"]["name"]: d["data"] for _, d in _all_docs() if d["kind"] == "ConfigMap"}


def test_expected_kinds_present() -> None:
    kinds = {(d["apiVersion"], d["kind"]) for _, d in _all_docs()}
    assert kinds >= {
        ("apps/v1", "Deployment"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("policy/v1", "PodDisruptionBudget"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
    }


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(version: str) -> None:
    kv = _kubernetes_validate()
    errors = []
    checked = 0
    for path, doc in _all_docs():
        custom = CUSTOM_SCHEMAS.get((doc["apiVersion"], doc["kind"]))
        name = f"{path.name}: {doc['kind']}/{doc['metadata']['name']}"
        try:
            if custom is not None:
                jsonschema.Draft202012Validator(json.loads(custom.read_text())).validate(doc)
            else:
                kv.validate(doc, version, strict=True)
            checked += 1
        except jsonschema.ValidationError as exc:
            errors.append(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
        except kv.SchemaNotFoundError as exc:
            errors.append(f"{name}: {exc.message}")
    assert errors == []
    assert checked == len(_all_docs())


def test_custom_schema_rejects_a_typo() -> None:
    """The shipped ServiceMonitor schema is strict: a misspelt field fails."""
    doc = _one("ServiceMonitor")
    bad = json.loads(json.dumps(doc))
    bad["spec"]["endpoints"][0]["intervall"] = "15s"
    schema = json.loads(CUSTOM_SCHEMAS[("monitoring.coreos.com/v1", "ServiceMonitor")].read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(schema).validate(bad)


def test_kubernetes_validate_is_strict() -> None:
    kv = _kubernetes_validate()
    bad = json.loads(json.dumps(_one("Deployment")))
    bad["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_configmap_is_a_valid_gateway_config_with_drain(tmp_path: Path) -> None:
    """The ConfigMap'd gateway.yaml + projects load with the gateway's own loader."""
    maps = _config_maps()
    (tmp_path / "projects").mkdir()
    (tmp_path / "gateway.yaml").write_text(maps["karta-gateway-config"]["gateway.yaml"])
    for key, text in maps["karta-gateway-projects"].items():
        (tmp_path / "projects" / key).write_text(text)
    env = {
        "REDIS_URL": "redis://redis:6379/0",
        "OPENAI_API_KEY": "placeholder",
        "GATEWAY_SESSION_SECRET": "placeholder",
        "GATEWAY_METRICS_TOKEN": "placeholder",
        # The bootstrap API key (test_deploy_env.py fills the whole Secret).
        "GATEWAY_API_KEY_PREFIX": "kt_live_AbCd1234",
        "GATEWAY_API_KEY_SHA256": "0" * 64,
    }
    config = load_config(tmp_path, env)
    # Metrics on their own port, token required (the pod IP is reachable in-cluster).
    assert config.gateway.metrics.listen == "0.0.0.0:9464"
    assert config.gateway.metrics.bearer_token_env == "GATEWAY_METRICS_TOKEN"
    del env["GATEWAY_METRICS_TOKEN"]
    with pytest.raises(ConfigError, match="GATEWAY_METRICS_TOKEN"):
        load_config(tmp_path, env)
    limits = config.gateway.limits
    assert (limits.drain_seconds, limits.shutdown_grace_seconds) == (5, 25)
    assert config.gateway.redis.url == env["REDIS_URL"]
    assert set(config.projects) == {"demo", "my-app"}

    pod = _one("Deployment")["spec"]["template"]["spec"]
    assert (
        pod["terminationGracePeriodSeconds"] > limits.drain_seconds + limits.shutdown_grace_seconds
    )


def test_deployment_probes_config_mount_and_secrets() -> None:
    deployment = _one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert "lifecycle" not in container, "no preStop: the gateway drains itself on SIGTERM"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "metrics": 9464}

    env = {e["name"]: e for e in container["env"]}
    assert env["GATEWAY_CONFIG"]["value"] == "/etc/gateway"
    for name in ("REDIS_URL", "OPENAI_API_KEY", "GATEWAY_SESSION_SECRET", "GATEWAY_METRICS_TOKEN"):
        assert "value" not in env[name], f"{name} must not be a literal"
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "karta-gateway"
    for name, entry in env.items():
        if SECRET_ENV.search(name):
            assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name}: use a secretKeyRef"

    # Every project in the ConfigMap is mounted (an unlisted key would silently vanish).
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == env["GATEWAY_CONFIG"]["value"]
    (config_volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    paths = {
        (source["configMap"]["name"], item["key"]): item["path"]
        for source in config_volume["projected"]["sources"]
        for item in source["configMap"]["items"]
    }
    expected = {("karta-gateway-config", "gateway.yaml"): "gateway.yaml"}
    for key in _config_maps()["karta-gateway-projects"]:
        expected[("karta-gateway-projects", key)] = f"projects/{key}"
    assert paths == expected


def test_selectors_and_references_line_up() -> None:
    deployment = _one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = _one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert (
        _one("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    )
    target = _one("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    monitor = _one("ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    token_ref = env["GATEWAY_METRICS_TOKEN"]["valueFrom"]["secretKeyRef"]
    for endpoint in monitor["endpoints"]:
        # The metrics listener's port (the API port has no /metrics), with the token the
        # pods read from the same Secret key.
        assert service_ports[endpoint["port"]] == "metrics"
        assert endpoint["path"] == "/metrics"
        credentials = endpoint["authorization"]["credentials"]
        assert endpoint["authorization"]["type"] == "Bearer"
        assert (credentials["name"], credentials["key"]) == (token_ref["name"], token_ref["key"])


def test_no_literal_secrets_in_manifests() -> None:
    for path, doc in _all_docs():
        if doc["kind"] != "Secret":
            continue
        assert path.name.endswith(".example.yaml"), f"{path.name}: real Secrets stay out of git"
        for key, value in {**doc.get("stringData", {}), **doc.get("data", {})}.items():
            assert "REPLACE_ME" in value, f"{path.name}: {key} is not an obvious placeholder"
