"""Configuration: YAML files validated at start, every error listed.

Layout of a config directory::

    gateway.yaml          listen address, Redis, limits, providers, prices, orgs
    projects/<slug>.yaml  one file per project
    keys/*.yaml           optional: API key entries written by ``gateway keys new --save``

Strings may use ``${VAR}`` and ``${VAR:-default}``, expanded from the environment.
Secrets are never inlined: providers name the *environment variable* that holds
their key (``api_key_env``), and so does the session-token secret.
"""

from __future__ import annotations

import math
import os
import re
import time
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from gateway.params import extra_param_problem
from gateway.placeholders import placeholder_problems

WINDOWS = ("day", "month", "lifetime")
DIMENSIONS = ("input_tokens", "output_tokens", "total_tokens", "cost_usd")
SCOPES = ("read", "write", "admin")
Window = Literal["day", "month", "lifetime"]
Scope = Literal["read", "write", "admin"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SLUG = r"^[a-z0-9][a-z0-9-]{0,62}$"
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- gateway.yaml


class ListenConfig(_Strict):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[v6addr]:port`` for IPv6) as (host, port); ValueError if not."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class MetricsConfig(_Strict):
    """The Prometheus exposition: its own listener, never the API port (it lists every
    org's projects, caps and spend). Loopback by default; "" serves no metrics."""

    listen: str = "127.0.0.1:9464"
    # Optional: the environment variable holding a token the scraper must send as
    # ``Authorization: Bearer``. Named but unset or empty is a config error.
    bearer_token_env: Annotated[str, Field(pattern=_ENV_NAME)] | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value:
            parse_listen(value)
        return value


class RedisConfig(_Strict):
    url: str = ""  # empty: start an embedded redis-server
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,32}$")] = "gw"
    timeout_ms: Annotated[int, Field(ge=10, le=10_000)] = 300
    on_store_error: Literal["deny", "allow"] = "deny"
    data_dir: str = ".gateway/redis"  # embedded server only: persistence directory


class LimitsConfig(_Strict):
    max_body_bytes: Annotated[int, Field(ge=1024)] = 1_048_576
    # What one body may cost to decode (gateway.jsonlimits): JSON elements (values and
    # object members) and nesting depth. A chat request with a long history and many
    # tools has a few thousand elements; 1 MiB of tiny elements has 500,000.
    max_json_elements: Annotated[int, Field(ge=16)] = 50_000
    max_json_depth: Annotated[int, Field(ge=4, le=200)] = 64
    # Requests served at once per API key (session tokens count for the key that minted
    # them) and per org, per process: past them, 429 + Retry-After.
    max_in_flight_per_key: Annotated[int, Field(ge=1)] = 128
    max_in_flight_per_org: Annotated[int, Field(ge=1)] = 512
    # Slow clients (gateway.connections): a request's headers must arrive within
    # header_timeout_seconds of the connection opening (or of its first byte on a
    # kept-alive one), its body within body_timeout_seconds of the headers.
    header_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    body_timeout_seconds: Annotated[float, Field(gt=0)] = 30.0
    # Open connections per process (lowered to what RLIMIT_NOFILE allows) and per client
    # address: past either, a new connection is closed when accepted. Behind a load
    # balancer every connection comes from its address: raise the second to match.
    max_connections: Annotated[int, Field(ge=16)] = 4096
    max_connections_per_address: Annotated[int, Field(ge=1)] = 256
    reservation_ttl_seconds: Annotated[int, Field(ge=5)] = 900
    # How long a completed request's Idempotency-Key answers (replays) its retries.
    idempotency_ttl_seconds: Annotated[int, Field(ge=1)] = 86_400
    # Input tokens reserved per image on models without prices.<model>.image_tokens: the
    # most any known model charges (gpt-4o-mini, high detail), so a cap holds by default.
    image_token_bound: Annotated[int, Field(ge=1)] = 48_169
    # SIGTERM: /readyz fails for drain_seconds (load balancers stop sending), then the
    # listener closes and open streams get shutdown_grace_seconds to finish.
    drain_seconds: Annotated[float, Field(ge=0)] = 0.0
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 30.0


