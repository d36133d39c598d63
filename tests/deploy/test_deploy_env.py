"""The configs deploy/ ships load with exactly what their deployments pass.

Kubernetes: the ConfigMap's config files, with the environment the Deployment builds
from the Secret (every key of secret.example.yaml filled as deploy/README.md says),
load with no problem, and a request with the API key made as the README says is
served; the example Secret applied unfilled is refused, naming each variable.
Compose: the repository's config/ (mounted at /etc/gateway) with the environment the
compose file passes from deploy/.env. Either way every variable the config reads is
one the deployment sets.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp.test_utils import TestClient
from pytest_aiohttp import AiohttpClient

from gateway.config import ConfigError, load_config
from gateway.http.app import create_app
from gateway.placeholders import is_placeholder, secret_variables
from tests.deploy.helpers import DEPLOY, REPO, load_yaml_docs

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message} (compose's
# forms; the gateway's own are the first two).
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SECRET = "karta-gateway"
# deploy/README.md's way of reading `gateway keys new`'s entry (its sed commands).
ENTRY_FIELD = {field: re.compile(rf"^ *{field}: (.*)$", re.M) for field in ("prefix", "sha256")}


def _strings(node: Any) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(node, list):
        return [s for item in node for s in _strings(item)]
    return []


def _references(texts: list[str]) -> tuple[set[str], set[str]]:
    """(variables a config's values reference without a default, those with one);
    comments do not count."""
    required: set[str] = set()
    defaulted: set[str] = set()
    for text in texts:
        for value in _strings(yaml.safe_load(text)):
            for match in ENV_REF.finditer(value):
                (defaulted if match.group(2) in (":-", "-") else required).add(match.group(1))
    return required, defaulted - required


# --------------------------------------------------------------------------- Kubernetes


def _k8s_docs(kind: str) -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in load_yaml_docs(path)
        if doc["kind"] == kind
    ]


def _configmap_dir(root: Path) -> tuple[Path, list[str]]:
    """The ConfigMaps' files laid out as the Deployment mounts them; and their texts."""
    maps = {d["metadata"]["name"]: d["data"] for d in _k8s_docs("ConfigMap")}
    (root / "projects").mkdir(parents=True)
    # Its own Redis key prefix: the test Redis is shared with other tests.
    gateway_yaml = maps["karta-gateway-config"]["gateway.yaml"]
    (root / "gateway.yaml").write_text(
        gateway_yaml.replace("key_prefix: gw", f"key_prefix: k8s{uuid.uuid4().hex[:8]}")
    )
    texts = [gateway_yaml]
    for key, text in maps["karta-gateway-projects"].items():
        (root / "projects" / key).write_text(text)
        texts.append(text)
    return root, texts


def _container_env() -> list[dict[str, Any]]:
    (deployment,) = _k8s_docs("Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env: list[dict[str, Any]] = container["env"]
    return env


def _secret_example() -> dict[str, str]:
    (secret,) = _k8s_docs("Secret")
    assert secret["metadata"]["name"] == SECRET
    return {str(k): str(v) for k, v in secret["stringData"].items()}


def _new_key() -> tuple[str, dict[str, str]]:
    """``gateway keys new --org demo --id bootstrap`` as deploy/README.md runs it: the
    key (stdout), and the Secret's api-key-prefix / api-key-sha256 read from the
    entry it prints (stderr) the way the README's sed commands read them."""
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "keys", "new", "--org", "demo", "--id",
         "bootstrap", "--scopes", "read,write"],
        capture_output=True, text=True, timeout=60, check=True, cwd=REPO,
    )  # fmt: skip
    fields = {}
    for field, pattern in ENTRY_FIELD.items():
        (value,) = pattern.findall(done.stderr)
        fields[f"api-key-{field}"] = value
    return done.stdout.strip(), fields


