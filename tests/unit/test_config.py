"""Unit tests for gateway.config (YAML on disk in tmp_path, no sockets)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.cli import main as cli_main
from gateway.config import Cap, ConfigError, InputLimits, load_config, usd_to_nano
from tests.support.harness import Credentials, write_config

REPO = Path(__file__).resolve().parents[2]
# write_config only writes these URLs into YAML; nothing connects to them here.
UPSTREAM = "http://127.0.0.1:9/v1"
REDIS = "redis://127.0.0.1:9/0"


def _write(tmp_path: Path, **overrides: Any) -> Credentials:
    return write_config(tmp_path / "config", UPSTREAM, REDIS, **overrides)


def _edit(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _problems(directory: Path, env: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    with pytest.raises(ConfigError) as info:
        load_config(directory, {} if env is None else env)
    return info.value.problems


def _minimal(root: Path, gateway: str, projects: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "gateway.yaml").write_text(gateway)
    (root / "projects").mkdir(exist_ok=True)
    for slug, text in projects.items():
        (root / "projects" / f"{slug}.yaml").write_text(text)
    return root


GATEWAY_YAML = """\
providers:
  up:
    kind: openai
    base_url: https://api.example.com/v1
    api_key_env: UP_KEY
  demo:
    kind: demo
prices:
  gpt-4o-mini: {input: "0.15", output: "0.60", cached_input: "0.075"}
orgs:
  acme: {}
"""

PROJECT_YAML = """\
id: prj_one
org: acme
models:
  default:
    routes:
      - {provider: up, model: gpt-4o-mini}
