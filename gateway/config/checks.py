"""Checks across files and sections, on the data as written (after ``${VAR}``
expansion): a project's org, providers and priced models; a key file's orgs; key ids
and digests unique across files; holds outlasting attempts; named secrets set.

A file with a structural problem still has its references checked: each check reads
only values of the expected type and leaves the rest to the file's validation
(gateway.config.schema), so one run lists every problem.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.schema import GatewayFile

# (file, path inside it, reason): one problem, as ConfigError lists them.
Problem = tuple[str, str, str]


def get(data: Any, key: str, default: Any = None) -> Any:
    return data.get(key, default) if isinstance(data, dict) else None


def items(data: Any) -> list[tuple[str, Any]]:
    return [(str(k), v) for k, v in data.items()] if isinstance(data, dict) else []


def as_list(data: Any) -> list[Any]:
    return data if isinstance(data, list) else []


@dataclass(frozen=True)
class Known:
    """What gateway.yaml defines that other files name: from the validated file, or
    from its data when it is invalid. None: not known (that check is skipped)."""

    orgs: frozenset[str] | None
    providers: dict[str, str | None] | None  # name -> kind (None: not a valid one)
    prices: frozenset[str] | None

    @classmethod
    def of(cls, gateway: GatewayFile | None, raw: Any) -> Known:
        if gateway is not None:
            return cls(
                frozenset(gateway.orgs),
                {name: spec.kind for name, spec in gateway.providers.items()},
                frozenset(gateway.prices),
            )
        if not isinstance(raw, dict):
            return cls(None, None, None)

        def names(key: str) -> frozenset[str] | None:
            section = raw.get(key, {})
            return frozenset(str(k) for k in section) if isinstance(section, dict) else None

        providers: dict[str, str | None] | None = None
        section = raw.get("providers", {})
        if isinstance(section, dict):
            providers = {}
            for name, spec in section.items():
                kind = get(spec, "kind")
                providers[str(name)] = kind if isinstance(kind, str) else None
        return cls(names("orgs"), providers, names("prices"))


def check_key_entries(entries: list[tuple[str, Any]], problems: list[Problem]) -> None:
    """Key ids and keys (digests) are unique across gateway.yaml and keys/*.yaml."""
    seen_ids: dict[str, str] = {}
    seen_digests: dict[str, str] = {}
    for file, entry in entries:
        key_id, digest = get(entry, "id"), get(entry, "sha256")
        if not isinstance(key_id, str):
            continue
        if key_id in seen_ids:
            where = "" if seen_ids[key_id] == file else f" (also in {seen_ids[key_id]})"
            problems.append((file, f"api key {key_id}", "duplicate key id" + where))
        seen_ids.setdefault(key_id, file)
        if isinstance(digest, str):
            # One key listed twice (say, revoked in one place and not in another): which
            # entry wins would decide whether a revocation holds.
            first = seen_digests.setdefault(digest, key_id)
            if first != key_id:
                problems.append((file, f"api key {key_id}", f"the same key as {first}"))


def check_project(raw: Any, known: Known, path: Path, problems: list[Problem]) -> None:
    """A project file's references: its default model, org, routes' providers and
    models (priced), and BYOK providers."""
    file = str(path)
    models = get(raw, "models")
    default = get(raw, "default_model", "default")
    if isinstance(models, dict) and isinstance(default, str) and default not in models:
        problems.append((file, "default_model", f"{default!r} is not a model alias"))
    org = get(raw, "org")
    if known.orgs is not None and isinstance(org, str) and org not in known.orgs:
        problems.append((file, "org", f"unknown org {org!r}"))
    providers, prices = known.providers, known.prices
    if providers is None:
        return
    for alias, spec in items(models):
        embedding = get(spec, "kind") == "embedding"
        for i, route in enumerate(as_list(get(spec, "routes"))):
            where = f"models.{alias}.routes.{i}"
            provider, model = get(route, "provider"), get(route, "model")
            if not isinstance(provider, str):
                continue
            if provider not in providers:
                problems.append((file, f"{where}.provider", f"unknown provider {provider!r}"))
            elif embedding and providers[provider] == "anthropic":
                problems.append(
                    (file, f"{where}.provider", "an anthropic provider serves no embeddings")
                )
            elif (
                providers[provider] != "demo"
                and prices is not None
                and isinstance(model, str)
                and model not in prices
            ):
                problems.append((file, f"{where}.model", f"no price for model {model!r}"))
    for provider, _variable in items(get(raw, "provider_keys")):
        if provider not in providers:
            problems.append((file, f"provider_keys.{provider}", "unknown provider"))


# Time a request needs after an attempt ends (settling), on top of the attempt itself.
HOLD_MARGIN_SECONDS = 5


def check_hold_outlasts_attempts(gw: GatewayFile, path: Path, problems: list[Problem]) -> None:
    """A reservation must outlive any one attempt, or it expires while the request still
    runs and a concurrent request takes its room: the cap could be overshot. An attempt
    lasts at most the provider's total timeout plus one idle timeout (a client too slow
    to read gets that long per write); holds are renewed before each retry or fallback."""
    ttl = gw.limits.reservation_ttl_seconds
    for name, provider in gw.providers.items():
        if provider.kind == "demo":
            continue
        needed = math.ceil(provider.timeouts.total + provider.timeouts.idle) + HOLD_MARGIN_SECONDS
        if ttl < needed:
            problems.append(
                (
                    str(path),
                    "limits.reservation_ttl_seconds",
                    f"{ttl} s is shorter than an attempt on provider {name!r} may last "
                    f"(timeouts.total + timeouts.idle + {HOLD_MARGIN_SECONDS} s = {needed} s): "
                    "raise it or lower that provider's timeouts",
                )
            )


def check_metrics_token(
    gw: GatewayFile, env: dict[str, str], path: Path, problems: list[Problem]
) -> None:
    """The metrics bearer token's variable, when one is named, must be set."""
    token_env = gw.metrics.bearer_token_env
    if token_env and not env.get(token_env):
        problems.append(
            (str(path), "metrics.bearer_token_env", f"environment variable {token_env} is not set")
        )
