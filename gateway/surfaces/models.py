"""Model listing: the project's aliases (never the upstream model names behind them).

``GET /v1/projects/{ref}/models`` and ``/models/{id}`` in OpenAI's shape (what
``client.models.list()`` / ``retrieve()`` read); ``GET /v1/projects/{ref}/v1/models``
in Anthropic's (``data``, ``has_more``, ``first_id``, ``last_id``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.config import Project
from gateway.context import PROJECT, REQUEST_STATE
from gateway.errors import NotFound

OWNER = "karta"


def _aliases(project: Project) -> list[str]:
    """The aliases a caller can ask for: those with at least one active route."""
    return sorted(alias for alias, spec in project.file.models.items() if spec.routes)


def openai_model(alias: str, created: int) -> dict[str, Any]:
    return {"id": alias, "object": "model", "created": created, "owned_by": OWNER}


def anthropic_model(alias: str, created: int) -> dict[str, Any]:
    stamp = datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"type": "model", "id": alias, "display_name": alias, "created_at": stamp}


def _created(request: web.Request) -> int:
    # When the config serving this request was loaded: the aliases exist since then.
    return int(request[REQUEST_STATE].config.loaded_at)


async def list_models(request: web.Request) -> web.Response:
    created = _created(request)
    data = [openai_model(alias, created) for alias in _aliases(request[PROJECT])]
    return web.json_response({"object": "list", "data": data})


async def get_model(request: web.Request) -> web.Response:
    alias = request.match_info["model"]
    if alias not in _aliases(request[PROJECT]):
        raise NotFound.detail(f"model {alias!r} is not configured for this project")
    return web.json_response(openai_model(alias, _created(request)))


async def list_models_anthropic(request: web.Request) -> web.Response:
    created = _created(request)
    data = [anthropic_model(alias, created) for alias in _aliases(request[PROJECT])]
    return web.json_response(
        {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
    )
