"""Stored Responses answers, for ``previous_response_id`` on translated routes.

A response created with ``store`` (the default) is kept in Redis under the project's
tag (gateway.budget.keys.stored_response), with the conversation that produced it as
chat messages (its input turns and its answer), for ``responses.ttl_seconds``. A
continuation loads the turns and replays them ahead of its own input: the input
bound counts them, so a continuation cannot slip past a cap. A response is readable
only by the credential that created it (its API key, or its session's key and user):
another credential's id is unknown (404), as is an expired one.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from redis.exceptions import RedisError

from gateway.budget import BudgetStore, keys
from gateway.context import Principal
from gateway.errors import ServiceUnavailable


def credential_id(principal: Principal) -> str:
    """Who may read a stored response: a digest of the API key and the session's user."""
    who = f"{principal.key_id or ''}\x00{principal.user or ''}"
    return hashlib.sha256(who.encode()).hexdigest()[:32]


@dataclass(slots=True)
class StoredResponse:
    turns: list[dict[str, Any]]  # chat messages: every input turn, then the answer
    response: dict[str, Any]  # the Responses object as answered


class ConversationStore:
    """Save and load stored responses of one project (Redis, the budget store's client)."""

    def __init__(self, store: BudgetStore, project_id: str, principal: Principal) -> None:
        self.store = store
        self.tag = store.tag(project_id)
        self.owner = credential_id(principal)

    def _key(self, response_id: str) -> str:
        return keys.stored_response(self.tag, response_id)

    async def save(self, response_id: str, stored: StoredResponse, ttl_s: int) -> None:
        record = orjson.dumps(
            {"owner": self.owner, "turns": stored.turns, "response": stored.response}
        )
        try:
            async with asyncio.timeout(self.store.timeout_s):
                await self.store.redis.set(self._key(response_id), record, ex=ttl_s)
        except (RedisError, OSError, TimeoutError):
            # The answer still goes out; a continuation from it will be a 404.
            return

    async def load(self, response_id: str) -> StoredResponse | None:
        """The stored response, None if unknown, expired or another credential's."""
        try:
            async with asyncio.timeout(self.store.timeout_s):
                found = await self.store.redis.get(self._key(response_id))
        except (RedisError, OSError, TimeoutError):
            raise ServiceUnavailable.detail(
                "response store unavailable", {"Retry-After": "1"}
            ) from None
        if found is None:
            return None
        record = orjson.loads(found)
        if not isinstance(record, dict) or record.get("owner") != self.owner:
            return None
        turns, response = record.get("turns"), record.get("response")
        if not isinstance(turns, list) or not isinstance(response, dict):
            return None
        return StoredResponse(turns=turns, response=response)
