"""Fuzz: any project file (YAML of any shape, fields of any type, ``${VAR}`` forms)
loads or is refused with ConfigError listing (file, path, reason): `gateway
check-config` reports it, and never crashes with a traceback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ConfigError, load_config
from tests.support.harness import write_config
from tests.support.strategies import json_values, shaped

amounts = shaped(
    {
        "input_tokens": st.integers(0, 10**9),
        "output_tokens": st.integers(0, 10**9),
        "total_tokens": st.integers(0, 10**9),
        "cost_usd": st.sampled_from(["1", "0.5", "-1", "abc", "1e3"]),
    }
)
windows = shaped({"day": amounts, "month": amounts, "lifetime": amounts})
project_like = shaped(
    {
        "id": st.sampled_from(["prj_fuzz", "", "x y", "${FUZZ_ID}", "${FUZZ_ID:-prj_d}"]),
        "org": st.sampled_from(["acme", "nope", ""]),
        "enabled": st.booleans(),
        "wire_profile": st.sampled_from(["karta", "openai", "xml"]),
        "default_model": st.sampled_from(["default", "missing"]),
        "models": st.dictionaries(
            st.sampled_from(["default", "other"]),
            shaped(
                {
                    "routes": st.lists(
                        shaped(
                            {
                                "provider": st.sampled_from(["upstream", "nope"]),
                                "model": st.text(max_size=6),
                                "weight": st.integers(-1, 5),
                            }
                        ),
                        max_size=2,
                    )
                }
            ),
            max_size=2,
        ),
        "max_output_tokens": st.integers(-5, 10**6),
        "budgets": shaped({"project": windows, "per_key": windows, "per_user": windows}),
        "rate_limits": shaped(
            {
                "requests_per_minute": st.integers(-1, 1000),
                "tokens_per_minute": st.integers(-1, 10**6),
                "per_key": shaped({"requests_per_minute": st.integers(-1, 1000)}),
            }
        ),
        "provider_keys": st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=2),
    }
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(project_like | json_values)
def test_any_project_file_loads_or_lists_its_problems(tmp_path: Path, project: Any) -> None:
    root = tmp_path / "cfg"
    if not root.exists():
        write_config(root, "http://127.0.0.1:9/v1", "redis://127.0.0.1:9/0")
    (root / "projects" / "fuzzed.yaml").write_text(yaml.safe_dump(project))
    problems: list[tuple[str, str, str]] | None = None
    try:
        load_config(root, env={"TEST_PROVIDER_KEY": "sk-x"})
    except ConfigError as exc:
        problems = exc.problems
    if problems is not None:
        assert problems
        for file, _path, reason in problems:
            assert file
            assert reason
