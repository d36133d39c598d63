"""The gateway as a real process, scraped by a real Prometheus.

One module fixture starts a fake upstream, ``gateway serve --workers 2`` (a subprocess,
on a free port, against the test Redis; two workers as in the image, so /metrics
the first one serves the metrics listener, aggregating both), sends known traffic, then starts ``prometheus`` (its own
free port, its own TSDB in a temp dir, 1 s scrape and rule evaluation, the shipped
alert rules loaded) and waits until it has scraped the gateway a few times. The tests
then read what Prometheus stored through its HTTP API.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest

from gateway.metrics import Metrics
from tests.deploy.helpers import DEPLOY, ThreadedUpstream, require_binary
from tests.support.harness import Credentials, chat_body, write_config
from tests.support.ports import free_port
from tests.support.upstream import Reply, openai_error

# One gateway and one Prometheus serve the module (a module fixture), and they scrape
# on a clock: run alone, in the serial pass (under pytest-xdist every worker running
# one of its tests would start its own pair: --dist loadgroup does not group on
# pytest 9.2, pytest-xdist issue 1386).
pytestmark = [pytest.mark.serial, pytest.mark.xdist_group("prometheus")]

WORKERS = 2
UNARY = 5  # requests to project alpha, answered 200
STREAMS = 3  # streaming requests to project alpha, answered 200
# The fake upstream reports this usage for every answer, unary and streamed.
PROMPT_TOKENS, COMPLETION_TOKENS = 11, 3
# gpt-4o-mini in the harness: $0.15 / M input, $0.60 / M output.
COST_PER_REQUEST = (PROMPT_TOKENS * 0.15 + COMPLETION_TOKENS * 0.60) / 1e6
ALPHA_DAY_TOKEN_CAP = 100_000
ALPHA_MONTH_USD_CAP = 5.0
# Requests the test sends, by (project label, status label).
EXPECTED_REQUESTS = {
    ("alpha", "200"): UNARY + STREAMS,
    ("tiny", "402"): 1,  # a 1-token cap: refused before anything is sent upstream
    ("faulty", "502"): 1,  # the upstream answers 500
    ("-", "401"): 1,  # a bad key: no project resolved
}
PROJECTS = "(alpha|tiny|faulty)"  # what Grafana substitutes for $project (multi-value)
# Metric families this traffic does not provoke (no Redis failure, no rate limit, one
# attempt per target, every answer reports usage): dashboard queries over them may be
# empty. Every other dashboard query must return data.
NOT_PROVOKED = {
    "gateway_store_errors_total",
    "gateway_unmetered_requests_total",
    "gateway_rate_limited_total",
    "gateway_estimated_usage_total",
    "gateway_upstream_retries_total",
    "gateway_upstream_fallbacks_total",
}


def _http(
    url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={**(headers or {})})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Live:
    gateway_url: str
    prometheus_url: str
    creds: Credentials
    exposition: str  # the gateway's /metrics after the traffic
    logs: dict[str, Path] = field(default_factory=dict)

    def api(self, path: str, **params: str) -> dict[str, Any]:
        url = f"{self.prometheus_url}{path}?{urllib.parse.urlencode(params)}"
        status, body = _http(url)
        data: dict[str, Any] = json.loads(body)
        data["_http_status"] = status
        return data

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        assert data["status"] == "success", f"{expr}: {data}"
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def scalar(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])


def _wait(what: str, check: Any, timeout: float, logs: dict[str, Path]) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, ValueError, KeyError, AssertionError) as exc:
            last = exc
        time.sleep(0.2)
    tails = {name: path.read_text()[-3000:] for name, path in logs.items() if path.exists()}
    pytest.fail(f"timed out waiting for {what} (last error: {last!r}); logs: {tails}")


def _gateway_bin() -> str:
    path = Path(sys.executable).parent / "gateway"
    if not path.exists():
        pytest.fail(f"{path} missing: install the package into the venv (pip install -e .)")
    return str(path)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@pytest.fixture(scope="module")
def live(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    prometheus = require_binary("prometheus")
    tmp = tmp_path_factory.mktemp("live")
    upstream = ThreadedUpstream().start()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        creds = write_config(
            tmp / "config",
            upstream.base_url,
            redis_url,
            projects={
                "alpha": {
                    "budgets": {
                        "project": {
                            "day": {"total_tokens": ALPHA_DAY_TOKEN_CAP},
                            "month": {"cost_usd": str(ALPHA_MONTH_USD_CAP)},
                        }
                    }
                },
                "tiny": {"budgets": {"project": {"day": {"total_tokens": 1}}}},
                "faulty": {},
            },
        )
        logs = {"gateway": tmp / "gateway.log", "prometheus": tmp / "prometheus.log"}

        # ---- the gateway, a real process
        port, metrics_port = free_port(), free_port()
        gateway_url = f"http://127.0.0.1:{port}"
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        with logs["gateway"].open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        _gateway_bin(),
                        *("serve", "--config", str(creds.config_dir)),
                        *("--host", "127.0.0.1", "--port", str(port)),
                        # As the image runs it: several workers on one port, /metrics
                        # aggregating all of them (prometheus-client multiprocess mode).
                        *("--workers", str(WORKERS)),
                        # The metrics listener (metrics.listen), apart from the API.
                        *("--metrics-listen", f"127.0.0.1:{metrics_port}"),
                    ],
                    env={k: v for k, v in creds.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
                    cwd=tmp,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        _wait(
            "gateway /readyz",
            lambda: procs[0].poll() is None and _http(gateway_url + "/readyz")[0] == 200,
            30,
            logs,
        )
        assert procs[0].poll() is None, logs["gateway"].read_text()

        # ---- known traffic
        auth = {"Authorization": f"Bearer {creds.key}"}
        chat = gateway_url + "/v1/projects/{}/chat/completions"
        for _ in range(UNARY):
            status, body = _http(chat.format("alpha"), chat_body(), auth)
            assert status == 200, body
            assert json.loads(body)["usage"]["prompt_tokens"] == PROMPT_TOKENS
        for _ in range(STREAMS):
            status, body = _http(chat.format("alpha"), chat_body(stream=True), auth)
            assert status == 200, body
            assert b"[DONE]" in body, body
        status, body = _http(chat.format("tiny"), chat_body(), auth)
        assert status == 402, body
        upstream.script(Reply(status=500, json=openai_error(500)))
        status, body = _http(chat.format("faulty"), chat_body(), auth)
        assert status == 502, body
        status, body = _http(
            chat.format("alpha"), chat_body(), {"Authorization": "Bearer kt_live_" + "x" * 32}
        )
        assert status == 401, body
        status, _ = _http(gateway_url + "/metrics")
        assert status == 404, "the API port serves no metrics"
        status, metrics_body = _http(metrics_url)
        assert status == 200

        # ---- a real Prometheus scraping it, with the shipped alert rules
        prom_port = free_port()
        prom_config = tmp / "prometheus.yml"
        prom_config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
                    "scrape_configs": [
                        {
                            "job_name": "gateway",
                            "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                        }
                    ],
                }
            )
        )
        with logs["prometheus"].open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [
                        prometheus,
                        f"--config.file={prom_config}",
                        f"--storage.tsdb.path={tmp / 'tsdb'}",
                        f"--web.listen-address=127.0.0.1:{prom_port}",
                    ],
                    cwd=tmp,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        live = Live(gateway_url, f"http://127.0.0.1:{prom_port}", creds, metrics_body.decode())
        live.logs = logs

        def scraped_enough() -> bool:
            assert procs[1].poll() is None, "prometheus exited"
            # rate(...[1m]) needs at least two samples; take a few more.
            return (
                live.scalar('count_over_time(up{job="gateway"}[1m])') >= 4
                and live.scalar('min_over_time(up{job="gateway"}[1m])') == 1
            )

        _wait("Prometheus to scrape the gateway", scraped_enough, 40, logs)
        yield live
    finally:
        for proc in reversed(procs):
            _stop(proc)
        upstream.close()


# --------------------------------------------------------------------------- counts


def test_requests_total_matches_what_was_sent(live: Live) -> None:
    result = live.query("sum by (project, status) (gateway_requests_total)")
    got = {(r["metric"]["project"], r["metric"]["status"]): float(r["value"][1]) for r in result}
    assert got == {k: float(v) for k, v in EXPECTED_REQUESTS.items()}
    by_model = live.query('gateway_requests_total{project="alpha"}')
    assert [r["metric"]["model"] for r in by_model] == ["default"]


def test_tokens_and_cost_match_reported_usage(live: Live) -> None:
    ok = UNARY + STREAMS
    result = live.query("sum by (project, type) (gateway_tokens_total)")
    got = {(r["metric"]["project"], r["metric"]["type"]): float(r["value"][1]) for r in result}
    # Only alpha's answers carried usage: the 402 and the 502 bill nothing.
    assert got == {
        ("alpha", "input"): ok * PROMPT_TOKENS,
        ("alpha", "output"): ok * COMPLETION_TOKENS,
    }
    assert live.scalar('sum(gateway_cost_usd_total{project="alpha"})') == pytest.approx(
        ok * COST_PER_REQUEST, rel=1e-9
    )


def test_budget_gauges_match_usage_and_caps(live: Live) -> None:
    ok = UNARY + STREAMS
    used = 'gateway_budget_used_tokens{project="alpha",window="day",type="%s"}'
    assert live.scalar(used % "input") == ok * PROMPT_TOKENS
    assert live.scalar(used % "output") == ok * COMPLETION_TOKENS
    assert live.scalar(used % "total") == ok * (PROMPT_TOKENS + COMPLETION_TOKENS)
    cap = 'gateway_budget_limit_tokens{project="alpha",window="day",type="total"}'
    assert live.scalar(cap) == ALPHA_DAY_TOKEN_CAP
    assert live.scalar('gateway_budget_limit_usd{project="alpha",window="month"}') == (
        ALPHA_MONTH_USD_CAP
    )
    assert live.scalar('gateway_budget_used_usd{project="alpha",window="month"}') == pytest.approx(
        ok * COST_PER_REQUEST, rel=1e-9
    )
    assert live.scalar('gateway_budget_rejections_total{project="tiny"}') == 1
    assert live.scalar("sum(gateway_upstream_errors_total)") == 1
    assert live.scalar("sum(gateway_auth_failures_total)") == 1
    assert live.scalar("gateway_open_streams") == 0


# --------------------------------------------------------------------------- exposition


def test_promtool_check_metrics_on_live_exposition(live: Live) -> None:
    promtool = require_binary("promtool")
    assert "gateway_requests_total" in live.exposition
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=live.exposition,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    problems = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"promtool check metrics:\n{problems}"
    assert problems == "", f"promtool check metrics:\n{problems}"


def _exposed_names(exposition: str) -> set[str]:
    """Every series name the exposition can produce, from its # TYPE lines (families
    without samples yet, like an error counter that never fired, included)."""
    names: set[str] = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", exposition, re.M):
        name, kind = match.groups()
        names.add(name)
        if kind == "histogram":
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return names


def _dashboard_exprs() -> list[tuple[str, str, str]]:
    """(panel title, refId, expr) of every query of the dashboard."""
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "gateway.json").read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["refId"], target["expr"]))
    return out


def _alert_exprs() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def _all_families_exposition() -> str:
    """Every family gateway/metrics.py defines, from a fresh single-process registry.

    The live gateway runs several workers: its aggregated /metrics (prometheus-client
    multiprocess mode) lists only families that have a sample, so counters that never
    fired (store errors, ...) are absent there, not even a # TYPE line."""
    return generate_latest(Metrics().registry).decode()


