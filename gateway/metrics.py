"""Prometheus metrics (prometheus-client), one registry per application.

Label values come from configuration only (project slugs, model aliases,
provider names, fixed reason words), never from raw client input, so every
label set is bounded.

With ``--workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR``: every worker
writes its values there and whichever worker answers ``/metrics`` aggregates all of
them (counters and histograms add up, gauges sum over live workers).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by project, model alias, HTTP status and API surface "
            "(chat, responses, messages, embeddings; '-' for the others).",
            ["project", "model", "status", "surface"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request received to response finished.",
            ["project"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "gateway_overhead_seconds",
            "Time the gateway added: request duration minus time waiting on the upstream.",
            ["project"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time spent waiting on the upstream provider.",
            ["provider"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.time_to_first_token = Histogram(
            "gateway_time_to_first_token_seconds",
            "Streaming: time from request received to the first content chunk sent.",
            ["project"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "gateway_tokens",
            "Tokens billed, by type (input, output, cached_input, reasoning).",
            ["project", "model", "type"],
            registry=r,
        )
        self.cost = Counter(
            "gateway_cost_usd",
            "Cost billed in USD (computed in integer nano-USD, rounded up).",
            ["project", "model"],
            registry=r,
        )
        self.budget_rejections = Counter(
            "gateway_budget_rejections",
            "Requests refused with 402, by the cap that refused them.",
            ["project", "scope", "window", "dimension"],
            registry=r,
        )
        self.rate_limited = Counter(
            "gateway_rate_limited",
            "Requests refused with 429 by a gateway rate limit.",
            ["project", "scope", "kind"],
            registry=r,
        )
        self.estimated_usage = Counter(
            "gateway_estimated_usage",
            "Requests billed on an estimate because the upstream reported no usage.",
            ["project", "reason"],
            registry=r,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being served.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.open_streams = Gauge(
            "gateway_open_streams",
            "SSE streams being relayed.",
            registry=r,
            multiprocess_mode="livesum",
        )
        # Budget state, refreshed from Redis when /metrics is scraped.
        self.budget_used_tokens = Gauge(
            "gateway_budget_used_tokens",
            "Tokens used in the current window (settled usage), by project.",
            ["project", "window", "type"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.budget_limit_tokens = Gauge(
            "gateway_budget_limit_tokens",
            "Project token cap of the window (absent: no cap).",
            ["project", "window", "type"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.budget_used_usd = Gauge(
            "gateway_budget_used_usd",
            "Cost used in the current window, by project.",
            ["project", "window"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.budget_limit_usd = Gauge(
            "gateway_budget_limit_usd",
            "Project cost cap of the window (absent: no cap).",
            ["project", "window"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.budget_reserved_tokens = Gauge(
            "gateway_budget_reserved_tokens",
            "Total tokens held by in-flight reservations, by project and window.",
            ["project", "window"],
            registry=r,
            multiprocess_mode="mostrecent",
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Upstream failures by provider and reason.",
            ["provider", "reason"],
            registry=r,
        )
        self.upstream_retries = Counter(
            "gateway_upstream_retries",
            "Retries of an upstream target before the first byte.",
            ["provider"],
            registry=r,
        )
        self.upstream_fallbacks = Counter(
            "gateway_upstream_fallbacks",
            "Fallbacks from a target to the next one of the same model alias.",
            ["provider"],
            registry=r,
        )
        self.store_errors = Counter(
            "gateway_store_errors",
            "Budget store (Redis) failures by operation.",
            ["operation"],
            registry=r,
        )
        self.unmetered = Counter(
            "gateway_unmetered_requests",
            "Requests admitted without a reservation (store down, on_store_error: allow).",
            ["project"],
            registry=r,
        )
        self.auth_failures = Counter(
            "gateway_auth_failures", "Rejected credentials by reason.", ["reason"], registry=r
        )

    def exposition(self) -> bytes:
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        # The workers' files only hold series something touched: a family nobody has
        # (no budget rejection yet, say) would vanish from the scrape, where one worker
        # alone shows it with no samples. Announce those too, as that worker would.
        present = {family.name for family in merged.collect()}
        untouched = [f for f in self.registry.collect() if f.name not in present and not f.samples]
        announced = CollectorRegistry(auto_describe=False)
        announced.register(_Families(untouched))
        return generate_latest(merged) + generate_latest(announced)


class _Families(Collector):
    """A fixed list of metric families, as a collector."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families
