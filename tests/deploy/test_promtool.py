"""promtool on the shipped Prometheus files: config syntax (with its rule file), rule
syntax, and unit tests of every alert (tests/deploy/alerts_test.yml)."""

from __future__ import annotations

import subprocess

from tests.deploy.helpers import DEPLOY, HERE, require_binary


def _promtool(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    promtool = require_binary("promtool")
    return subprocess.run(
        [promtool, *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def test_check_config_finds_rule_file() -> None:
    # rule_files is relative to prometheus.yml's directory; promtool resolves it so
    # (and checks the rules too), wherever it is run from.
    result = _promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "SUCCESS: 1 rule files found" in out, out


def test_check_rules() -> None:
    result = _promtool("check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout, result.stdout


def test_alert_rules_unit_tests() -> None:
    # Budget 80%/100% (tokens and USD, deduplicated over replicas), upstream error rate,
    # store errors, overhead p99, one replica down, all replicas down; and silence on
    # healthy traffic.
    result = _promtool("test", "rules", "alerts_test.yml", cwd=str(HERE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout
