"""What a request should cost and what the counters should then read.

Prices are nano-USD per token (USD per million tokens x 1000): the harness's
gpt-4o-mini (``MINI``) is the default everywhere; pass ``price=`` for another model.
A budget counter hash has ``u0..u3`` (used input, output, total tokens, cost) and
``r0..r3`` (the same, reserved); ``used`` and ``held`` build one to compare with.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from aiohttp.test_utils import TestClient

from gateway.budget import Amounts
from gateway.config import PriceConfig
from gateway.usage import Usage, cost_nano
from tests.support.harness import bearer


@dataclass(frozen=True)
class Price:
    """A model's prices in nano-USD per token; cached input defaults to the input's."""

    input: int
    output: int
    cached_input: int | None = None


MINI = Price(150, 600, 75)  # gpt-4o-mini in the harness: 0.15 / 0.60 / 0.075 USD per Mtok
FOUR_O = Price(2_500, 10_000)  # gpt-4o in the harness: 2.50 / 10.00 USD per Mtok
# The harness's gpt-4o-mini entry as the gateway parses it (for ``cost_nano`` itself).
MINI_CONFIG = PriceConfig.model_validate(
    {"input": "0.15", "output": "0.60", "cached_input": "0.075"}
)


def cost(i: int, o: int, cached: int = 0, *, price: Price = MINI) -> int:
    """The cost of ``i`` input tokens (``cached`` of them read from a cache) and ``o``
    output tokens at ``price``."""
    cached_price = price.input if price.cached_input is None else price.cached_input
    return (i - cached) * price.input + cached * cached_price + o * price.output


def used(i: int, o: int, c: int | None = None, *, price: Price = MINI) -> dict[str, int]:
    """A counter with ``i`` input and ``o`` output tokens used at a cost of ``c``
    (None: ``cost(i, o)`` at ``price``), nothing reserved."""
    c = cost(i, o, price=price) if c is None else c
    return {"u0": i, "u1": o, "u2": i + o, "u3": c, "r0": 0, "r1": 0, "r2": 0, "r3": 0}


def held(i: int, o: int, c: int, *, u: tuple[int, int, int] = (0, 0, 0)) -> dict[str, int]:
    """A counter holding ``i`` + ``o`` tokens at ``c`` reserved, ``u`` (input, output,
    cost) used."""
    ui, uo, uc = u
    return {"u0": ui, "u1": uo, "u2": ui + uo, "u3": uc, "r0": i, "r1": o, "r2": i + o, "r3": c}


NOTHING = used(0, 0, 0)  # a counter nothing was ever charged to


def dimensions(i: int, o: int, c: int) -> dict[str, int]:
    """The used amounts as the usage report names its dimensions."""
    return {"input_tokens": i, "output_tokens": o, "total_tokens": i + o, "cost_nano_usd": c}


def amounts(i: int, o: int, price: PriceConfig = MINI_CONFIG) -> Amounts:
    """What the store reserves or settles for ``i`` + ``o`` tokens, priced by the
    gateway's own ``cost_nano``."""
    return Amounts(i, o, cost_nano(Usage(i, o), price))


def report_row(report: dict[str, Any], scope: str, window: str) -> dict[str, Any]:
    """The one counter of a usage report (``GET .../usage``) of ``scope`` and ``window``."""
    rows: list[dict[str, Any]] = [
        c for c in report["counters"] if c["scope"] == scope and c["window"] == window
    ]
    [row] = rows
    return row


async def usage_settled(
    client: TestClient[Any, Any], key: str, project: str = "alpha", window: str = "month"
) -> dict[str, int]:
    """The project's used amounts in ``window`` as its usage report (``GET .../usage``)
    gives them, once nothing is reserved any more."""
    deadline = time.monotonic() + 5
    while True:
        resp = await client.get(f"/v1/projects/{project}/usage", headers=bearer(key))
        assert resp.status == 200, await resp.text()
        dims = report_row(await resp.json(), "project", window)["dimensions"]
        if not any(d["reserved"] for d in dims.values()):
            return {name: d["used"] for name, d in dims.items()}
        assert time.monotonic() < deadline, f"still reserved after 5 s: {dims}"
        await asyncio.sleep(0.02)
