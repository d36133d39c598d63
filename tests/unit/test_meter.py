"""Unit tests for gateway.meter: what a call is billed, on plain values."""

from __future__ import annotations

from gateway.pipeline.meter import StreamMeter, unary_billed, worst_case
from gateway.usage import Usage

BOUND, CEILING = 33, 100


def truth(output: int, input_: int = 11) -> Usage:
    return Usage(input_, output)


def test_a_final_usage_after_the_finish_is_the_bill() -> None:
    meter = StreamMeter(BOUND, CEILING)
    meter.produced()
    meter.finish(0)
    meter.report(truth(7))
    assert meter.final
    assert meter.billed() == (truth(7), None)


def test_a_usage_on_the_finish_chunk_itself_is_final() -> None:
    meter = StreamMeter(BOUND, CEILING)
    meter.finish(0)  # the relay reads a chunk's choices before its usage
    meter.report(truth(7))
    assert meter.billed() == (truth(7), None)


def test_an_early_usage_chunk_is_a_running_count_not_the_end() -> None:
    meter = StreamMeter(BOUND, CEILING)
    meter.report(truth(0))
    for _ in range(5):
        meter.produced()
    assert not meter.final
    usage, reason = meter.billed()
    assert reason == "stream_cut"
    assert usage == Usage(BOUND, CEILING, estimated=True)


def test_finished_without_usage_bills_the_ceiling_not_the_visible_text() -> None:
    meter = StreamMeter(BOUND, CEILING)
    for _ in range(20):
        meter.produced()
    meter.finish(0)
    assert meter.billed() == (Usage(BOUND, CEILING, estimated=True), "no_usage")


def test_a_running_count_above_the_input_bound_is_never_billed_below() -> None:
    meter = StreamMeter(BOUND, CEILING)
    meter.report(truth(3, input_=50))
    usage, _ = meter.billed()
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens) == (50, CEILING)


def test_past_the_ceiling_the_stream_is_cut_and_billed_the_floor() -> None:
    meter = StreamMeter(BOUND, CEILING)
    for _ in range(CEILING):
        meter.produced()
    assert not meter.over_ceiling
    meter.produced()
    assert meter.over_ceiling
    assert meter.billed() == (Usage(BOUND, CEILING + 1, estimated=True), "output_limit")


def test_a_running_count_past_the_ceiling_is_a_floor_too() -> None:
    meter = StreamMeter(BOUND, CEILING)
    meter.produced()
    meter.report(truth(120))
    assert meter.over_ceiling
    usage, reason = meter.billed()
    assert reason == "output_limit"
    assert usage is not None
    assert usage.output_tokens == 120


def test_a_final_usage_past_the_ceiling_is_the_truth_and_no_cut() -> None:
    meter = StreamMeter(BOUND, CEILING)
    meter.finish(0)
    meter.report(truth(150))
    assert not meter.over_ceiling
    assert meter.billed() == (truth(150), None)


def test_with_two_choices_one_finish_is_not_the_end() -> None:
    meter = StreamMeter(BOUND, 2 * CEILING, choices=2)
    meter.finish(0)
    meter.report(truth(9))
    assert not meter.final
    meter.finish(1)
    meter.report(truth(12))
    assert meter.billed() == (truth(12), None)


def test_an_index_that_is_no_integer_finishes_nothing() -> None:
    meter = StreamMeter(BOUND, CEILING)
    meter.finish("0")
    meter.finish(True)
    meter.report(truth(7))
    assert not meter.final


def test_a_declined_stream_bills_nothing() -> None:
    meter = StreamMeter(BOUND, CEILING)
    meter.declined = True
    assert meter.billed() == (None, None)


def test_unary_bills_its_usage_or_the_ceiling() -> None:
    assert unary_billed(truth(3000), BOUND, CEILING) == truth(3000)
    assert unary_billed(None, BOUND, CEILING) == Usage(BOUND, CEILING, estimated=True)
    assert worst_case(BOUND, CEILING) == Usage(BOUND, CEILING, estimated=True)
