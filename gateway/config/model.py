"""The loaded configuration: what the gateway serves from, built once by the loader
from the validated files and immutable from then on.

Everything derived from the files (caps, the input bound's limits per model alias, the
indexes by id and key prefix) is computed here at load time; a reload builds new
objects. Nothing fills itself in while requests run: runtime caches live with their
users (gateway.budget), never on these objects.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal, NamedTuple

from gateway.config.schema import (
    WINDOWS,
    ApiKeyEntry,
    Budgets,
    BudgetScope,
    GatewayFile,
    OrgConfig,
    ProjectFile,
    Route,
    Window,
)


@dataclass(frozen=True, slots=True)
class Cap:
    scope: Literal["project", "key", "user", "org"]
    window: Window
    dimension: str
    limit: int


class InputLimits(NamedTuple):
    """What bounds a request's input on every target of a model alias."""

    image_tokens: int  # the most one image costs on any of them
    context_tokens: int | None  # the largest context window (None unless all have one)


@dataclass(frozen=True)
class Project:
    slug: str
    file: ProjectFile
    caps: tuple[Cap, ...]
    # Per model alias of the file, over its routes (derived: not compared).
    input_limits: Mapping[str, InputLimits] = field(compare=False, repr=False)

    @property
    def id(self) -> str:
        return self.file.id

    @property
    def org(self) -> str:
        return self.file.org


@dataclass(frozen=True)
class KeyRecord:
    org: str
    entry: ApiKeyEntry


@dataclass(frozen=True)
class Config:
    """Everything the gateway needs, validated and indexed once at load time."""

    directory: Path
    gateway: GatewayFile
    projects: dict[str, Project]  # by slug
    projects_by_id: dict[str, Project]
    keys_by_prefix: dict[str, tuple[KeyRecord, ...]]
    keys_by_id: dict[str, KeyRecord]
    env: dict[str, str] = field(repr=False)
    loaded_at: float = field(default_factory=time.time)  # unix time

    def key(self, key_id: str) -> KeyRecord | None:
        """The API key with this id (the one that minted a session token), if any."""
        return self.keys_by_id.get(key_id)

    def project(self, ref: str) -> Project | None:
        return self.projects.get(ref) or self.projects_by_id.get(ref)

    def secret(self, env_name: str | None) -> str:
        """The value of an environment-held secret ("" when unset)."""
        return self.env.get(env_name, "") if env_name else ""


def build_project(slug: str, file: ProjectFile, gateway: GatewayFile) -> Project:
    """A project as served: its caps and, per model alias, its input limits."""
    limits = {alias: input_limits(gateway, spec.routes) for alias, spec in file.models.items()}
    return Project(slug, file, project_caps(file.budgets), MappingProxyType(limits))


def input_limits(gateway: GatewayFile, routes: Sequence[Route]) -> InputLimits:
    """What bounds the input on every target a request may go to: the most one image
    costs on any of them, and the largest context window (None unless all have one)."""
    prices = [gateway.prices.get(t.model) for t in routes]
    fallback = gateway.limits.image_token_bound
    image_bound = max(
        (p.image_tokens or fallback if p else fallback for p in prices), default=fallback
    )
    windows = [p.context_tokens if p else None for p in prices]
    context = None if None in windows or not windows else max(w for w in windows if w is not None)
    return InputLimits(image_bound, context)


def project_caps(budgets: Budgets) -> tuple[Cap, ...]:
    return _scope_caps(
        (("project", budgets.project), ("key", budgets.per_key), ("user", budgets.per_user))
    )


def org_caps(org: OrgConfig) -> tuple[Cap, ...]:
    return _scope_caps((("org", org.budgets),))


def _scope_caps(scopes: tuple[tuple[str, BudgetScope], ...]) -> tuple[Cap, ...]:
    caps: list[Cap] = []
    for scope_name, scope in scopes:
        for window in WINDOWS:
            for dim, limit in getattr(scope, window).items():
                caps.append(Cap(scope_name, window, dim, limit))  # type: ignore[arg-type]
    return tuple(caps)