class SessionTokenConfig(_Strict):
    secret_env: Annotated[str, Field(pattern=_ENV_NAME)] = "GATEWAY_SESSION_SECRET"
    algorithms: tuple[Literal["HS256", "HS384", "HS512"], ...] = ("HS256",)
    default_ttl_seconds: Annotated[int, Field(ge=30)] = 900
    max_ttl_seconds: Annotated[int, Field(ge=30)] = 3600
    leeway_seconds: Annotated[int, Field(ge=0, le=300)] = 5

    @model_validator(mode="after")
    def _default_within_max(self) -> SessionTokenConfig:
        if self.default_ttl_seconds > self.max_ttl_seconds:
            raise ValueError("default_ttl_seconds must not exceed max_ttl_seconds")
        return self


class Timeouts(_Strict):
    connect: Annotated[float, Field(gt=0)] = 5.0
    first_byte: Annotated[float, Field(gt=0)] = 60.0
    idle: Annotated[float, Field(gt=0)] = 60.0
    total: Annotated[float, Field(gt=0)] = 600.0


class ProviderConfig(_Strict):
    kind: Literal["openai", "anthropic", "demo"]
    base_url: str = ""
    api_key_env: Annotated[str, Field(pattern=_ENV_NAME)] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    # OpenAI-compatible quirks, by configuration rather than code forks. Azure OpenAI:
    # chat_path "/openai/deployments/{model}/chat/completions", query {"api-version": ...},
    # auth_header "api-key", auth_scheme "".
    chat_path: str = "/chat/completions"  # "{model}" is replaced by the route's model
    query: dict[str, str] = Field(default_factory=dict)
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"
    max_tokens_param: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    # Prompt tokens the provider adds on its own when a request carries tools (Anthropic
    # injects a tool-use system prompt of a few hundred tokens). Default: by kind.
    tools_overhead_tokens: Annotated[int, Field(ge=0)] | None = None
    # demo provider only: delay between streamed chunks
    chunk_delay_ms: Annotated[int, Field(ge=0)] = 20
    # Body parameters beyond those the gateway understands that this provider may
    # receive, forwarded as sent and counted in the input bound (gateway.params). Never
    # one that sets the answer's length: only the gateway does.
    extra_params: frozenset[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]] = (
        frozenset()
    )

    @property
    def tools_overhead(self) -> int:
        if self.tools_overhead_tokens is not None:
            return self.tools_overhead_tokens
        return 800 if self.kind == "anthropic" else 0

    @model_validator(mode="after")
    def _needs_url(self) -> ProviderConfig:
        if self.kind != "demo" and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL for kind {self.kind!r}")
        for name in sorted(self.extra_params):
            problem = extra_param_problem(name, self.kind)
            if problem is not None:
                raise ValueError(f"extra_params: {problem}")
        return self


def usd_to_nano(value: Any) -> int:
    """A USD amount (decimal string or number) as exact integer nano-USD."""
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal amount: {value!r}") from exc
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a non-negative amount")
    nano = amount * 1_000_000_000
    if nano != nano.to_integral_value():
        raise ValueError("more precision than one nano-USD")
    return int(nano)


class PriceConfig(_Strict):
    """Prices in USD per million tokens of one upstream model, and what bounds its input."""

    input: int
    output: int
    cached_input: int | None = None  # cache reads (default: the input price)
    cache_write: int | None = None  # cache writes, e.g. Anthropic's (default: input price)
    # The most input tokens one image can cost on this model (default: the gateway's
    # limits.image_token_bound). Models differ twenty-fold: gpt-4o 1,445 at most,
    # gpt-4o-mini 48,169 (2,833 + 8 tiles x 5,667).
    image_tokens: Annotated[int, Field(ge=1)] | None = None
    # The model's context window: no prompt is longer, so it caps the input bound, and
    # bounds what nothing else can (a file part: its pages' text and images).
    context_tokens: Annotated[int, Field(ge=1)] | None = None

    @field_validator("input", "output", "cached_input", "cache_write", mode="before")
    @classmethod
    def _nano(cls, value: Any) -> int | None:
        return None if value is None else usd_to_nano(value)


CapSet = dict[Literal["input_tokens", "output_tokens", "total_tokens", "cost_usd"], Any]


