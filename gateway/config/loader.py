"""Loading a config directory: read each YAML file, expand ``${VAR}`` and
``${VAR:-default}`` from the environment, validate it (gateway.config.schema), check
the files against each other (gateway.config.checks) and build the runtime objects
(gateway.config.model). Every problem of every file is collected: ``ConfigError``
lists them all, not the first one.

Layout of a config directory::

    gateway.yaml          listen address, Redis, limits, providers, prices, orgs
    projects/<slug>.yaml  one file per project
    keys/*.yaml           optional: API key entries written by ``gateway keys new --save``

Secrets are never inlined: providers name the *environment variable* that holds
their key (``api_key_env``), and so does the session-token secret.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from gateway.config.checks import (
    Known,
    Problem,
    as_list,
    check_hold_outlasts_attempts,
    check_key_entries,
    check_metrics_token,
    check_project,
    get,
    items,
)
from gateway.config.model import Config, KeyRecord, build_project
from gateway.config.schema import SLUG_PATTERN, GatewayFile, KeysFile, ProjectFile
from gateway.placeholders import placeholder_problems

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class ConfigError(Exception):
    """Raised with every problem found; ``problems`` are (file, path, reason)."""

    problems: list[Problem]

    def __str__(self) -> str:
        return "\n".join(f"{f}: {p}: {r}" if p else f"{f}: {r}" for f, p, r in self.problems)


def _expand(value: Any, env: dict[str, str], path: str, missing: list[tuple[str, str]]) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if default is not None and "${" in default:
                # ${A:-${B}} would expand to B's value plus a stray "}" (or stay literal).
                missing.append((path, f"the default of ${{{name}}} cannot contain ${{...}}"))
                return ""
            if name in env and env[name] != "":
                return env[name]
            if default is not None:
                return default
            missing.append((path, f"environment variable {name} is not set"))
            return ""

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {
            k: _expand(v, env, f"{path}.{k}" if path else str(k), missing) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand(v, env, f"{path}[{i}]", missing) for i, v in enumerate(value)]
    return value


def _yaml_reason(exc: yaml.YAMLError) -> str:
    """PyYAML's error on one line: where, and what it expected (its own text quotes
    the offending lines on several)."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {exc.problem}"
    return " ".join(str(exc).split())


def _read_yaml(path: Path, env: dict[str, str], problems: list[Problem]) -> Any:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problems.append((str(path), "", f"cannot read: {exc.strerror}"))
        return None
    except yaml.YAMLError as exc:
        problems.append((str(path), "", f"invalid YAML: {_yaml_reason(exc)}"))
        return None
    if raw is None:
        raw = {}
    missing: list[tuple[str, str]] = []
    expanded = _expand(raw, env, "", missing)
    problems.extend((str(path), p, r) for p, r in missing)
    return expanded


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], data: Any, path: Path, problems: list[Problem]) -> M | None:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append((str(path), loc, msg))
        return None


def load_config(directory: str | Path, env: dict[str, str] | None = None) -> Config:
    """Load and validate a config directory; raise ConfigError listing every problem.

    Every file is read and validated whatever another one holds, and the references
    between files (a project's org, providers and models; a key file's orgs; key ids
    and digests across files) are checked on what each file says even where it is
    invalid otherwise: one run lists every problem, not the first stage's."""
    env = dict(os.environ) if env is None else env
    root = Path(directory)
    problems: list[Problem] = []
    gw_path = root / "gateway.yaml"
    gw_raw = _read_yaml(gw_path, env, problems)
    gateway = None if gw_raw is None else _validate(GatewayFile, gw_raw, gw_path, problems)
    known = Known.of(gateway, gw_raw)

    keys: dict[str, list[KeyRecord]] = {}
    # (file, entry as written) of every key entry, valid or not: ids and digests must
    # be unique across files.
    entries: list[tuple[str, Any]] = []
    if gateway is not None:
        check_hold_outlasts_attempts(gateway, gw_path, problems)
        check_metrics_token(gateway, env, gw_path, problems)
        for org_name, org in gateway.orgs.items():
            for entry in org.api_keys:
                keys.setdefault(entry.prefix, []).append(KeyRecord(org_name, entry))
    for _org_name, org_raw in items(get(gw_raw, "orgs")):
        entries.extend((str(gw_path), e) for e in as_list(get(org_raw, "api_keys")))
    for key_path in sorted((root / "keys").glob("*.yaml")):
        key_raw = _read_yaml(key_path, env, problems)
        key_file = None if key_raw is None else _validate(KeysFile, key_raw, key_path, problems)
        for org_name, org_entries in items(get(key_raw, "orgs")):
            if known.orgs is not None and org_name not in known.orgs:
                problems.append((str(key_path), f"orgs.{org_name}", "unknown org"))
            entries.extend((str(key_path), e) for e in as_list(org_entries))
        if key_file is None:
            continue
        for org_name, valid in key_file.orgs.items():
            for entry in valid:
                keys.setdefault(entry.prefix, []).append(KeyRecord(org_name, entry))
    check_key_entries(entries, problems)

    files: dict[str, ProjectFile] = {}  # by slug
    project_ids: set[str] = set()
    project_dir = root / "projects"
    for path in sorted(project_dir.glob("*.yaml")):
        slug = path.stem
        if not re.match(SLUG_PATTERN, slug):
            problems.append((str(path), "", "file name must be a project slug ([a-z0-9-])"))
            continue
        raw = _read_yaml(path, env, problems)
        pf = None if raw is None else _validate(ProjectFile, raw, path, problems)
        check_project(raw, known, path, problems)
        project_id = get(raw, "id")
        if isinstance(project_id, str):
            if project_id in project_ids:
                problems.append((str(path), "id", f"duplicate project id {project_id!r}"))
            project_ids.add(project_id)
        if pf is None:
            continue
        files[slug] = pf

    if gateway is None:
        raise ConfigError(problems)  # it said why it is missing or invalid
    projects = {slug: build_project(slug, pf, gateway) for slug, pf in files.items()}
    problems += placeholder_problems(root, gateway, projects, env)
    if problems:
        raise ConfigError(problems)
    return Config(
        directory=root,
        gateway=gateway,
        projects=projects,
        projects_by_id={p.id: p for p in projects.values()},
        keys_by_prefix={k: tuple(v) for k, v in keys.items()},
        keys_by_id={r.entry.id: r for records in keys.values() for r in records},
        env=env,
    )
