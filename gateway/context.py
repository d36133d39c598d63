"""Typed state shared along the request path.

The application holds one :class:`GatewayState` (swapped config on reload, the
budget store, providers, metrics). Each request carries a :class:`Principal`
(set by auth) and, on spending routes, a :class:`CallContext` (made by the pipeline's
request step, billed by the meter, settled by the hold).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.breaker import CircuitBreaker
from gateway.budget import BudgetStore, Reservation
from gateway.config import Config, PriceConfig, Project, ProviderConfig, Route
from gateway.credentials import SessionClaims
from gateway.inflight import InFlight
from gateway.metrics import Metrics
from gateway.providers.base import Provider
from gateway.usage import Usage
from gateway.validation import ChatRequest


@dataclass
class GatewayState:
    config: Config
    store: BudgetStore
    providers: dict[str, Provider]
    metrics: Metrics
    ready: bool = True  # false while draining on shutdown
    background: set[asyncio.Task[None]] = field(default_factory=set)  # settle retries
    # Handlers waiting on an upstream (streams, unary calls): cancelled when the shutdown
    # grace period ends, so each settles what it cost before the process exits.
    handlers: set[asyncio.Task[Any]] = field(default_factory=set)
    grace_over: bool = False  # set when they are cancelled
    breakers: dict[tuple[str, str, str, str], CircuitBreaker] = field(default_factory=dict)
    rng: random.Random = field(default_factory=random.Random)
    in_flight: InFlight = field(default_factory=InFlight)  # per key and org, this process

    def provider_config(self, name: str) -> ProviderConfig:
        return self.config.gateway.providers[name]

    def breaker(self, route: Route, project: Project) -> CircuitBreaker:
        """This process's circuit breaker for one target (provider + model) as one
        project reaches it (with the gateway's key or its own, BYOK).

        Per project, not per target alone: what fails a request may be the request
        (a prompt that times the model out, one that makes it answer 5xx) or the key
        it is sent with (a BYOK key suspended), so one tenant's failures must not
        open the circuit for every tenant. The cost: a provider-wide outage is found
        by each project after ``failure_threshold`` failures of its own. Bounded: one
        breaker per project, target and key source of the config(s) served."""
        source = "byok" if route.provider in project.file.provider_keys else "shared"
        key = (route.provider, route.model, project.id, source)
        found = self.breakers.get(key)
        if found is None:
            cfg = self.config.gateway.resilience.breaker
            found = self.breakers[key] = CircuitBreaker(
                cfg.failure_threshold, cfg.cooldown_seconds, cfg.half_open_probes
            )
        return found


@dataclass(slots=True)
class Principal:
    """Who is calling: an org-wide API key or a project-pinned session token."""

    org: str
    scopes: frozenset[str]
    key_id: str | None = None
    key_prefix: str | None = None
    session: SessionClaims | None = None

    @property
    def user(self) -> str | None:
        return self.session.sub if self.session else None


@dataclass(slots=True)
class CallContext:
    """One chat call: what was asked, where it goes, what it may and did cost."""

    project: Project
    chat: ChatRequest
    alias: str
    route: Route  # the target being tried
    targets: list[Route]  # every target of the alias, in the order to try them
    price: PriceConfig | None  # of the current target's model
    input_bound: int
    output_ceiling: int
    # The config and providers the request began with: a reload while it runs (a renamed
    # or removed provider) must not change what its routes point at.
    config: Config
    providers: dict[str, Provider]
    reservation: Reservation | None = None
    org_reservation: Reservation | None = None
    extra_holds: list[Reservation] = field(default_factory=list)  # fallback cost deltas
    # Set by the handler: the usage to bill (reported, or estimated never below the
    # truth); None means nothing was consumed upstream.
    billed: Usage | None = None
    upstream_seconds: float = 0.0
    first_token_at: float | None = None
    stream_outcome: str | None = None
    surface: str = "chat"  # the API surface the call came through (the ledger says it)
    shrunk: bool = False  # the hold lowered output_ceiling to what the caps had room for
    started: float = field(default_factory=time.perf_counter)

    def add_billed(self, usage: Usage) -> None:
        """Add one attempt's usage to what the request is billed."""
        if self.billed is None:
            self.billed = usage
            return
        b = self.billed
        self.billed = Usage(
            b.input_tokens + usage.input_tokens,
            b.output_tokens + usage.output_tokens,
            b.cached_input_tokens + usage.cached_input_tokens,
            b.reasoning_tokens + usage.reasoning_tokens,
            b.cache_creation_input_tokens + usage.cache_creation_input_tokens,
            b.estimated or usage.estimated,
            b.cache_creation_1h_input_tokens + usage.cache_creation_1h_input_tokens,
        )

    def provider_config(self, name: str) -> ProviderConfig:
        return self.config.gateway.providers[name]


STATE = web.AppKey("gateway_state", GatewayState)
# The same state, put on each request by the outermost middleware: a request's
# config_dict builds a ChainMap view on every access, which the hot path avoids.
REQUEST_STATE = web.RequestKey("gateway_state", GatewayState)
PRINCIPAL = web.RequestKey("principal", Principal)
CALL = web.RequestKey("call", CallContext)
REQUEST_ID = web.RequestKey("request_id", str)  # the gateway's own, unique
CLIENT_REQUEST_ID = web.RequestKey("client_request_id", str)  # the client's if safe, else ""
PROJECT = web.RequestKey("project", Project)
