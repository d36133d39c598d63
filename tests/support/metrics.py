"""Reading a gateway's Prometheus metrics: scraped from an in-process gateway's metrics
listener, or parsed from an exposition text."""

from __future__ import annotations

from aiohttp import ClientSession, web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from gateway.context import STATE
from gateway.http.metrics_listener import metrics_app


async def scrape(client: TestClient[web.Request, web.Application], token: str = "") -> str:
    """The in-process gateway's /metrics, as its metrics listener serves it (the metrics
    app on a real socket of its own: the API port has no /metrics)."""
    server = TestServer(metrics_app(client.app[STATE], token))
    await server.start_server()
    try:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with (
            ClientSession() as http,
            http.get(server.make_url("/metrics"), headers=headers) as resp,
        ):
            assert resp.status == 200
            return await resp.text()
    finally:
        await server.close()


def sample_sum(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def gauge(text: str, name: str, **labels: str) -> float:
    """The first sample called ``name`` whose labels include ``labels`` (one must exist)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    raise AssertionError(f"no sample {name} {labels}")


def by_label(text: str, name: str, label: str) -> dict[str, float]:
    """The samples called ``name``, by the value of their label ``label``."""
    return {
        sample.labels[label]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def families(text: str) -> set[str]:
    """The metric family names of an exposition."""
    return {f.name for f in text_string_to_metric_families(text)}


async def metric(
    client: TestClient[web.Request, web.Application], name: str, **labels: str
) -> float:
    """Sum of the in-process gateway's /metrics samples called ``name`` whose labels
    include ``labels``."""
    return sample_sum(await scrape(client), name, **labels)
