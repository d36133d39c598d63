"""deploy/docker-compose.yml, deploy/Dockerfile (+ its .dockerignore), the HAProxy
config and the Grafana provisioning: parsed and checked (no container engine here)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from tests.deploy.helpers import DEPLOY, REPO

SECRET_ENV = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.I)
ENV_REF = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}$")


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """target -> source of the service's volumes (short syntax)."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        out[target] = source
    return out


# --------------------------------------------------------------------------- compose


def test_compose_services() -> None:
    services = _compose()["services"]
    assert set(services) >= {"gateway-1", "gateway-2", "lb", "redis", "prometheus", "grafana"}
    for name in ("gateway-1", "gateway-2"):
        gateway = services[name]
        assert _env(gateway)["REDIS_URL"] == "redis://redis:6379/0", name
        assert gateway["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]).is_file()
        assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
        assert "ports" not in gateway, "replicas are reached through the load balancer only"
    # One public port, on the load balancer.
    assert [p.split(":")[-1] for p in services["lb"]["ports"]] == ["8080"]


def test_compose_redis_persists_with_aof() -> None:
    redis = _compose()["services"]["redis"]
    command = redis["command"]
    args = command if isinstance(command, list) else command.split()
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    data_dir = args[args.index("--dir") + 1]
    volume = _mounts(redis)[data_dir]
    assert volume in _compose()["volumes"], "the AOF lives on a named volume"


def test_compose_prometheus_and_grafana_mounts() -> None:
    services = _compose()["services"]
    prometheus = _mounts(services["prometheus"])
    assert prometheus["/etc/prometheus/prometheus.yml"] == "./prometheus/prometheus.yml"
    assert prometheus["/etc/prometheus/alerts.yml"] == "./prometheus/alerts.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in services["prometheus"]["command"]
    # prometheus.yml's relative rule file resolves next to it in the container.
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
    # The metrics listener of each replica (compose network only), not the API port.
    assert targets == ["gateway-1:9464", "gateway-2:9464"]
    for name in ("gateway-1", "gateway-2"):
        assert _env(services[name])["GATEWAY_METRICS_LISTEN"] == "0.0.0.0:9464"

    grafana = _mounts(services["grafana"])
    assert grafana["/etc/grafana/provisioning"] == "./grafana/provisioning"
    providers = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "karta.yml").read_text()
    )["providers"]
    dashboards_path = providers[0]["options"]["path"]
    assert grafana[dashboards_path] == "./grafana/dashboards"
    for service in services.values():
        for source in _mounts(service).values():
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"bind mount source {source} missing"


def test_compose_has_no_literal_secrets() -> None:
    for name, service in _compose()["services"].items():
        for var, value in _env(service).items():
            if SECRET_ENV.search(var):
                assert ENV_REF.match(value), f"{name}: {var} must be a ${{...}} reference"
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert "sk-" not in text
    example = (DEPLOY / ".env.example").read_text()
    for line in example.splitlines():
        if "=" in line and SECRET_ENV.search(line.split("=", 1)[0]):
            value = line.split("=", 1)[1]
            assert value == "" or "change-me" in value, line


def test_lb_checks_readiness_of_both_replicas() -> None:
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert _mounts(_compose()["services"]["lb"])["/usr/local/etc/haproxy/haproxy.cfg"] == (
        "./haproxy/haproxy.cfg"
    )
    servers = re.findall(r"^\s*server (\S+) (\S+) .*\bcheck\b", cfg, re.M)
    assert servers == [("gateway-1", "gateway-1:8080"), ("gateway-2", "gateway-2:8080")]
    assert re.search(r"http-check send meth GET uri /readyz", cfg)
    assert re.search(r"^\s*bind :8080$", cfg, re.M)
    # Streams last up to the provider's total timeout (600 s): the LB must not cut them.
    for which in ("client", "server"):
        found = re.search(rf"timeout {which} (\d+)s", cfg)
        assert found is not None, which
        seconds = int(found.group(1))
        assert seconds > 600


