"""The YAML files' schema: one pydantic model per file (``GatewayFile``,
``ProjectFile``, ``KeysFile``) and per section, frozen, unknown keys refused.

Each model checks what one file can say about itself; what files say about each other
is checked by gateway.config.checks, and gateway.config.loader reads the files.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from gateway.params import extra_param_problem

WINDOWS = ("day", "month", "lifetime")
DIMENSIONS = ("input_tokens", "output_tokens", "total_tokens", "cost_usd")
SCOPES = ("read", "write", "admin")
Window = Literal["day", "month", "lifetime"]
Scope = Literal["read", "write", "admin"]

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


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
    bearer_token_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = None

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
    # Slow clients (gateway.http.connections): a request's headers must arrive within
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
    # How long a stored Responses answer (and its conversation) can be continued with
    # previous_response_id or read back (OpenAI keeps them 30 days).
    stored_response_ttl_seconds: Annotated[int, Field(ge=60)] = 2_592_000
    # Input tokens reserved per image on models without prices.<model>.image_tokens: the
    # most any known model charges (gpt-4o-mini, high detail), so a cap holds by default.
    image_token_bound: Annotated[int, Field(ge=1)] = 48_169
    # SIGTERM: /readyz fails for drain_seconds (load balancers stop sending), then the
    # listener closes and open streams get shutdown_grace_seconds to finish.
    drain_seconds: Annotated[float, Field(ge=0)] = 0.0
    shutdown_grace_seconds: Annotated[float, Field(ge=0)] = 30.0
    # Then settles still being retried (the store did not answer) get this long before
    # the store closes; those still failing log what they could not record.
    settle_wait_seconds: Annotated[float, Field(ge=0)] = 10.0


class SessionTokenConfig(_Strict):
    secret_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] = "GATEWAY_SESSION_SECRET"
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
    api_key_env: Annotated[str, Field(pattern=ENV_NAME_PATTERN)] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    # OpenAI-compatible quirks, by configuration rather than code forks. Azure OpenAI:
    # chat_path "/openai/deployments/{model}/chat/completions", query {"api-version": ...},
    # auth_header "api-key", auth_scheme "".
    chat_path: str = "/chat/completions"  # "{model}" is replaced by the route's model
    embeddings_path: str = "/embeddings"  # the same, for embedding aliases
    # Where a Responses call goes natively (kind openai; OpenAI's own: "/responses");
    # null (the default: most compatible servers have no Responses API): translated to
    # chat completions.
    responses_path: str | None = None
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
    # Anthropic's 1-hour cache writes (2x the input price; default: cache_write's)
    cache_write_1h: int | None = None
    # The most input tokens one image can cost on this model (default: the gateway's
    # limits.image_token_bound). Models differ twenty-fold: gpt-4o 1,445 at most,
    # gpt-4o-mini 48,169 (2,833 + 8 tiles x 5,667).
    image_tokens: Annotated[int, Field(ge=1)] | None = None
    # The model's context window: no prompt is longer, so it caps the input bound, and
    # bounds what nothing else can (a file part: its pages' text and images).
    context_tokens: Annotated[int, Field(ge=1)] | None = None

    @field_validator(
        "input", "output", "cached_input", "cache_write", "cache_write_1h", mode="before"
    )
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
    orgs: dict[Annotated[str, Field(pattern=SLUG_PATTERN)], OrgConfig] = Field(default_factory=dict)
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
    # What the alias serves: chat (chat completions, Responses, Messages) or embeddings.
    # Each route family refuses the other kind's aliases (422 naming model).
    kind: Literal["chat", "embedding"] = "chat"


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


class ShrinkToFit(_Strict):
    min_output_tokens: Annotated[int, Field(ge=1)]


class ProjectFile(_Strict):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    org: str
    enabled: bool = True
    wire_profile: Literal["karta", "openai"] = "karta"
    default_model: str = "default"
    models: dict[str, ModelAlias]
    max_output_tokens: Annotated[int, Field(ge=1)] = 4096
    # Opt-in: a request whose worst case does not fit, but whose output could shrink to
    # at least min_output_tokens (a choice) that fits, is admitted with that smaller
    # ceiling (in the same atomic reserve) instead of refused with 402.
    shrink_to_fit: ShrinkToFit | None = None
    budgets: Budgets = Budgets()
    rate_limits: RateLimits = RateLimits()
    # BYOK: provider name -> environment variable holding the project's own key
    provider_keys: dict[str, Annotated[str, Field(pattern=ENV_NAME_PATTERN)]] = Field(
        default_factory=dict
    )