def _pod_env(secret: dict[str, str]) -> dict[str, str]:
    """The container's environment with ``secret`` as the Secret's data: literal values,
    and each secretKeyRef's key (an optional one left out when the Secret lacks it)."""
    env = {}
    for entry in _container_env():
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        assert ref["name"] == SECRET
        if ref["key"] in secret:
            env[entry["name"]] = secret[ref["key"]]
        else:
            assert ref.get("optional") is True, f"{entry['name']}: {ref['key']} is required"
    return env


def _filled_secret(redis_url: str, key_fields: dict[str, str]) -> dict[str, str]:
    """Every key of the example Secret, filled as deploy/README.md says."""
    filled = {key: secrets.token_urlsafe(32) for key in _secret_example()}
    filled["redis-url"] = redis_url
    filled.update(key_fields)
    return filled


def test_k8s_secret_keys_and_deployment_line_up() -> None:
    """Each key the Deployment reads is in the example Secret, and each key of the
    Secret is read (by the Deployment, or the ServiceMonitor's metrics-token)."""
    read = {e["valueFrom"]["secretKeyRef"]["key"] for e in _container_env() if "valueFrom" in e}
    (monitor,) = _k8s_docs("ServiceMonitor")
    for endpoint in monitor["spec"]["endpoints"]:
        read.add(endpoint["authorization"]["credentials"]["key"])
    assert read == set(_secret_example())


