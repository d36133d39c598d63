"""gateway.placeholders: a secret still set to a placeholder of the example files is a
config problem naming the variable (never the value); check-config lists it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gateway.cli import main as cli_main
from gateway.config import ConfigError, load_config
from gateway.http import admin
from gateway.placeholders import OPERATOR_TOKEN_ENV, is_placeholder
from tests.support.harness import Credentials, write_config

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PLACEHOLDER = "change-me-to-at-least-32-random-characters"


def _creds(tmp_path: Path) -> Credentials:
    creds = write_config(tmp_path / "config", "http://127.0.0.1:9/v1", "redis://127.0.0.1:9/0")
    gw = creds.config_dir / "gateway.yaml"
    data = yaml.safe_load(gw.read_text())
    data["metrics"]["bearer_token_env"] = "TEST_METRICS_TOKEN"
    gw.write_text(yaml.safe_dump(data, sort_keys=False))
    alpha = creds.config_dir / "projects" / "alpha.yaml"
    project = yaml.safe_load(alpha.read_text())
    project["provider_keys"] = {"upstream": "TEST_BYOK_KEY"}
    alpha.write_text(yaml.safe_dump(project, sort_keys=False))
    creds.env["TEST_METRICS_TOKEN"] = "a-real-metrics-token-0123456789"
    return creds


def _env_example() -> dict[str, str]:
    lines = (DEPLOY / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if "=" in line and not line.startswith("#")]
    return {k: v for k, v in pairs}


def _secret_example() -> dict[str, str]:
    (doc,) = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "secret.example.yaml").read_text())]
    return {str(k): str(v) for k, v in doc["stringData"].items()}


def test_the_example_files_placeholders_are_recognised() -> None:
    env = _env_example()
    assert is_placeholder(env["GATEWAY_SESSION_SECRET"])
    secret = _secret_example()
    for key in ("session-secret", "operator-token", "metrics-token", "openai-api-key"):
        assert is_placeholder(secret[key]), key
    assert is_placeholder(secret["redis-url"])


@pytest.mark.parametrize(
    "value",
    ["change-me", "CHANGE_ME_please", "changeme", "REPLACE_ME", "replace-me-now", "x-REPLACE_ME"],
)
def test_placeholder_spellings(value: str) -> None:
    assert is_placeholder(value)


@pytest.mark.parametrize(
    "value",
    ["sk-proj-abc123", "W7f0sm0Zk3Yx+change-me", "test-session-secret-xxx", "replace", "me"],
)
def test_real_looking_values_are_not_placeholders(value: str) -> None:
    assert not is_placeholder(value)


def test_the_operator_token_variable_is_the_apps() -> None:
    assert OPERATOR_TOKEN_ENV == admin.OPERATOR_TOKEN_ENV


@pytest.mark.parametrize(
    ("variable", "file", "path"),
    [
        ("GATEWAY_SESSION_SECRET", "gateway.yaml", "session_tokens.secret_env"),
        ("KARTA_OPERATOR_TOKEN", "gateway.yaml", ""),
        ("TEST_PROVIDER_KEY", "gateway.yaml", "providers.upstream.api_key_env"),
        ("TEST_METRICS_TOKEN", "gateway.yaml", "metrics.bearer_token_env"),
        ("TEST_BYOK_KEY", "projects/alpha.yaml", "provider_keys.upstream"),
    ],
)
def test_a_placeholder_secret_is_a_problem_naming_the_variable(
    tmp_path: Path, variable: str, file: str, path: str
) -> None:
    creds = _creds(tmp_path)
    load_config(creds.config_dir, creds.env)  # loads with real values
    value = "REPLACE_ME_WITH_32_RANDOM_BYTES_BASE64"
    with pytest.raises(ConfigError) as caught:
        load_config(creds.config_dir, {**creds.env, variable: value})
    (problem,) = caught.value.problems
    assert problem[:2] == (str(creds.config_dir / file), path)
    assert variable in problem[2]
    assert value not in str(caught.value)
    assert "REPLACE_ME" not in str(caught.value)


def test_an_unset_or_empty_secret_is_no_placeholder(tmp_path: Path) -> None:
    creds = _creds(tmp_path)
    env = {k: v for k, v in creds.env.items() if k != "KARTA_OPERATOR_TOKEN"}
    load_config(creds.config_dir, {**env, "GATEWAY_SESSION_SECRET": ""})


def test_a_redis_url_with_the_placeholder_is_a_problem(tmp_path: Path) -> None:
    creds = _creds(tmp_path)
    gw = creds.config_dir / "gateway.yaml"
    data = yaml.safe_load(gw.read_text())
    data["redis"]["url"] = "${REDIS_URL}"
    gw.write_text(yaml.safe_dump(data, sort_keys=False))
    url = _secret_example()["redis-url"]
    with pytest.raises(ConfigError) as caught:
        load_config(creds.config_dir, {**creds.env, "REDIS_URL": url})
    assert [p[:2] for p in caught.value.problems] == [(str(gw), "redis.url")]
    assert url not in str(caught.value)


def test_check_config_lists_every_placeholder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = _creds(tmp_path)
    for name, value in creds.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GATEWAY_SESSION_SECRET", PLACEHOLDER)
    monkeypatch.setenv("KARTA_OPERATOR_TOKEN", "change-me")
    with pytest.raises(SystemExit) as info:
        cli_main(["check-config", "--config", str(creds.config_dir)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "config invalid (2 problem(s)):"
    assert "GATEWAY_SESSION_SECRET" in err
    assert "KARTA_OPERATOR_TOKEN" in err
    assert PLACEHOLDER not in err
    assert "change-me" not in err
