"""The API-key operations, the same over HTTP and from the CLI: create, list, get,
revoke, rotate. Each raises the gateway's errors (404, 409, 422, 503).

A change is read, computed, then written only if the records are still as read (one
Lua script, gateway.control.store); under an ``Idempotency-Key`` the answer is stored
in the same script, so a retry replays it (the first call's status and body, but never
a key's plaintext: that is shown once, ``"key": null`` on a replay).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import orjson

from gateway.config import Config, KeyRecord
from gateway.control.records import (
    SCOPES,
    ApiKey,
    api_view,
    key_id_for,
    prefix_for,
    yaml_view,
)
from gateway.control.store import KeyStore, KeyStoreUnavailable, Stored, Write
from gateway.credentials import generate_key
from gateway.errors import Conflict, NotFound, ServiceUnavailable, ValidationFailed

log = logging.getLogger("gateway.control")

DEFAULT_GRACE_S = 3600  # a rotated key keeps working this long by default
MAX_GRACE_S = 7 * 86_400
MIN_LIFETIME_S = 60
MAX_LIFETIME_S = 10 * 365 * 86_400
MAX_NAME_CHARS = 128
MAX_KEYS_PER_ORG = 10_000  # ended keys count until their records expire
T = TypeVar("T")
_ATTEMPTS = 5  # a change retried when a record changed between its read and its write


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks: the operator, or an org's key (by id); named in the audit log line."""

    label: str


@dataclass(frozen=True, slots=True)
class Idem:
    """A mutating call's Idempotency-Key and what it asked (``fingerprint``)."""

    key: str
    fingerprint: str