def test_k8s_configmap_loads_with_the_secret_filled(tmp_path: Path) -> None:
    _, key_fields = _new_key()
    env = _pod_env(_filled_secret("redis://redis:6379/0", key_fields))
    directory, texts = _configmap_dir(tmp_path / "config")
    config = load_config(directory, env)  # no problem at all
    (record,) = config.keys_by_prefix[key_fields["api-key-prefix"]]
    assert (record.org, record.entry.id) == ("demo", "bootstrap")
    assert record.entry.sha256 == key_fields["api-key-sha256"]
    # Every variable the config reads is one the Deployment sets: ${VAR} without a
    # default, and the secrets it names (api_key_env, secret_env, the operator token).
    required, _ = _references(texts)
    named = {v for _, _, v in secret_variables(directory, config.gateway, config.projects)}
    assert required >= {"REDIS_URL", "GATEWAY_API_KEY_PREFIX", "GATEWAY_API_KEY_SHA256"}
    assert named >= {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GATEWAY_SESSION_SECRET"}
    assert required | named <= set(env), sorted((required | named) - set(env))
    assert set(config.gateway.providers) == {"openai", "anthropic", "demo"}


async def test_k8s_configmap_authenticates_with_the_secret_filled(
    tmp_path: Path, redis_url: str, aiohttp_client: AiohttpClient
) -> None:
    """The bootstrap key made as the README says is accepted: a call to the demo project
    (no provider key needed) is served."""
    key, key_fields = _new_key()
    env = _pod_env(_filled_secret(redis_url, key_fields))
    directory, _ = _configmap_dir(tmp_path / "config")
    config = load_config(directory, env)
    client: TestClient[Any, Any] = await aiohttp_client(create_app(config, redis_url))
    resp = await client.post(
        "/v1/projects/demo/chat/completions",
        json={"messages": [{"role": "user", "content": "Hello"}]},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["choices"][0]["message"]["content"].endswith("You said: Hello")
    wrong = await client.post(
        "/v1/projects/demo/chat/completions",
        json={"messages": [{"role": "user", "content": "Hello"}]},
        headers={"Authorization": f"Bearer {key[:-1]}x"},
    )
    assert wrong.status == 401


def test_k8s_example_secret_applied_unfilled_is_refused(tmp_path: Path) -> None:
    """Unfilled, the bootstrap key's fields fail their format; with them filled, each
    secret still a placeholder is named (its variable, never its value)."""
    example = _secret_example()
    directory, _ = _configmap_dir(tmp_path / "config")
    with pytest.raises(ConfigError) as caught:
        load_config(directory, _pod_env(example))
    paths = {p for _, p, _ in caught.value.problems}
    assert paths == {"orgs.demo.api_keys.0.prefix", "orgs.demo.api_keys.0.sha256"}
    _, key_fields = _new_key()
    with pytest.raises(ConfigError) as caught:
        load_config(directory, _pod_env({**example, **key_fields}))
    text = str(caught.value)
    named = [
        "GATEWAY_SESSION_SECRET",
        "GATEWAY_METRICS_TOKEN",
        "KARTA_OPERATOR_TOKEN",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
    ]
    for variable in named:
        assert f"environment variable {variable} holds a placeholder" in text
    assert len(caught.value.problems) == len(named) + 1  # and redis.url
    assert "redis.url" in {p for _, p, _ in caught.value.problems}
    for value in example.values():
        if value != "REPLACE_ME":  # the marker itself is named, never a whole value
            assert value not in text


# --------------------------------------------------------------------------- compose


def _compose_gateway_env(dotenv: dict[str, str]) -> dict[str, str]:
    """gateway-1's environment as compose interpolates it from ``dotenv`` (deploy/.env)."""
    (doc,) = load_yaml_docs(DEPLOY / "docker-compose.yml")
    raw: dict[str, Any] = doc["services"]["gateway-1"]["environment"]

    def interpolate(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        value = dotenv.get(name)
        if op and op.endswith("?"):
            assert value, f"compose would refuse to start: {arg}"
            return value
        if op == ":-" and not value:
            return arg
        if op == "-" and value is None:
            return arg
        return value or ""

    return {k: ENV_REF.sub(interpolate, str(v)) for k, v in raw.items()}


def _dotenv_example() -> dict[str, str]:
    out = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            out[name] = value
    return out


def _compose_config() -> tuple[Path, list[str]]:
    (doc,) = load_yaml_docs(DEPLOY / "docker-compose.yml")
    volumes = doc["services"]["gateway-1"]["volumes"]
    (mount,) = [v for v in volumes if v.split(":")[1] == "/etc/gateway"]
    directory = (DEPLOY / mount.split(":")[0]).resolve()
    assert directory == REPO / "config"
    texts = [p.read_text() for p in [directory / "gateway.yaml", *directory.glob("projects/*")]]
    return directory, texts


def test_compose_config_loads_with_what_compose_passes() -> None:
    dotenv = {
        name: secrets.token_urlsafe(32) if is_placeholder(value) else value
        for name, value in _dotenv_example().items()
    }
    env = _compose_gateway_env(dotenv)
    directory, texts = _compose_config()
    config = load_config(directory, env)
    required, defaulted = _references(texts)
    named = {v for _, _, v in secret_variables(directory, config.gateway, config.projects)}
    assert named >= {"OPENAI_API_KEY", "ANTHROPIC_API_KEY", "GATEWAY_SESSION_SECRET"}
    assert required | named <= set(env), sorted((required | named) - set(env))
    # Variables with a default are passed too, but the listen address: the image's
    # command gives it (--host 0.0.0.0 --port 8080).
    assert defaulted - set(env) == {"GATEWAY_HOST", "GATEWAY_PORT"}
    assert "--host 0.0.0.0 --port 8080" in (DEPLOY / "Dockerfile").read_text()
    for provider in ("OPENAI", "ANTHROPIC"):
        assert {f"{provider}_API_KEY", f"{provider}_BASE_URL"} <= set(env)
        assert f"{provider}_API_KEY" in _dotenv_example()


def test_compose_with_the_example_env_unfilled_is_refused() -> None:
    example = _dotenv_example()
    env = _compose_gateway_env(example)
    directory, _ = _compose_config()
    with pytest.raises(ConfigError) as caught:
        load_config(directory, env)
    (problem,) = caught.value.problems
    assert "environment variable GATEWAY_SESSION_SECRET holds a placeholder" in problem[2]
    assert example["GATEWAY_SESSION_SECRET"] not in str(caught.value)
