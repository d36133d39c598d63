"""Shared by the deploy tests: paths, required external tools, a threaded fake upstream."""

from __future__ import annotations

import asyncio
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.upstream import FakeUpstream, Responder

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
HERE = Path(__file__).resolve().parent


def require_binary(name: str) -> str:
    """The path of an external tool the deploy tests need. Missing: the test FAILS (CI
    installs Debian's ``prometheus`` package, which provides prometheus and promtool)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found on PATH: install Debian's 'prometheus' package "
            "(apt-get install -y prometheus); .ci/run does this when promtool is missing",
            pytrace=False,
        )
    return path


def load_yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


class ThreadedUpstream:
    """A FakeUpstream on its own event loop thread, for synchronous module fixtures."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.fake: FakeUpstream | None = None

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    async def _start(self) -> FakeUpstream:
        fake = FakeUpstream()
        await fake.start()
        return fake

    def start(self) -> ThreadedUpstream:
        self.thread.start()
        self.fake = self._run(self._start())
        return self

    @property
    def base_url(self) -> str:
        assert self.fake is not None
        return self.fake.base_url

    def script(self, *replies: Responder) -> None:
        assert self.fake is not None
        self.loop.call_soon_threadsafe(self.fake.script, *replies)

    def close(self) -> None:
        if self.fake is not None:
            self._run(self.fake.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()
