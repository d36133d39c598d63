"""Schemathesis against a live gateway: no 5xx, and every answer as GET /openapi.json
says (its status, content type, headers and body, streams' events included).

A ``gateway serve`` process (tests/support/process.py) on the demo provider (offline,
deterministic), a valid API key sent on every request and the operator token on
``/admin/reload``; schemathesis' CLI runs every phase (examples, coverage, fuzzing,
stateful) over every operation, deterministically and bounded (a few examples per
operation), once per wire profile: the karta project ``alpha`` and the openai project
``beta``. The known gateway bugs it found are pinned in test_openapi_known_bugs.py,
whose ``filter_failure`` hook drops only their 500s.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.http.openapi import document
from tests.support.harness import OPERATOR_TOKEN, Credentials, write_config
from tests.support.process import ROOT, GatewayProcess

# Run alone (scripts/test's serial pass): a 40 s CPU-bound fuzz run of a live gateway.
pytestmark = pytest.mark.serial

CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
)
MAX_EXAMPLES = 20  # per operation and phase: the two runs take ~20 s each here
HOOKS = "tests.integration.openapi.test_openapi_known_bugs"

_DEMO = {"routes": [{"provider": "demo", "model": "demo-1"}]}
_MODELS = {
    "default": _DEMO,
    "smart": _DEMO,
    "embed": {"kind": "embedding", "routes": [{"provider": "demo", "model": "demo-embed"}]},
}

_CONFIG = """\
hooks = "{hooks}"

[cache]
enabled = false

[parameters]
"path.project_ref" = "{project}"
"path.model" = "default"
"body.model" = "default"

[[operations]]
include-path = "/v1/projects/{{project_ref}}/embeddings"
parameters = {{ "body.model" = "embed" }}

[[operations]]
include-path = "/admin/reload"
headers = {{ Authorization = "Bearer {operator}" }}

[[operations]]
include-path-regex = "^/v1/orgs/"
headers = {{ Authorization = "Bearer {operator}" }}
parameters = {{ "path.org" = "acme" }}
"""


@pytest.fixture
async def live(tmp_path: Path, redis_url: str) -> AsyncIterator[tuple[GatewayProcess, Credentials]]:
    # No route reaches the harness's "upstream" provider: every alias is the demo's.
    creds = write_config(
        tmp_path / "config",
        "http://127.0.0.1:9",
        redis_url,
        projects={"alpha": {"models": _MODELS}, "beta": {"models": _MODELS}},
    )
    gateway = GatewayProcess(creds, tmp_path / "gateway.log")
    try:
        await gateway.start()
        yield gateway, creds
    finally:
        gateway.kill()


async def _schemathesis(
    gateway: GatewayProcess, creds: Credentials, project: str, workdir: Path
) -> tuple[int, str, dict[str, Any]]:
    """Run ``st run`` against the gateway: (exit status, its output, its JSON report)."""
    config = workdir / "schemathesis.toml"
    config.write_text(_CONFIG.format(hooks=HOOKS, project=project, operator=OPERATOR_TOKEN))
    report = workdir / "report.json"
    args = [
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        gateway.url("/openapi.json"),
        "--header",
        f"Authorization: Bearer {creds.key}",
        "--checks",
        ",".join(CHECKS),
        "--max-examples",
        str(MAX_EXAMPLES),
        "--generation-deterministic",  # the same cases every run, no example database
        "--request-timeout",
        "10",
        # One worker: hypothesis' lambda descriptions call ast.parse, which CPython 3.11
        # does not guard for threads (SystemError: AST constructor recursion depth).
        "--workers",
        "1",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    # Its working directory is the test's (schemathesis may write caches there); the
    # hooks module is imported from the repository.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=workdir,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=150)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    loaded = json.loads(report.read_text()) if report.exists() else {}
    return proc.returncode, out.decode(errors="replace"), loaded


def _operations() -> int:
    methods = {"get", "post", "put", "patch", "delete"}
    return sum(len(methods & item.keys()) for item in document()["paths"].values())


@pytest.mark.timeout(180)
@pytest.mark.parametrize("project", ["alpha", "beta"], ids=["karta", "openai"])
async def test_schemathesis_finds_no_5xx_and_no_answer_off_the_document(
    live: tuple[GatewayProcess, Credentials], project: str, tmp_path: Path
) -> None:
    gateway, creds = live
    status, output, report = await _schemathesis(gateway, creds, project, tmp_path)
    assert status == 0, output[-20000:]
    assert report["failures"] == [], output[-20000:]
    operations = report["operations"]
    # Every operation ran (schemathesis leaves out the one serving the schema itself).
    assert operations["tested"] == operations["selected"] == operations["total"], operations
    assert operations["total"] >= _operations() - 1, operations
    assert report["errors"] == [], output[-20000:]
    assert report["complete"] is True
    # Not a run of refusals only: every operation had generated requests accepted (a
    # 2xx), the spending ones included; a stored response is only reached through the
    # link from its creation (the stateful phase), random ids are 404.
    accepted = {
        op: sum(phase.get("accepted", 0) for phase in phases.values())
        for op, phases in report["valid_rates"].items()
        # (and a key, revoked or rotated, by its id: random ids are 404)
        if not op.endswith(("/responses/{response_id}", "{key_id}", "/revoke", "/rotate"))
    }
    assert len(accepted) == operations["total"] - 4, accepted
    assert all(accepted.values()), accepted