def test_promtool_check_metrics_on_every_family() -> None:
    promtool = require_binary("promtool")
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=_all_families_exposition(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    problems = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, f"promtool check metrics:\n{problems}"
    assert problems == "", f"promtool check metrics:\n{problems}"


def test_every_metric_name_used_by_dashboard_and_alerts_is_exposed(live: Live) -> None:
    exposed = _exposed_names(_all_families_exposition())
    assert _exposed_names(live.exposition) <= exposed
    used: set[str] = set()
    for expr in [e for *_, e in _dashboard_exprs()] + [e for _, e in _alert_exprs()]:
        used.update(re.findall(r"\bgateway_[a-z_]+\b", expr))
    assert used, "no gateway_ metric referenced?"
    assert sorted(used - exposed) == []


# --------------------------------------------------------------------------- dashboard


def _grafana_substitute(expr: str) -> str:
    expr = expr.replace("$project", PROJECTS)
    expr = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
    assert "$" not in expr, f"unsubstituted variable in {expr}"
    return expr


def test_every_dashboard_query_runs_and_core_ones_return_data(live: Live) -> None:
    exprs = _dashboard_exprs()
    assert len(exprs) >= 20
    failures, empty = [], []
    now = time.time()
    for title, ref, raw in exprs:
        expr = _grafana_substitute(raw)
        instant = live.api("/api/v1/query", query=expr)
        ranged = live.api(
            "/api/v1/query_range", query=expr, start=str(now - 30), end=str(now), step="1"
        )
        for kind, data in (("instant", instant), ("range", ranged)):
            if data.get("status") != "success":
                failures.append(f"{title} [{ref}] {kind}: {data.get('error')}: {expr}")
        if instant.get("status") == "success" and not instant["data"]["result"]:
            referenced = set(re.findall(r"\bgateway_[a-z_]+\b", raw))
            if not referenced & NOT_PROVOKED:
                empty.append(f"{title} [{ref}]: {expr}")
    assert failures == []
    assert empty == [], "core dashboard queries returned no data"


def test_dashboard_core_panels_values(live: Live) -> None:
    """A few panels read back: the values a person would see."""
    ok = UNARY + STREAMS
    by_title = {title: _grafana_substitute(e) for title, ref, e in _dashboard_exprs() if ref == "A"}
    in_range = live.query(by_title["Tokens in range by project and type"])
    got = {(r["metric"]["project"], r["metric"]["type"]) for r in in_range}
    assert got == {("alpha", "input"), ("alpha", "output")}
    ratio = live.query(by_title["Token budget used / cap"])
    values = {(r["metric"]["project"], r["metric"]["window"]): float(r["value"][1]) for r in ratio}
    assert values[("alpha", "day")] == pytest.approx(
        ok * (PROMPT_TOKENS + COMPLETION_TOKENS) / ALPHA_DAY_TOKEN_CAP
    )
    assert live.scalar(by_title["Replicas up"]) == 1
    assert live.scalar(by_title["Open streams"]) == 0
    assert live.scalar(by_title["In-flight requests"]) >= 0


# --------------------------------------------------------------------------- alert rules


def test_alert_rules_loaded_and_healthy(live: Live) -> None:
    expected = {name for name, _ in _alert_exprs()}
    state: dict[str, Any] = {}

    def evaluated() -> bool:
        data = live.api("/api/v1/rules")
        assert data["status"] == "success", data
        state.clear()
        for group in data["data"]["groups"]:
            for rule in group["rules"]:
                state[rule["name"]] = rule
        return set(state) == expected and all(r["health"] == "ok" for r in state.values())

    _wait("every alert rule evaluated with health ok", evaluated, 20, live.logs)
    for name, rule in state.items():
        assert rule["type"] == "alerting", name
        assert not rule.get("lastError"), (name, rule.get("lastError"))
    # The gateway is up and under every cap: nothing fires.
    assert {n: r["state"] for n, r in state.items() if r["state"] != "inactive"} == {}


def test_gateway_process_logged_no_traceback(live: Live) -> None:
    log = live.logs["gateway"].read_text()
    assert "Traceback" not in log, log[-3000:]
