"""Anthropic's 1-hour cache writes, priced apart (gateway.usage.cost_nano) and read
from Anthropic's usage breakdown (providers.anthropic.response.anthropic_usage)."""

from __future__ import annotations

from gateway.config import PriceConfig
from gateway.providers.anthropic.response import anthropic_usage
from gateway.usage import Usage, cost_nano, dearest_input_price, worst_cost_nano

# claude-haiku-4-5: $1/M input, $5/M output, reads $0.10, 5-minute writes $1.25, 1-hour $2.
HAIKU = PriceConfig.model_validate(
    {"input": "1.00", "output": "5.00", "cached_input": "0.10", "cache_write": "1.25",
     "cache_write_1h": "2.00"}
)  # fmt: skip


def test_one_hour_writes_are_priced_at_their_own_price() -> None:
    usage = Usage(
        input_tokens=1000,
        output_tokens=10,
        cached_input_tokens=100,
        cache_creation_input_tokens=300,
        cache_creation_1h_input_tokens=200,
    )
    # 600 plain x 1000 + 100 reads x 100 + 100 5m writes x 1250 + 200 1h writes x 2000
    # + 10 output x 5000 (nano-USD per token)
    assert cost_nano(usage, HAIKU) == 600_000 + 10_000 + 125_000 + 400_000 + 50_000


def test_without_a_1h_price_they_cost_the_cache_write_price() -> None:
    price = PriceConfig.model_validate({"input": "1.00", "output": "5.00", "cache_write": "1.25"})
    usage = Usage(
        input_tokens=100, cache_creation_input_tokens=100, cache_creation_1h_input_tokens=100
    )
    assert cost_nano(usage, price) == 125_000


def test_the_worst_case_prices_input_at_the_1h_write_price() -> None:
    assert dearest_input_price(HAIKU) == 2_000_000_000
    assert worst_cost_nano(10, 0, HAIKU) == 20_000


def test_anthropic_usage_reads_the_1h_breakdown() -> None:
    usage = anthropic_usage(
        {
            "input_tokens": 5,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 300,
            "cache_creation": {"ephemeral_5m_input_tokens": 100, "ephemeral_1h_input_tokens": 200},
            "output_tokens": 7,
        }
    )
    assert usage is not None
    assert (usage.input_tokens, usage.cache_creation_input_tokens) == (405, 300)
    assert usage.cache_creation_1h_input_tokens == 200
    odd = anthropic_usage(
        {"input_tokens": 1, "cache_creation_input_tokens": 2,
         "cache_creation": {"ephemeral_1h_input_tokens": 50}}
    )  # fmt: skip
    assert odd is not None
    assert odd.cache_creation_1h_input_tokens == 2  # never more than the writes
