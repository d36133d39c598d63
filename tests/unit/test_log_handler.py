"""The access-log handler: one write per event-loop turn, nothing lost, JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import subprocess
import sys
import warnings

from gateway.logs import JsonFormatter, TurnBufferedHandler, _timestamp, info_fields, setup_logging


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


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_info_fields_writes_the_line_logger_info_writes() -> None:
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        setup_logging("INFO")
        installed = root.handlers[0]
        assert isinstance(installed, TurnBufferedHandler)
        stream = CountingStream()
        installed.setStream(stream)
        logger = logging.getLogger("test.fields")
        fields = {"request_id": "r1", "status": 200, "duration_ms": 1.5, "estimated": False}
        info_fields(logger, "request", fields)  # the direct path
        logger.info("request", extra={"fields": fields})  # through logging
        installed.flush()
        fast, slow = lines(stream)
        assert str(fast.pop("ts")).endswith("Z")
        assert str(slow.pop("ts")).endswith("Z")
        assert (
            fast == slow == {"level": "info", "logger": "test.fields", "msg": "request", **fields}
        )

        # Another handler on the root (say, an operator's): the line goes through logging.
        other = ListHandler()
        root.addHandler(other)
        info_fields(logger, "request", fields)
        assert [r.__dict__["fields"] for r in other.records] == [fields]
        root.removeHandler(other)

        installed.flush()
        assert len(lines(stream)) == 3  # ... and the installed handler still has it

        # Below the level: nothing at all.
        root.setLevel(logging.WARNING)
        info_fields(logger, "request", fields)
        installed.flush()
        assert len(lines(stream)) == 3
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_timestamps_are_iso_utc_with_milliseconds() -> None:
    assert _timestamp(1700000000.5) == "2023-11-14T22:13:20.500Z"
    assert _timestamp(1700000001.25) == "2023-11-14T22:13:21.250Z"  # next second, new prefix
    assert _timestamp(1700000001.0) == "2023-11-14T22:13:21.000Z"


def test_a_library_warning_reaches_stderr_as_a_json_record() -> None:
    # A dependency's warning (redis-py 8 warned on every client the gateway built) must
    # not break the one-JSON-object-per-line stream: a fresh interpreter, as in serve.
    script = (
        "import warnings\n"
        "from gateway.logs import setup_logging\n"
        "setup_logging()\n"
        "warnings.warn('a library changed its mind', UserWarning, stacklevel=1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(records) == 1
    assert records[0]["logger"] == "py.warnings"
    assert records[0]["level"] == "warning"
    assert "a library changed its mind" in str(records[0]["msg"])


def test_building_the_redis_clients_warns_nothing() -> None:
    from gateway.serve.resources import redis_client

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        redis_client("redis://127.0.0.1:1/0", 0.1)
        redis_client("redis+cluster://127.0.0.1:1", 0.1)
