"""The access-log handler: one write per event-loop turn, nothing lost, JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from gateway.logs import JsonFormatter, TurnBufferedHandler


class CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def make_logger(name: str) -> tuple[logging.Logger, TurnBufferedHandler, CountingStream]:
    stream = CountingStream()
    handler = TurnBufferedHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, handler, stream


def lines(stream: CountingStream) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_lines_of_one_turn_leave_in_one_write_at_its_end() -> None:
    logger, _, stream = make_logger("test.turn")

    async def main() -> None:
        for n in range(5):
            logger.info("request", extra={"fields": {"n": n}})
        assert stream.writes == 0  # still in the turn that logged them
        await asyncio.sleep(0)
        assert stream.writes == 1
        logger.info("request", extra={"fields": {"n": 5}})
        await asyncio.sleep(0)
        assert stream.writes == 2

    asyncio.run(main())
    assert [line["n"] for line in lines(stream)] == [0, 1, 2, 3, 4, 5]


def test_outside_a_loop_lines_are_written_at_once() -> None:
    logger, _, stream = make_logger("test.noloop")
    logger.info("starting", extra={"fields": {"port": 8080}})
    assert stream.writes == 1
    assert lines(stream) == [{**lines(stream)[0], "msg": "starting", "port": 8080, "level": "info"}]


def test_flush_writes_what_a_stopped_loop_left_pending() -> None:
    logger, handler, stream = make_logger("test.flush")
    loop = asyncio.new_event_loop()

    def log_then_stop() -> None:
        logger.info("last words")
        loop.stop()  # before the next turn, whose first callback would write the line

    loop.call_soon(log_then_stop)
    loop.run_forever()
    loop.close()
    assert stream.writes == 0
    handler.flush()  # what logging.shutdown() does at exit
    assert [line["msg"] for line in lines(stream)] == ["last words"]
