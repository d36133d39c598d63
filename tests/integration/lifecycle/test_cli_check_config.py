"""``gateway check-config`` lists every problem in one run (issue #12): structural ones
(pydantic) and references between files alike, in every file, even where the file
that defines what others refer to (gateway.yaml) is itself invalid. The command runs
as a process of its own."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.support.harness import write_config
from tests.support.process import gateway_cli


def _edit(path: Path, change: Any) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_every_problem_of_every_file_and_kind_is_listed(tmp_path: Path) -> None:
    creds = write_config(tmp_path / "config", "http://127.0.0.1:9/v1", "redis://127.0.0.1:9/0")
    root = creds.config_dir
    gw, keys = root / "gateway.yaml", root / "keys" / "extra.yaml"
    projects = root / "projects"
    gateway = yaml.safe_load(gw.read_text())
    main_key = gateway["orgs"]["acme"]["api_keys"][0]

    # gateway.yaml: two structural problems (so it does not validate at all).
    def break_gateway(d: dict[str, Any]) -> None:
        d["limits"]["max_body_bytes"] = 10
        d["listen"] = {"hots": "127.0.0.1"}

    _edit(gw, break_gateway)
    # keys/extra.yaml: an unknown org, a duplicate key id, an invalid entry.
    keys.parent.mkdir()
    keys.write_text(
        yaml.safe_dump(
            {
                "orgs": {
                    "initech": [],
                    "acme": [
                        {**main_key, "sha256": "a" * 64},
                        {"id": "k_bad", "prefix": "nope", "sha256": "b" * 64},
                    ],
                }
            }
        )
    )
    # alpha: structural and a reference in one file.
    _edit(
        projects / "alpha.yaml",
        lambda d: (
            d.update(max_output_tokens=0),
            d["models"]["default"]["routes"][0].update(provider="nope"),
        ),
    )
    # beta: references only (unknown org, a model with no price).
    _edit(
        projects / "beta.yaml",
        lambda d: (
            d.update(org="initech"),
            d["models"]["smart"]["routes"][0].update(model="gpt-9"),
        ),
    )
    (projects / "gamma.yaml").write_text("id: [unclosed\n")  # not YAML
    # delta: a duplicate project id and a default model that is no alias.
    (projects / "delta.yaml").write_text(
        yaml.safe_dump(
            {
                "id": "prj_beta",
                "org": "acme",
                "default_model": "missing",
                "models": {"default": {"routes": [{"provider": "demo", "model": "demo-1"}]}},
            }
        )
    )

    done = gateway_cli(creds.env, "check-config", "--config", str(root))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    expected = [
        f"  {gw}: limits.max_body_bytes: Input should be greater than or equal to 1024",
        f"  {gw}: listen.hots: unknown key",
        f"  {keys}: orgs.initech: unknown org",
        f"  {keys}: orgs.acme.1.prefix: String should match pattern",
        f"  {keys}: api key key_main: duplicate key id (also in {gw})",
        f"  {projects / 'alpha.yaml'}: max_output_tokens: Input should be greater than or equal to 1",
        f"  {projects / 'alpha.yaml'}: models.default.routes.0.provider: unknown provider 'nope'",
        f"  {projects / 'beta.yaml'}: org: unknown org 'initech'",
        f"  {projects / 'beta.yaml'}: models.smart.routes.0.model: no price for model 'gpt-9'",
        f"  {projects / 'delta.yaml'}: default_model: 'missing' is not a model alias",
        f"  {projects / 'delta.yaml'}: id: duplicate project id 'prj_beta'",
        f"  {projects / 'gamma.yaml'}: -: invalid YAML",
    ]
    missing = [e for e in expected if not any(line.startswith(e) for line in lines)]
    assert missing == [], done.stderr
    assert lines[0] == f"config invalid ({len(expected)} problem(s)):", done.stderr
    assert len(lines) == 1 + len(expected), done.stderr
    assert "Traceback" not in done.stderr


def test_a_valid_config_is_ok(tmp_path: Path) -> None:
    creds = write_config(tmp_path / "config", "http://127.0.0.1:9/v1", "redis://127.0.0.1:9/0")
    done = gateway_cli(creds.env, "check-config", "--config", str(creds.config_dir))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("config OK: ")
    assert done.stderr == ""