"""


# --------------------------------------------------------------------------- valid


def test_valid_config_loads(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    config = load_config(creds.config_dir, creds.env)
    assert set(config.projects) == {"alpha", "beta", "gamma", "sleepy"}
    alpha = config.project("alpha")
    assert alpha is not None
    assert config.project("prj_alpha") is alpha  # by id too
    assert config.project("nope") is None
    assert alpha.org == "acme"
    assert alpha.file.wire_profile == "karta"
    assert config.projects["beta"].file.wire_profile == "openai"
    assert config.projects["sleepy"].file.enabled is False
    assert alpha.file.models["default"].routes[0].provider == "upstream"
    assert alpha.file.models["default"].routes[0].model == "gpt-4o-mini"
    assert alpha.caps == (Cap("project", "month", "total_tokens", 10_000_000),)
    assert sum(len(v) for v in config.keys_by_prefix.values()) == 4
    assert {r.entry.id for v in config.keys_by_prefix.values() for r in v} == {
        "key_main",
        "key_read",
        "key_revoked",
        "key_globex",
    }
    # Prices are integer nano-USD per million tokens.
    price = config.gateway.prices["gpt-4o-mini"]
    assert (price.input, price.output, price.cached_input) == (
        150_000_000,
        600_000_000,
        75_000_000,
    )
    assert config.gateway.prices["gpt-4o"].cached_input is None
    assert config.secret("TEST_PROVIDER_KEY") == creds.env["TEST_PROVIDER_KEY"]
    assert config.secret("NOT_SET_ANYWHERE_XYZ") == ""
    assert config.secret(None) == ""


def test_minimal_config_uses_defaults(tmp_path: Path) -> None:
    root = _minimal(tmp_path / "c", GATEWAY_YAML, {"one": PROJECT_YAML})
    config = load_config(root, {})
    gw = config.gateway
    assert gw.listen.host == "127.0.0.1"
    assert gw.listen.port == 8080
    assert gw.redis.url == ""
    assert gw.session_tokens.algorithms == ("HS256",)
    one = config.projects["one"]
    assert one.file.default_model == "default"
    assert one.file.wire_profile == "karta"
    assert one.file.max_output_tokens == 4096
    assert one.caps == ()


def test_input_limits_are_computed_at_load_and_read_only(tmp_path: Path) -> None:
    """Each alias's input limits (the dearest image, the largest context window over
    its targets) are on the loaded project, not filled in by requests: the config is
    immutable once loaded."""
    gateway = GATEWAY_YAML.replace(
        'gpt-4o-mini: {input: "0.15", output: "0.60", cached_input: "0.075"}',
        'gpt-4o-mini: {input: "0.15", output: "0.60", image_tokens: 30000, context_tokens: 32000}\n'
        '  gpt-4o: {input: "2.50", output: "10", image_tokens: 1445, context_tokens: 64000}',
    )
    project = PROJECT_YAML + (
        "  both:\n"
        "    routes:\n"
        "      - {provider: up, model: gpt-4o}\n"
        "      - {provider: up, model: gpt-4o-mini}\n"
        "  play:\n"
        "    routes:\n"
        "      - {provider: demo, model: anything}\n"
    )
    root = _minimal(tmp_path / "c", gateway, {"one": project})
    one = load_config(root, {}).projects["one"]
    assert dict(one.input_limits) == {
        "default": InputLimits(30_000, 32_000),
        "both": InputLimits(30_000, 64_000),  # the most of each over the targets
        "play": InputLimits(48_169, None),  # unpriced: limits.image_token_bound, no window
    }
    read_only: Any = one.input_limits  # typed read-only too: the point is the runtime refusal
    with pytest.raises(TypeError):
        read_only["default"] = InputLimits(1, 1)


def test_empty_project_dir_and_keys_dir_are_fine(tmp_path: Path) -> None:
    root = _minimal(tmp_path / "c", GATEWAY_YAML, {})
    config = load_config(root, {})
    assert config.projects == {}
    assert config.keys_by_prefix == {}


# --------------------------------------------------------------------------- unknown keys


def test_unknown_key_in_gateway_yaml_names_file_and_path(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    gw = creds.config_dir / "gateway.yaml"
    _edit(gw, lambda d: d["limits"].update(max_body_byts=10))
    assert _problems(creds.config_dir, creds.env) == [
        (str(gw), "limits.max_body_byts", "unknown key")
    ]


def test_unknown_key_nested_in_provider(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    gw = creds.config_dir / "gateway.yaml"
    _edit(gw, lambda d: d["providers"]["upstream"]["timeouts"].update(firstbyte=3))
    assert _problems(creds.config_dir, creds.env) == [
        (str(gw), "providers.upstream.timeouts.firstbyte", "unknown key")
    ]


def test_unknown_top_level_key_in_project(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    path = creds.config_dir / "projects" / "alpha.yaml"
    _edit(path, lambda d: d.update(budget={"project": {}}))
    assert _problems(creds.config_dir, creds.env) == [(str(path), "budget", "unknown key")]


def test_unknown_key_in_project_budget_window(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    path = creds.config_dir / "projects" / "alpha.yaml"
    _edit(path, lambda d: d["budgets"].update(project={"week": {"total_tokens": 5}}))
    assert _problems(creds.config_dir, creds.env) == [
        (str(path), "budgets.project.week", "unknown key")
    ]


# --------------------------------------------------------------------------- every error at once


def test_every_error_listed_at_once(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    gw = creds.config_dir / "gateway.yaml"
    alpha = creds.config_dir / "projects" / "alpha.yaml"
    _edit(gw, lambda d: d.setdefault("listen", {}).update(hots="0.0.0.0"))
    _edit(alpha, lambda d: d.update(wire_profile="grpc", max_output_tokens=0))
    problems = _problems(creds.config_dir, creds.env)
    assert len(problems) == 3, problems
    assert {(f, p) for f, p, _ in problems} == {
        (str(gw), "listen.hots"),
        (str(alpha), "wire_profile"),
        (str(alpha), "max_output_tokens"),
    }
    assert (str(gw), "listen.hots", "unknown key") in problems
    # ConfigError's text lists every one, one per line, as "file: path: reason".
    with pytest.raises(ConfigError) as info:
        load_config(creds.config_dir, creds.env)
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert f"{gw}: listen.hots: unknown key" in lines


def test_semantic_errors_in_several_projects_all_listed(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    projects = creds.config_dir / "projects"
    _edit(projects / "alpha.yaml", lambda d: d.update(org="initech"))
    _edit(projects / "beta.yaml", lambda d: d.update(default_model="missing"))
    _edit(
        projects / "gamma.yaml",
        lambda d: d["models"]["default"]["routes"][0].update(provider="nope"),
    )
    assert _problems(creds.config_dir, creds.env) == [
        (str(projects / "alpha.yaml"), "org", "unknown org 'initech'"),
        (str(projects / "beta.yaml"), "default_model", "'missing' is not a model alias"),
        (
            str(projects / "gamma.yaml"),
            "models.default.routes.0.provider",
            "unknown provider 'nope'",
        ),
    ]


# --------------------------------------------------------------------------- ${VAR} expansion


def test_env_expansion_with_and_without_default(tmp_path: Path) -> None:
    gateway = GATEWAY_YAML.replace(
        "base_url: https://api.example.com/v1", "base_url: ${UP_BASE}/v1"
    ) + (
        "listen:\n"
        "  host: ${GW_HOST:-0.0.0.0}\n"
        "  port: ${GW_PORT:-9090}\n"
        "redis:\n"
        "  url: redis://${REDIS_HOST}:6379/0\n"
        "  key_prefix: ${PFX:-}gw\n"
    )
    root = _minimal(tmp_path / "c", gateway, {"one": PROJECT_YAML})
    config = load_config(
        root, {"UP_BASE": "https://proxy.internal:8443", "REDIS_HOST": "cache", "GW_PORT": "7070"}
    )
    gw = config.gateway
    assert gw.providers["up"].base_url == "https://proxy.internal:8443/v1"
    assert gw.listen.host == "0.0.0.0"  # default used
    assert gw.listen.port == 7070  # set value wins over the default, then typed
    assert gw.redis.url == "redis://cache:6379/0"
    assert gw.redis.key_prefix == "gw"  # empty default


def test_env_default_used_when_variable_is_empty(tmp_path: Path) -> None:
    gateway = GATEWAY_YAML + "listen:\n  host: ${GW_HOST:-10.0.0.1}\n"
    root = _minimal(tmp_path / "c", gateway, {})
    assert load_config(root, {"GW_HOST": ""}).gateway.listen.host == "10.0.0.1"


def test_unset_env_without_default_is_an_error(tmp_path: Path) -> None:
    gateway = GATEWAY_YAML + "listen:\n  host: ${GW_HOST_NOT_SET}\n"
    root = _minimal(tmp_path / "c", gateway, {"one": PROJECT_YAML})
    assert _problems(root, {}) == [
        (
            str(root / "gateway.yaml"),
            "listen.host",
            "environment variable GW_HOST_NOT_SET is not set",
        )
    ]


def test_unset_env_in_project_file_names_that_file(tmp_path: Path) -> None:
    project = PROJECT_YAML.replace("id: prj_one", "id: ${PROJECT_ID}")
    root = _minimal(tmp_path / "c", GATEWAY_YAML, {"one": project})
    problems = _problems(root, {})
    assert (
        str(root / "projects" / "one.yaml"),
        "id",
        "environment variable PROJECT_ID is not set",
    ) in problems
    assert load_config(root, {"PROJECT_ID": "prj_x"}).projects["one"].id == "prj_x"


def test_env_values_are_not_expanded_twice(tmp_path: Path) -> None:
    gateway = GATEWAY_YAML + "listen:\n  host: ${GW_HOST}\n"
    root = _minimal(tmp_path / "c", gateway, {})
    config = load_config(root, {"GW_HOST": "${OTHER}"})
    assert config.gateway.listen.host == "${OTHER}"


@pytest.mark.parametrize("alg", ["none", "RS256", "ES256"])
def test_session_token_algorithms_limited_to_hmac(tmp_path: Path, alg: str) -> None:
    creds = _write(tmp_path, gateway={"session_tokens": {"algorithms": ["HS256", alg]}})
    problems = _problems(creds.config_dir, creds.env)
    assert [(f, p) for f, p, _ in problems] == [
        (str(creds.config_dir / "gateway.yaml"), "session_tokens.algorithms.1")
    ]


# --------------------------------------------------------------------------- cross-file checks


def test_unknown_provider_in_route(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    path = creds.config_dir / "projects" / "alpha.yaml"
    _edit(path, lambda d: d["models"]["smart"]["routes"][0].update(provider="anthropic"))
    assert _problems(creds.config_dir, creds.env) == [
        (str(path), "models.smart.routes.0.provider", "unknown provider 'anthropic'")
    ]


def test_missing_price_for_model(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    path = creds.config_dir / "projects" / "alpha.yaml"
    _edit(
        path,
        lambda d: d["models"]["smart"]["routes"].append({"provider": "upstream", "model": "gpt-9"}),
    )
    assert _problems(creds.config_dir, creds.env) == [
        (str(path), "models.smart.routes.1.model", "no price for model 'gpt-9'")
    ]


def test_demo_provider_needs_no_price(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    path = creds.config_dir / "projects" / "alpha.yaml"
    _edit(path, lambda d: d["models"].update(demo={"routes": [{"provider": "demo", "model": "x"}]}))
    config = load_config(creds.config_dir, creds.env)
    assert config.projects["alpha"].file.models["demo"].routes[0].model == "x"


def test_default_model_not_an_alias(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    path = creds.config_dir / "projects" / "beta.yaml"
    _edit(path, lambda d: d.update(default_model="gpt-4o"))
    assert _problems(creds.config_dir, creds.env) == [
        (str(path), "default_model", "'gpt-4o' is not a model alias")
    ]


def test_unknown_org(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    path = creds.config_dir / "projects" / "gamma.yaml"
    _edit(path, lambda d: d.update(org="initech"))
    assert _problems(creds.config_dir, creds.env) == [(str(path), "org", "unknown org 'initech'")]


def test_unknown_org_in_keys_file(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    keys = creds.config_dir / "keys"
    keys.mkdir()
    entry = {"id": "key_extra", "prefix": "kt_live_abcdEFGH", "sha256": "a" * 64}
    (keys / "extra.yaml").write_text(yaml.safe_dump({"orgs": {"initech": [entry]}}))
    assert _problems(creds.config_dir, creds.env) == [
        (str(keys / "extra.yaml"), "orgs.initech", "unknown org")
    ]


def test_keys_file_entries_are_indexed(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    keys = creds.config_dir / "keys"
    keys.mkdir()
    entry = {"id": "key_extra", "prefix": "kt_live_abcdEFGH", "sha256": "a" * 64}
    (keys / "extra.yaml").write_text(yaml.safe_dump({"orgs": {"globex": [entry]}}))
    config = load_config(creds.config_dir, creds.env)
    [record] = config.keys_by_prefix["kt_live_abcdEFGH"]
    assert record.org == "globex"
    assert record.entry.scopes == ("write",)


def test_duplicate_project_id(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    path = creds.config_dir / "projects" / "gamma.yaml"
    _edit(path, lambda d: d.update(id="prj_beta", org="acme"))
    assert _problems(creds.config_dir, creds.env) == [
        (str(path), "id", "duplicate project id 'prj_beta'")
    ]


def test_bad_project_file_name(tmp_path: Path) -> None:
    root = _minimal(tmp_path / "c", GATEWAY_YAML, {"My_App": PROJECT_YAML})
    assert _problems(root) == [
        (
            str(root / "projects" / "My_App.yaml"),
            "",
            "file name must be a project slug ([a-z0-9-])",
        )
    ]


def test_invalid_yaml_reported(tmp_path: Path) -> None:
    root = _minimal(tmp_path / "c", GATEWAY_YAML, {"one": "id: [unclosed\n"})
    [(file, path, reason)] = _problems(root)
    assert (file, path) == (str(root / "projects" / "one.yaml"), "")
    assert reason.startswith("invalid YAML: ")


def test_missing_gateway_yaml_reported(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    [(file, path, reason)] = _problems(root)
    assert (file, path) == (str(root / "gateway.yaml"), "")
    assert reason.startswith("cannot read")


# --------------------------------------------------------------------------- money


def test_cost_caps_are_exact_integer_nano_usd(tmp_path: Path) -> None:
    creds = _write(
        tmp_path,
        projects={
            "alpha": {
                "budgets": {
                    "project": {"day": {"cost_usd": "1.50"}, "month": {"cost_usd": 20}},
                    "per_key": {"lifetime": {"cost_usd": "0.000000001"}},
                    "per_user": {"day": {"cost_usd": "0.1", "total_tokens": 500}},
                }
            }
        },
    )
    caps = load_config(creds.config_dir, creds.env).projects["alpha"].caps
    assert caps == (
        Cap("project", "day", "cost_usd", 1_500_000_000),
        Cap("project", "month", "cost_usd", 20_000_000_000),
        Cap("key", "lifetime", "cost_usd", 1),
        Cap("user", "day", "cost_usd", 100_000_000),
        Cap("user", "day", "total_tokens", 500),
    )
    assert all(type(c.limit) is int for c in caps)


def test_cost_cap_with_too_much_precision_rejected(tmp_path: Path) -> None:
    creds = _write(
        tmp_path,
        projects={"alpha": {"budgets": {"project": {"day": {"cost_usd": "0.0000000015"}}}}},
    )
    path = creds.config_dir / "projects" / "alpha.yaml"
    assert _problems(creds.config_dir, creds.env) == [
        (str(path), "budgets.project.day", "more precision than one nano-USD")
    ]


@pytest.mark.parametrize(
    ("value", "nano"),
    [
        ("1.50", 1_500_000_000),
        ("0", 0),
        ("0.000000001", 1),
        ("12345.678901234", 12_345_678_901_234),
        (2, 2_000_000_000),
        ("1e-9", 1),
    ],
)
def test_usd_to_nano(value: Any, nano: int) -> None:
    assert usd_to_nano(value) == nano
    assert type(usd_to_nano(value)) is int


@pytest.mark.parametrize("value", ["0.0000000001", "1.0000000005", "-1", "abc", "NaN", "Infinity"])
def test_usd_to_nano_rejects(value: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        usd_to_nano(value)


@pytest.mark.parametrize("value", ["NaN", "sNaN", ".nan"])
def test_nan_cost_cap_is_a_config_problem_not_a_crash(tmp_path: Path, value: str) -> None:
    creds = _write(tmp_path)
    path = creds.config_dir / "projects" / "alpha.yaml"
    # Written raw so that ".nan" reaches the loader as a YAML float.
    path.write_text(
        path.read_text().replace(
            "budgets:\n  project:\n    month:\n      total_tokens: 10000000\n",
            f"budgets:\n  project:\n    day:\n      cost_usd: {value}\n",
        )
    )
    assert f"cost_usd: {value}" in path.read_text()
    problems = _problems(creds.config_dir, creds.env)
    assert [(f, p) for f, p, _ in problems] == [(str(path), "budgets.project.day")]


def test_token_cap_must_be_non_negative_integer(tmp_path: Path) -> None:
    creds = _write(
        tmp_path, projects={"alpha": {"budgets": {"project": {"day": {"total_tokens": -5}}}}}
    )
    path = creds.config_dir / "projects" / "alpha.yaml"
    assert _problems(creds.config_dir, creds.env) == [
        (str(path), "budgets.project.day", "total_tokens: must be a non-negative integer")
    ]


def test_price_with_too_much_precision_rejected(tmp_path: Path) -> None:
    creds = _write(
        tmp_path, gateway={"prices": {"gpt-4o-mini": {"input": "0.15", "output": "1e-10"}}}
    )
    problems = _problems(creds.config_dir, creds.env)
    assert (
        str(creds.config_dir / "gateway.yaml"),
        "prices.gpt-4o-mini.output",
        "more precision than one nano-USD",
    ) in problems


# --------------------------------------------------------------------------- the shipped config


def test_shipped_config_loads_without_session_secret() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_SESSION_SECRET"}
    config = load_config(REPO / "config", env)
    assert config.projects  # at least one project ships
    assert config.secret(config.gateway.session_tokens.secret_env) == ""
    for project in config.projects.values():
        assert project.file.default_model in project.file.models


def test_shipped_config_loads_with_empty_environment() -> None:
    config = load_config(REPO / "config", {})
    assert config.gateway.listen.port == 8080
    assert config.gateway.redis.url == ""


# --------------------------------------------------------------------------- gateway check-config


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    creds = _write(tmp_path)
    assert cli_main(["check-config", "--config", str(creds.config_dir)]) == 0
    out = capsys.readouterr()
    assert out.out == "config OK: 4 project(s), 4 API key(s)\n"
    assert out.err == ""


def test_check_config_bad_exits_2_listing_problems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    creds = _write(tmp_path)
    gw = creds.config_dir / "gateway.yaml"
    alpha = creds.config_dir / "projects" / "alpha.yaml"
    beta = creds.config_dir / "projects" / "beta.yaml"
    _edit(gw, lambda d: d["limits"].update(max_body_byts=10))
    _edit(alpha, lambda d: d.update(colour="blue"))
    _edit(beta, lambda d: d.update(default_model="missing"))
    with pytest.raises(SystemExit) as info:
        cli_main(["check-config", "--config", str(creds.config_dir)])
    assert info.value.code == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.splitlines()
    assert lines[0] == "config invalid (3 problem(s)):"
    assert sorted(line.strip() for line in lines[1:]) == sorted(
        [
            f"{gw}: limits.max_body_byts: unknown key",
            f"{alpha}: colour: unknown key",
            f"{beta}: default_model: 'missing' is not a model alias",
        ]
    )


def test_check_config_shipped_dir(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["check-config", "--config", str(REPO / "config")]) == 0
    assert capsys.readouterr().out.startswith("config OK: ")


def test_reservation_must_outlast_an_attempt(tmp_path: Path) -> None:
    """A hold shorter than an attempt may last would expire while the request still runs,
    and a concurrent request could take its room: refused, naming the provider."""
    creds = _write(tmp_path, gateway={"limits": {"reservation_ttl_seconds": 16}})
    # The harness's provider: total 10 s + idle 2 s + 5 s of margin = 17 s.
    problems = _problems(creds.config_dir, creds.env)
    assert [(Path(f).name, p) for f, p, _ in problems] == [
        ("gateway.yaml", "limits.reservation_ttl_seconds")
    ]
    assert "'upstream'" in problems[0][2]
    assert "17 s" in problems[0][2]
    ok = _write(tmp_path / "ok", gateway={"limits": {"reservation_ttl_seconds": 17}})
    assert load_config(ok.config_dir, ok.env).gateway.limits.reservation_ttl_seconds == 17


def test_one_key_listed_twice_is_an_error(tmp_path: Path) -> None:
    """Which of two entries of the same key wins would decide whether its revocation
    holds: the copy is refused, naming both."""
    creds = _write(tmp_path)
    gw = yaml.safe_load((creds.config_dir / "gateway.yaml").read_text())
    revoked = next(e for e in gw["orgs"]["acme"]["api_keys"] if e.get("revoked"))
    copy = {**revoked, "id": "k_copy", "revoked": False, "scopes": ["admin"]}
    (creds.config_dir / "keys").mkdir(exist_ok=True)
    (creds.config_dir / "keys" / "copy.yaml").write_text(
        yaml.safe_dump({"orgs": {"acme": [copy]}}, sort_keys=False)
    )
    problems = _problems(creds.config_dir, creds.env)
    assert [(p, r) for _, p, r in problems] == [
        ("api key k_copy", f"the same key as {revoked['id']}")
    ]


def test_a_nested_default_is_an_error_not_a_stray_brace(tmp_path: Path) -> None:
    creds = _write(tmp_path)
    path = creds.config_dir / "gateway.yaml"
    _edit(path, lambda d: d["redis"].update(url="${A_URL:-${B_URL}}"))
    for env in ({**creds.env, "A_URL": "redis://h:6379/0"}, creds.env):
        problems = _problems(creds.config_dir, env)
        assert [(p, r) for _, p, r in problems] == [
            ("redis.url", "the default of ${A_URL} cannot contain ${...}")
        ]


def test_session_token_default_ttl_within_the_max(tmp_path: Path) -> None:
    creds = _write(
        tmp_path,
        gateway={"session_tokens": {"default_ttl_seconds": 7200, "max_ttl_seconds": 3600}},
    )
    problems = _problems(creds.config_dir, creds.env)
    assert len(problems) == 1
    assert problems[0][1] == "session_tokens"
    assert "default_ttl_seconds must not exceed max_ttl_seconds" in problems[0][2]


# --------------------------------------------------------------------------- metrics


def test_metrics_listen_defaults_to_loopback_and_is_checked(tmp_path: Path) -> None:
    root = _minimal(tmp_path / "c", GATEWAY_YAML, {"one": PROJECT_YAML})
    assert load_config(root, {"UP_KEY": "k"}).gateway.metrics.listen == "127.0.0.1:9464"
    for bad in ("9464", "localhost", ":9464", "host:99999", "host:port"):
        (root / "gateway.yaml").write_text(GATEWAY_YAML + f"metrics: {{listen: '{bad}'}}\n")
        problems = _problems(root, {"UP_KEY": "k"})
        assert [p for _, p, _ in problems] == ["metrics.listen"], (bad, problems)
    (root / "gateway.yaml").write_text(GATEWAY_YAML + "metrics: {listen: '[::1]:9464'}\n")
    assert load_config(root, {"UP_KEY": "k"}).gateway.metrics.listen == "[::1]:9464"


def test_a_metrics_token_named_but_unset_is_an_error(tmp_path: Path) -> None:
    root = _minimal(tmp_path / "c", GATEWAY_YAML, {"one": PROJECT_YAML})
    (root / "gateway.yaml").write_text(GATEWAY_YAML + "metrics: {bearer_token_env: MTOKEN}\n")
    problems = _problems(root, {"UP_KEY": "k", "MTOKEN": ""})
    assert [(p, r) for _, p, r in problems] == [
        ("metrics.bearer_token_env", "environment variable MTOKEN is not set")
    ]
    assert load_config(root, {"UP_KEY": "k", "MTOKEN": "t"}).gateway.metrics.bearer_token_env
