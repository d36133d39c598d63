"""Placeholder secrets from the example files, refused at load.

``deploy/.env.example`` and ``deploy/k8s/secret.example.yaml`` ship obvious
placeholders ("change-me-...", "REPLACE_ME..."). A gateway started with one of them
as a secret would run with a secret anyone can read in this repository: a session
secret that lets anyone mint tokens, an operator token that lets anyone reload. So
each secret the config names whose value is such a placeholder is a config problem,
naming the variable, never its value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config import GatewayFile, Project

# gateway.http.admin reads the operator token from this variable (a test checks they
# agree).
OPERATOR_TOKEN_ENV = "KARTA_OPERATOR_TOKEN"
# How the example files spell a value to replace: "change-me..." (.env.example) and
# "REPLACE_ME..." (the example Secret), in any case, with "-", "_" or nothing between.
_PLACEHOLDER = re.compile(r"^\s*(change|replace)[-_]?me", re.IGNORECASE)
_MARKER = "REPLACE_ME"  # also inside a value: "redis://:REPLACE_ME@host:6379/0"


def is_placeholder(value: str) -> bool:
    return bool(_PLACEHOLDER.match(value)) or _MARKER in value


def secret_variables(
    root: Path, gateway: GatewayFile, projects: Mapping[str, Project]
) -> list[tuple[str, str, str]]:
    """(file, where it names it, variable) of every secret the gateway reads."""
    file = str(root / "gateway.yaml")
    named = [
        (file, "session_tokens.secret_env", gateway.session_tokens.secret_env),
        (file, "", OPERATOR_TOKEN_ENV),  # not in the config: always read
    ]
    if gateway.metrics.bearer_token_env:
        named.append((file, "metrics.bearer_token_env", gateway.metrics.bearer_token_env))
    for name, provider in gateway.providers.items():
        if provider.api_key_env:
            named.append((file, f"providers.{name}.api_key_env", provider.api_key_env))
    for slug, project in projects.items():
        project_file = str(root / "projects" / f"{slug}.yaml")
        for provider_name, variable in project.file.provider_keys.items():
            named.append((project_file, f"provider_keys.{provider_name}", variable))
    return named


def placeholder_problems(
    root: Path, gateway: GatewayFile, projects: Mapping[str, Project], env: Mapping[str, str]
) -> list[tuple[str, str, str]]:
    """Config problems (file, path, reason): secrets set to a placeholder, and a Redis
    URL that still holds one (its password)."""
    problems = []
    seen = set()
    for file, where, variable in secret_variables(root, gateway, projects):
        value = env.get(variable)
        if variable in seen or not value or not is_placeholder(value):
            continue
        seen.add(variable)
        problems.append(
            (
                file,
                where,
                f"environment variable {variable} holds a placeholder from the example "
                "files: set a real secret (e.g. openssl rand -base64 48), or unset it",
            )
        )
    if _MARKER in gateway.redis.url:
        file = str(root / "gateway.yaml")
        problems.append((file, "redis.url", f"holds the placeholder {_MARKER}: set the real URL"))
    return problems