@dataclass(slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    replayed: bool = False
    secret: dict[str, str] = field(default_factory=dict)  # shown once, never stored


def fingerprint(operation: str, target: str, body: bytes) -> str:
    return hashlib.sha256(b"\x00".join((operation.encode(), target.encode(), body))).hexdigest()


class KeyService:
    """The operations on one org's keys, against ``store``, under ``config``."""

    def __init__(
        self,
        config: Config,
        store: KeyStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock

    # ------------------------------------------------------------------------ reads

    async def list_keys(self, org: str) -> list[dict[str, Any]]:
        """Every key of the org: the config files' (read-only), then the API's."""
        yaml_keys = self._yaml_keys(org)
        stored = await self._guard(self.store.org_keys(org))
        ids = [r.entry.id for r in yaml_keys] + [s.key.id for s in stored]
        used = await self._guard(self.store.last_used(ids))
        now = self.clock()
        out = [yaml_view(r, used.get(r.entry.id)) for r in yaml_keys]
        out += [api_view(s.key, used.get(s.key.id), now) for s in stored]
        return out

    async def get(self, org: str, key_id: str) -> dict[str, Any]:
        yaml_key = self._yaml_key(org, key_id)
        if yaml_key is not None:
            used = await self._guard(self.store.last_used([key_id]))
            return yaml_view(yaml_key, used.get(key_id))
        stored = await self._stored(org, key_id)
        used = await self._guard(self.store.last_used([key_id]))
        return api_view(stored.key, used.get(key_id), self.clock())

    # ------------------------------------------------------------------------ changes

    async def create(self, org: str, body: Any, actor: Actor, idem: Idem | None) -> Answer:
        """A new key (201); its plaintext is in the answer's ``key``, once."""
        name, scopes, expires_at = self._create_fields(body)

        async def compute() -> tuple[list[Write], Answer]:
            if await self._guard(self.store.org_size(org)) >= MAX_KEYS_PER_ORG:
                raise Conflict.detail(
                    f"org {org} has {MAX_KEYS_PER_ORG} API keys (ended ones count for 30 "
                    "days): revoke unused ones, or wait for ended ones to expire"
                )
            new, secret = self._new_key(org, name, scopes, expires_at)
            answer = Answer(201, {**api_view(new, None, self.clock()), "key": None})
            answer.secret["key"] = secret
            return [Write(new, None, index=True)], answer

        answer = await self._change(org, actor, idem, compute)
        if not answer.replayed:
            self._audit("api key created", org, answer.body["id"], answer.body["prefix"], actor)
        return answer

    async def revoke(self, org: str, key_id: str, actor: Actor, idem: Idem | None) -> Answer:
        """The key stops working on every process within a second (200, the key)."""

        async def compute() -> tuple[list[Write], Answer]:
            self._not_yaml(org, key_id, "revoked")
            stored = await self._stored(org, key_id)
            revoked = stored.key.revoked(int(self.clock()))
            used = await self._guard(self.store.last_used([key_id]))
            answer = Answer(200, api_view(revoked, used.get(key_id), self.clock()))
            return [Write(revoked, stored.raw)], answer

        answer = await self._change(org, actor, idem, compute)
        if not answer.replayed:
            self._audit("api key revoked", org, key_id, answer.body["prefix"], actor)
        return answer

    async def rotate(
        self, org: str, key_id: str, body: Any, actor: Actor, idem: Idem | None
    ) -> Answer:
        """A new key with the old one's name, scopes and expiry (201, its plaintext in
        ``key`` once); the old one keeps working ``grace_seconds``, then stops."""
        grace = self._grace(body)

        async def compute() -> tuple[list[Write], Answer]:
            self._not_yaml(org, key_id, "rotated")
            stored = await self._stored(org, key_id)
            old = stored.key
            now = int(self.clock())
            status = old.status(now)
            if status != "active":
                raise Conflict.detail(f"API key {key_id} is {status}: it cannot be rotated")
            if old.replaced_by is not None:
                raise Conflict.detail(
                    f"API key {key_id} was rotated already (into {old.replaced_by}): "
                    "rotate that one"
                )
            new, secret = self._new_key(org, old.name, old.scopes, old.expires_at)
            new = replace(new, rotated_from=old.id)
            ends = now + grace if old.expires_at is None else min(old.expires_at, now + grace)
            ending = replace(old, expires_at=ends, replaced_by=new.id)
            previous = api_view(ending, None, now)
            answer = Answer(201, {**api_view(new, None, now), "key": None, "previous": previous})
            answer.secret["key"] = secret
            return [Write(new, None, index=True), Write(ending, stored.raw)], answer

        answer = await self._change(org, actor, idem, compute)
        if not answer.replayed:
            self._audit(
                "api key rotated",
                org,
                key_id,
                answer.body["previous"]["prefix"],
                actor,
                new_key_id=answer.body["id"],
                grace_seconds=grace,
            )
        return answer

    # ------------------------------------------------------------------------ helpers

    async def _change(
        self,
        org: str,
        actor: Actor,
        idem: Idem | None,
        compute: Callable[[], Awaitable[tuple[list[Write], Answer]]],
    ) -> Answer:
        digest = None
        if idem is not None:
            raw = f"{actor.label}\x00{org}\x00{idem.key}".encode()
            digest = hashlib.sha256(raw).hexdigest()
            found = await self._guard(self.store.answer(digest))
            if found is not None:
                return _replay(found, idem)
        ttl = self.config.gateway.limits.idempotency_ttl_seconds
        for _ in range(_ATTEMPTS):
            try:
                writes, answer = await compute()
            except (Conflict, NotFound):
                # A twin call (same key, in flight at the same time) may have made the
                # change this one now finds done: its answer is this one's too.
                if digest is not None and idem is not None:
                    found = await self._guard(self.store.answer(digest))
                    if found is not None:
                        return _replay(found, idem)
                raise
            stored = None
            if digest is not None and idem is not None:
                record = {"fp": idem.fingerprint, "status": answer.status, "body": answer.body}
                stored = (digest, orjson.dumps(record), ttl)
            applied = await self._guard(self.store.apply(org, writes, stored))
            if applied.outcome == "ok":
                answer.body = {**answer.body, **answer.secret}
                return answer
            if applied.outcome == "replay" and applied.replay is not None and idem is not None:
                return _replay(applied.replay, idem)
        raise Conflict.detail("the key changed while this call ran; retry it")

    def _new_key(
        self, org: str, name: str, scopes: frozenset[str], expires_at: int | None
    ) -> tuple[ApiKey, str]:
        """A fresh key whose prefix and id no key of the config files has (one in Redis
        with the same prefix is found by the write, which then fails and is retried)."""
        while True:
            new = generate_key()
            key_id = key_id_for(new.prefix)
            if new.prefix not in self.config.keys_by_prefix and self.config.key(key_id) is None:
                break
        key = ApiKey(
            id=key_id,
            org=org,
            name=name,
            prefix=new.prefix,
            sha256=new.sha256,
            scopes=scopes,
            created_at=int(self.clock()),
            expires_at=expires_at,
        )
        return key, new.secret

    def _yaml_keys(self, org: str) -> list[KeyRecord]:
        keys = [r for r in self.config.keys_by_id.values() if r.org == org]
        return sorted(keys, key=lambda r: r.entry.id)

    def _yaml_key(self, org: str, key_id: str) -> KeyRecord | None:
        record = self.config.key(key_id)
        return record if record is not None and record.org == org else None

    def _not_yaml(self, org: str, key_id: str, verb: str) -> None:
        if self._yaml_key(org, key_id) is not None:
            raise Conflict(
                {
                    "error": "key_managed_in_config",
                    "message": f"API key {key_id} is defined in the config files (source "
                    f"yaml) and cannot be {verb} through the API: edit its entry under "
                    f"orgs.{org}.api_keys in gateway.yaml or in keys/*.yaml (revoked: true "
                    "to revoke it), then reload",
                }
            )

    async def _stored(self, org: str, key_id: str) -> Stored:
        prefix = prefix_for(key_id)
        stored = None if prefix is None else await self._guard(self.store.get(prefix))
        if stored is None or stored.key.org != org:  # another org's key: not found either
            raise NotFound.detail("no such API key in this org")  # no request bytes echoed
        return stored

    @staticmethod
    async def _guard(awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except KeyStoreUnavailable:
            raise ServiceUnavailable.detail(
                "the key store (Redis) did not answer; retry", {"Retry-After": "1"}
            ) from None

    def _create_fields(self, body: Any) -> tuple[str, frozenset[str], int | None]:
        body = _object(body, ("name", "scopes", "expires_at", "expires_in_seconds"))
        name = body.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_CHARS:
            raise ValidationFailed(
                f"name is required: a string of 1 to {MAX_NAME_CHARS} characters", "name"
            )
        if not name.isprintable():
            raise ValidationFailed("name must be printable characters", "name")
        scopes = body.get("scopes", ["read", "write"])
        if (
            not isinstance(scopes, list)
            or not scopes
            or any(s not in SCOPES for s in scopes)
            or len(set(scopes)) != len(scopes)
        ):
            raise ValidationFailed(
                "scopes must be a non-empty list of distinct values of read, write, admin",
                "scopes",
            )
        now = int(self.clock())
        expires_at = body.get("expires_at")
        lifetime = body.get("expires_in_seconds")
        if expires_at is not None and lifetime is not None:
            raise ValidationFailed("give expires_at or expires_in_seconds, not both", "expires_at")
        if lifetime is not None:
            if not _int_between(lifetime, MIN_LIFETIME_S, MAX_LIFETIME_S):
                raise ValidationFailed(
                    f"expires_in_seconds must be an integer from {MIN_LIFETIME_S} to "
                    f"{MAX_LIFETIME_S}",
                    "expires_in_seconds",
                )
            expires_at = now + lifetime
        elif expires_at is not None and not _int_between(
            expires_at, now + MIN_LIFETIME_S, now + MAX_LIFETIME_S
        ):
            raise ValidationFailed(
                f"expires_at must be a unix time (seconds) from {MIN_LIFETIME_S} seconds to "
                "10 years from now",
                "expires_at",
            )
        return name, frozenset(scopes), expires_at

    @staticmethod
    def _grace(body: Any) -> int:
        body = _object(body, ("grace_seconds",))
        grace = body.get("grace_seconds", DEFAULT_GRACE_S)
        if not _int_between(grace, 0, MAX_GRACE_S):
            raise ValidationFailed(
                f"grace_seconds must be an integer from 0 to {MAX_GRACE_S} (7 days)",
                "grace_seconds",
            )
        return int(grace)

    @staticmethod
    def _audit(
        message: str, org: str, key_id: str, prefix: str, actor: Actor, **more: object
    ) -> None:
        log.info(
            message,
            extra={"org": org, "key_id": key_id, "key_prefix": prefix, "by": actor.label, **more},
        )


def _replay(found: bytes, idem: Idem) -> Answer:
    record = orjson.loads(found)
    if record.get("fp") != idem.fingerprint:
        raise ValidationFailed(
            "this Idempotency-Key was used with another request; use a new key",
            "Idempotency-Key",
        )
    return Answer(int(record["status"]), dict(record["body"]), replayed=True)


def _object(body: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ValidationFailed("request body must be a JSON object", None)
    if any(name not in allowed for name in body):  # the name is not echoed: request bytes
        raise ValidationFailed(f"unknown field; the fields are: {', '.join(allowed)}", None)
    return body


def _int_between(value: Any, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


__all__ = ["Actor", "Answer", "Idem", "KeyService", "KeyStoreUnavailable", "fingerprint"]