def test_haproxy_accepts_the_config() -> None:
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.fail("haproxy not installed (apt-get install haproxy): ./scripts/test installs it")
    result = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy" / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- Dockerfile


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, args = line.strip().partition(" ")
            out.append((instruction.upper(), " ".join(args.split())))
    return out


def test_dockerfile() -> None:
    steps = _dockerfile()
    kinds = [k for k, _ in steps]
    assert steps[0] == ("FROM", "python:3.11-slim")
    users = [a for k, a in steps if k == "USER"]
    assert users, "no USER: runs as root"
    assert users[-1].split(":")[0] not in ("root", "0"), "runs as non-root"
    assert kinds.index("USER") > max(i for i, k in enumerate(kinds) if k == "RUN")
    (healthcheck,) = [a for k, a in steps if k == "HEALTHCHECK"]
    assert "/healthz" in healthcheck
    assert ("EXPOSE", "8080") in steps
    runs = " ".join(a for k, a in steps if k == "RUN")
    # Installs exactly the lock's versions, then the package without resolving anything.
    assert "pip install --require-hashes --no-deps -r requirements/runtime.txt" in runs
    assert "pip install --no-deps --no-build-isolation ." in runs
    assert not re.search(r"redis-server|apt-get install[^&]*\bredis", runs), "no embedded Redis"
    (cmd,) = [a for k, a in steps if k == "CMD"]
    command = " ".join(json.loads(cmd))
    assert "exec gateway serve --host 0.0.0.0 --port 8080 --workers ${GATEWAY_WORKERS}" in command
    env = " ".join(a for k, a in steps if k == "ENV")
    assert "GATEWAY_WORKERS=" in env
    assert "GATEWAY_CONFIG=/etc/gateway" in env
    assert not re.search(r"(API_KEY|SECRET)=\S", env), "no secret baked into the image"


def _dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pat) for c in candidates):
            excluded = not negate
    return excluded


def test_dockerignore_sends_only_what_the_image_needs() -> None:
    ignore = DEPLOY / "Dockerfile.dockerignore"
    patterns = [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for instruction, args in _dockerfile():
        if instruction == "COPY":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            copied += sources
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: missing in the repository"
        files = (
            [source]
            if (REPO / source).is_file()
            else [str(p.relative_to(REPO)) for p in (REPO / source).rglob("*") if p.is_file()]
        )
        for f in files:
            if "__pycache__" not in f:
                assert not _dockerignore_excludes(patterns, f), f"{f} is excluded but COPY'd"
    for private in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/support/harness.py",
        "config/keys/k.yaml",
    ):
        assert _dockerignore_excludes(patterns, private), f"{private} would be sent"


# --------------------------------------------------------------------------- Grafana


def test_grafana_dashboard_structure() -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"]
    (prom,) = [d for d in datasources if d["type"] == "prometheus"]
    assert prom["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "gateway.json").read_text())
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert "project" in variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    titles = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        titles.add(panel["title"])
        assert panel["datasource"]["uid"] == prom["uid"], panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == prom["uid"]
            assert target["expr"].strip()
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []))
    for needed in (
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_overhead_seconds_bucket",
        "gateway_time_to_first_token_seconds_bucket",
        "gateway_tokens_total",
        "gateway_cost_usd_total",
        "gateway_budget_used_tokens",
        "gateway_budget_limit_tokens",
        "gateway_budget_used_usd",
        "gateway_budget_limit_usd",
        "gateway_in_flight_requests",
        "gateway_open_streams",
    ):
        assert needed in exprs, f"dashboard does not chart {needed}"


def test_deploy_readme_lists_every_file() -> None:
    readme = (DEPLOY / "README.md").read_text()
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.name != "README.md":
            rel = str(Path(path).relative_to(DEPLOY))
            assert rel in readme, f"deploy/README.md does not mention {rel}"
