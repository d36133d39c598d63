"""Structured JSON logs: one object per line, with the request id when there is one.

Only fields the code puts in ``extra`` are written: never headers or bodies, so no
credential or provider key can reach a log line through here; tracebacks are
dropped for the same reason (exceptions are logged by type).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any, TextIO

import orjson

_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds; the part up to the second is formatted once a second."""
    global _second
    whole = int(created)
    if _second[0] != whole:
        _second = (whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)))
    return f"{_second[1]}.{int((created - whole) * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key == "fields" and isinstance(value, dict):
                out.update(value)
            elif key not in _STANDARD:
                out[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            out["error_type"] = record.exc_info[0].__name__
        return orjson.dumps(out, default=str).decode()


class TurnBufferedHandler(logging.StreamHandler[TextIO]):
    """Lines logged during one event-loop turn leave in one write at the end of it.

    Under load many requests finish in the same turn; a write (and flush) per line
    was a system call per request. Outside a running loop (start-up, the CLI, exit)
    lines are written at once; ``flush()`` (also run by ``logging.shutdown``) writes
    whatever is pending.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._pending_on: asyncio.AbstractEventLoop | None = None
        # A forked worker must not write its parent's pending lines a second time.
        os.register_at_fork(before=self.flush)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self.write_line(line)

    def write_line(self, line: str) -> None:
        """Queue one formatted line (written at the end of the loop turn)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self.lock:  # type: ignore[union-attr]
            self._lines.append(line)
            if loop is None:
                self._write_out()
            elif self._pending_on is not loop:
                self._pending_on = loop
                loop.call_soon(self._end_of_turn)

    def _end_of_turn(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._pending_on = None
            self._write_out()

    def _write_out(self) -> None:
        if not self._lines:
            return
        lines, self._lines = self._lines, []
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
        except (OSError, ValueError):  # closed stream at exit: nothing to do
            pass

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]
            self._write_out()


_installed: TurnBufferedHandler | None = None


def info_fields(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """``logger.info(msg, extra={"fields": fields})``, the same line, for the hot path.

    With the handler :func:`setup_logging` installs as the only one, the JSON line
    is built and queued directly: a LogRecord and the handler chain cost about three
    times more, once per request. Any other set-up goes through ``logging``.
    """
    if not logger.isEnabledFor(logging.INFO):
        return
    handler, root = _installed, logging.root.handlers
    if handler is None or len(root) != 1 or root[0] is not handler or logger.handlers:
        logger.info(msg, extra={"fields": fields})
        return
    out: dict[str, Any] = {
        "ts": _timestamp(time.time()),
        "level": "info",
        "logger": logger.name,
        "msg": msg,
    }
    out.update(fields)
    handler.write_line(orjson.dumps(out, default=str).decode())


def setup_logging(level: str = "INFO") -> None:
    global _installed
    # Fields no line of ours shows, which every record would otherwise look up: the
    # caller's source line (a stack walk), thread, process and process name (the
    # logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = TurnBufferedHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    _installed = handler
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    route_warnings()


def route_warnings() -> None:
    """Python warnings (a library's DeprecationWarning, UserWarning...) become JSON
    records of the ``py.warnings`` logger instead of free text on stderr: the log
    stream stays one JSON object per line whatever a dependency says."""
    logging.captureWarnings(True)