class BudgetScope(_Strict):
    day: CapSet = Field(default_factory=dict)
    month: CapSet = Field(default_factory=dict)
    lifetime: CapSet = Field(default_factory=dict)

    @field_validator("day", "month", "lifetime", mode="after")
    @classmethod
    def _amounts(cls, caps: dict[str, Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for dim, value in caps.items():
            if dim == "cost_usd":
                out[dim] = usd_to_nano(value)  # caps on money are integer nano-USD
            else:
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{dim}: must be a non-negative integer")
                out[dim] = value
        return out


class ApiKeyEntry(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    prefix: Annotated[str, Field(pattern=r"^kt_live_[0-9A-Za-z]{8}$")]
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    scopes: tuple[Scope, ...] = ("write",)
    revoked: bool = False


class OrgConfig(_Strict):
    name: str = ""
    api_keys: tuple[ApiKeyEntry, ...] = ()
    budgets: BudgetScope = Field(default_factory=lambda: BudgetScope())


class LedgerConfig(_Strict):
    """Usage events: one per admitted request, in a Redis Stream per project."""

    max_events: Annotated[int, Field(ge=0)] = 100_000  # approximate bound; 0 disables


class RetryConfig(_Strict):
    attempts_per_target: Annotated[int, Field(ge=1, le=10)] = 2
    backoff_base_ms: Annotated[int, Field(ge=0)] = 100
    backoff_max_ms: Annotated[int, Field(ge=0)] = 2000
    retry_after_max_seconds: Annotated[float, Field(ge=0)] = 10.0  # longer: fall back instead


class BreakerConfig(_Strict):
    failure_threshold: Annotated[int, Field(ge=1)] = 5
    cooldown_seconds: Annotated[float, Field(gt=0)] = 30.0
    half_open_probes: Annotated[int, Field(ge=1)] = 1


class ResilienceConfig(_Strict):
    retries: RetryConfig = RetryConfig()
    breaker: BreakerConfig = BreakerConfig()


class GatewayFile(_Strict):
    listen: ListenConfig = ListenConfig()
    # The wire profile of answers given before a project is known (a 401, an unknown
    # project or path); each project's own wire_profile applies once the caller is
    # authenticated for it.
    wire_profile: Literal["karta", "openai"] = "karta"
    metrics: MetricsConfig = MetricsConfig()
    redis: RedisConfig = RedisConfig()
    limits: LimitsConfig = LimitsConfig()
    session_tokens: SessionTokenConfig = SessionTokenConfig()
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    prices: dict[str, PriceConfig] = Field(default_factory=dict)
    orgs: dict[Annotated[str, Field(pattern=_SLUG)], OrgConfig] = Field(default_factory=dict)
    ledger: LedgerConfig = LedgerConfig()
    resilience: ResilienceConfig = ResilienceConfig()


class KeysFile(_Strict):
    """A ``keys/*.yaml`` file: extra API key entries per org."""

    orgs: dict[str, tuple[ApiKeyEntry, ...]]


# --------------------------------------------------------------------------- projects/*.yaml


class Route(_Strict):
    provider: str
    model: str
    # Targets with a weight share the first slot by weighted choice; the rest follow
    # in order as fallbacks.
    weight: Annotated[int, Field(ge=1)] | None = None


class ModelAlias(_Strict):
    routes: tuple[Route, ...]


class RateLimitSet(_Strict):
    requests_per_minute: Annotated[int, Field(ge=1)] | None = None
    tokens_per_minute: Annotated[int, Field(ge=1)] | None = None


class RateLimits(RateLimitSet):
    """Per project, and ``per_key`` for each API key on this project."""

    per_key: RateLimitSet = RateLimitSet()


class Budgets(_Strict):
    project: BudgetScope = BudgetScope()
    per_key: BudgetScope = BudgetScope()
    per_user: BudgetScope = BudgetScope()


class ProjectFile(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    org: str
    enabled: bool = True
    wire_profile: Literal["karta", "openai"] = "karta"
    default_model: str = "default"
    models: dict[str, ModelAlias]
    max_output_tokens: Annotated[int, Field(ge=1)] = 4096
    budgets: Budgets = Budgets()
    rate_limits: RateLimits = RateLimits()
    # BYOK: provider name -> environment variable holding the project's own key
    provider_keys: dict[str, Annotated[str, Field(pattern=_ENV_NAME)]] = Field(default_factory=dict)


# --------------------------------------------------------------------------- loaded config


@dataclass(frozen=True, slots=True)
class Cap:
    scope: Literal["project", "key", "user", "org"]
    window: Window
    dimension: str
    limit: int


@dataclass(frozen=True)
class Project:
    slug: str
    file: ProjectFile
    caps: tuple[Cap, ...]
    # The budget counters of each API key (None: no key), built from caps once by
    # gateway.budget.project_counters; a reload builds new Projects, so never stale.
    key_counters: dict[str | None, list[Any]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )
    # Per model alias: (tokens one image may cost, context window or None) over its
    # routes, built once by gateway.middleware.parse, as key_counters.
    input_limits: dict[str, tuple[int, int | None]] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

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
    env: dict[str, str] = field(repr=False, default_factory=dict)
    keys_by_id: dict[str, KeyRecord] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)  # unix time

    def key(self, key_id: str) -> KeyRecord | None:
        """The API key with this id (the one that minted a session token), if any."""
        return self.keys_by_id.get(key_id)

    def project(self, ref: str) -> Project | None:
        return self.projects.get(ref) or self.projects_by_id.get(ref)

    def secret(self, env_name: str | None) -> str:
        """The value of an environment-held secret ("" when unset)."""
        return self.env.get(env_name, "") if env_name else ""


@dataclass
class ConfigError(Exception):
    """Raised with every problem found; ``problems`` are (file, path, reason)."""

    problems: list[tuple[str, str, str]]

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


def _read_yaml(path: Path, env: dict[str, str], problems: list[tuple[str, str, str]]) -> Any:
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


def _validate(
    model: type[M], data: Any, path: Path, problems: list[tuple[str, str, str]]
) -> M | None:
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


def _caps(budgets: Budgets) -> tuple[Cap, ...]:
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


def load_config(directory: str | Path, env: dict[str, str] | None = None) -> Config:
    """Load and validate a config directory; raise ConfigError listing every problem.

    Every file is read and validated whatever another one holds, and the references
    between files (a project's org, providers and models; a key file's orgs; key ids
    and digests across files) are checked on what each file says even where it is
    invalid otherwise: one run lists every problem, not the first stage's."""
    env = dict(os.environ) if env is None else env
    root = Path(directory)
    problems: list[tuple[str, str, str]] = []
    gw_path = root / "gateway.yaml"
    gw_raw = _read_yaml(gw_path, env, problems)
    gateway = None if gw_raw is None else _validate(GatewayFile, gw_raw, gw_path, problems)
    known = _Known.of(gateway, gw_raw)

    keys: dict[str, list[KeyRecord]] = {}
    # (file, entry as written) of every key entry, valid or not: ids and digests must
    # be unique across files.
    entries: list[tuple[str, Any]] = []
    if gateway is not None:
        _check_hold_outlasts_attempts(gateway, gw_path, problems)
        token_env = gateway.metrics.bearer_token_env
        if token_env and not env.get(token_env):
            problems.append(
                (
                    str(gw_path),
                    "metrics.bearer_token_env",
                    f"environment variable {token_env} is not set",
                )
            )
        for org_name, org in gateway.orgs.items():
            for entry in org.api_keys:
                keys.setdefault(entry.prefix, []).append(KeyRecord(org_name, entry))
    for _org_name, org_raw in _items(_get(gw_raw, "orgs")):
        entries.extend((str(gw_path), e) for e in _list(_get(org_raw, "api_keys")))
    for key_path in sorted((root / "keys").glob("*.yaml")):
        key_raw = _read_yaml(key_path, env, problems)
        key_file = None if key_raw is None else _validate(KeysFile, key_raw, key_path, problems)
        for org_name, org_entries in _items(_get(key_raw, "orgs")):
            if known.orgs is not None and org_name not in known.orgs:
                problems.append((str(key_path), f"orgs.{org_name}", "unknown org"))
            entries.extend((str(key_path), e) for e in _list(org_entries))
        if key_file is None:
            continue
        for org_name, valid in key_file.orgs.items():
            for entry in valid:
                keys.setdefault(entry.prefix, []).append(KeyRecord(org_name, entry))
    _check_key_entries(entries, problems)

    projects: dict[str, Project] = {}
    by_id: dict[str, Project] = {}
    project_ids: set[str] = set()
    project_dir = root / "projects"
    for path in sorted(project_dir.glob("*.yaml")):
        slug = path.stem
        if not re.match(_SLUG, slug):
            problems.append((str(path), "", "file name must be a project slug ([a-z0-9-])"))
            continue
        raw = _read_yaml(path, env, problems)
        pf = None if raw is None else _validate(ProjectFile, raw, path, problems)
        _check_project(raw, known, path, problems)
        project_id = _get(raw, "id")
        if isinstance(project_id, str):
            if project_id in project_ids:
                problems.append((str(path), "id", f"duplicate project id {project_id!r}"))
            project_ids.add(project_id)
        if pf is None:
            continue
        project = Project(slug=slug, file=pf, caps=_caps(pf.budgets))
        projects[slug] = project
        by_id[pf.id] = project

    if gateway is not None:
        problems += placeholder_problems(root, gateway, projects, env)
    if problems:
        raise ConfigError(problems)
    assert gateway is not None
    return Config(
        directory=root,
        gateway=gateway,
        projects=projects,
        projects_by_id=by_id,
        keys_by_prefix={k: tuple(v) for k, v in keys.items()},
        env=env,
        keys_by_id={r.entry.id: r for records in keys.values() for r in records},
    )


# ------------------------------------------------------------- references between files
#
# Checked on the data as written (after ${VAR} expansion), so that a file with a
# structural problem still has its references checked; each check reads only values
# of the expected type and leaves the rest to the file's validation.


def _get(data: Any, key: str, default: Any = None) -> Any:
    return data.get(key, default) if isinstance(data, dict) else None


def _items(data: Any) -> list[tuple[str, Any]]:
    return [(str(k), v) for k, v in data.items()] if isinstance(data, dict) else []


def _list(data: Any) -> list[Any]:
    return data if isinstance(data, list) else []


@dataclass(frozen=True)
class _Known:
    """What gateway.yaml defines that other files name: from the validated file, or
    from its data when it is invalid. None: not known (that check is skipped)."""

    orgs: frozenset[str] | None
    providers: dict[str, str | None] | None  # name -> kind (None: not a valid one)
    prices: frozenset[str] | None

    @classmethod
    def of(cls, gateway: GatewayFile | None, raw: Any) -> _Known:
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
                kind = _get(spec, "kind")
                providers[str(name)] = kind if isinstance(kind, str) else None
        return cls(names("orgs"), providers, names("prices"))


def _check_key_entries(
    entries: list[tuple[str, Any]], problems: list[tuple[str, str, str]]
) -> None:
    """Key ids and keys (digests) are unique across gateway.yaml and keys/*.yaml."""
    seen_ids: dict[str, str] = {}
    seen_digests: dict[str, str] = {}
    for file, entry in entries:
        key_id, digest = _get(entry, "id"), _get(entry, "sha256")
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


def _check_project(
    raw: Any, known: _Known, path: Path, problems: list[tuple[str, str, str]]
) -> None:
    """A project file's references: its default model, org, routes' providers and
    models (priced), and BYOK providers."""
    file = str(path)
    models = _get(raw, "models")
    default = _get(raw, "default_model", "default")
    if isinstance(models, dict) and isinstance(default, str) and default not in models:
        problems.append((file, "default_model", f"{default!r} is not a model alias"))
    org = _get(raw, "org")
    if known.orgs is not None and isinstance(org, str) and org not in known.orgs:
        problems.append((file, "org", f"unknown org {org!r}"))
    providers, prices = known.providers, known.prices
    if providers is None:
        return
    for alias, spec in _items(models):
        for i, route in enumerate(_list(_get(spec, "routes"))):
            where = f"models.{alias}.routes.{i}"
            provider, model = _get(route, "provider"), _get(route, "model")
            if not isinstance(provider, str):
                continue
            if provider not in providers:
                problems.append((file, f"{where}.provider", f"unknown provider {provider!r}"))
            elif (
                providers[provider] != "demo"
                and prices is not None
                and isinstance(model, str)
                and model not in prices
            ):
                problems.append((file, f"{where}.model", f"no price for model {model!r}"))
    for provider, _variable in _items(_get(raw, "provider_keys")):
        if provider not in providers:
            problems.append((file, f"provider_keys.{provider}", "unknown provider"))


# Time a request needs after an attempt ends (settling), on top of the attempt itself.
HOLD_MARGIN_SECONDS = 5


def _check_hold_outlasts_attempts(
    gw: GatewayFile, path: Path, problems: list[tuple[str, str, str]]
) -> None:
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
