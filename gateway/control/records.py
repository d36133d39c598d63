"""An API-managed key as stored in Redis, and the public view of every key (pure).

Like a key of the YAML files, a stored key is its public prefix and the SHA-256 of its
secret, never the secret. Its id is its prefix's random part after ``ak_``
(``kt_live_AbCd1234`` is ``ak_AbCd1234``): the auth path finds a key by prefix and a
session token names the key that minted it by id, and either is then one lookup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

import orjson

from gateway.config import KeyRecord
from gateway.credentials import KEY_PREFIX, PUBLIC_PREFIX_LEN

ID_PREFIX = "ak_"
_ID = re.compile(r"ak_[0-9A-Za-z]{8}")
_PREFIX = re.compile(r"kt_live_[0-9A-Za-z]{8}")
SCOPES = ("read", "write", "admin")

Status = Literal["active", "revoked", "expired"]


def key_id_for(prefix: str) -> str:
    """The id of the API-managed key with this public prefix."""
    return ID_PREFIX + prefix[len(KEY_PREFIX) : PUBLIC_PREFIX_LEN]


def prefix_for(key_id: str) -> str | None:
    """The public prefix of an API-managed key id; None if it cannot be one."""
    if not _ID.fullmatch(key_id):
        return None
    return KEY_PREFIX + key_id[len(ID_PREFIX) :]


def is_api_key_id(key_id: str) -> bool:
    return _ID.fullmatch(key_id) is not None


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One API-managed key. Times are unix seconds."""

    id: str
    org: str
    name: str
    prefix: str
    sha256: str
    scopes: frozenset[str]
    created_at: int
    expires_at: int | None = None  # a rotated key's end of grace too
    revoked_at: int | None = None
    rotated_from: str | None = None  # the key this one replaced
    replaced_by: str | None = None  # the key that replaced this one (rotation)

    def status(self, now: float) -> Status:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"

    def revoked(self, at: int) -> ApiKey:
        return self if self.revoked_at is not None else replace(self, revoked_at=at)

    def ends_at(self) -> int | None:
        """When the key stopped (or will stop) working, if it does."""
        if self.revoked_at is not None:
            return self.revoked_at
        return self.expires_at

    def to_json(self) -> bytes:
        return orjson.dumps(
            {
                "id": self.id,
                "org": self.org,
                "name": self.name,
                "prefix": self.prefix,
                "sha256": self.sha256,
                "scopes": sorted(self.scopes),
                "created_at": self.created_at,
                "expires_at": self.expires_at,
                "revoked_at": self.revoked_at,
                "rotated_from": self.rotated_from,
                "replaced_by": self.replaced_by,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> ApiKey:
        """A stored record; ValueError if it is not one (a record written by hand)."""
        try:
            data = orjson.loads(raw)
            key = cls(
                id=_text(data["id"]),
                org=_text(data["org"]),
                name=str(data.get("name") or ""),
                prefix=_text(data["prefix"]),
                sha256=_text(data["sha256"]),
                scopes=frozenset(_text(s) for s in data["scopes"]),
                created_at=_int(data["created_at"]),
                expires_at=_opt_int(data.get("expires_at")),
                revoked_at=_opt_int(data.get("revoked_at")),
                rotated_from=_opt_text(data.get("rotated_from")),
                replaced_by=_opt_text(data.get("replaced_by")),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError("not an API key record") from exc
        if not _PREFIX.fullmatch(key.prefix) or key.id != key_id_for(key.prefix):
            raise ValueError("not an API key record")
        if not key.scopes <= frozenset(SCOPES):
            raise ValueError("not an API key record")
        return key


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _opt_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError("expected a number")
    return int(value)


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


# ------------------------------------------------------------------------- public views


def api_view(key: ApiKey, last_used: int | None, now: float) -> dict[str, Any]:
    """What the API and the CLI show of an API-managed key (never its digest)."""
    return {
        "id": key.id,
        "object": "api_key",
        "source": "api",
        "read_only": False,
        "org": key.org,
        "name": key.name,
        "prefix": key.prefix,
        "scopes": sorted(key.scopes),
        "status": key.status(now),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "last_used_at": last_used,
        "rotated_from": key.rotated_from,
        "replaced_by": key.replaced_by,
    }


def yaml_view(record: KeyRecord, last_used: int | None) -> dict[str, Any]:
    """A key of the config files, shown read-only (it changes with the files)."""
    entry = record.entry
    return {
        "id": entry.id,
        "object": "api_key",
        "source": "yaml",
        "read_only": True,
        "org": record.org,
        "name": entry.id,
        "prefix": entry.prefix,
        "scopes": sorted(entry.scopes),
        "status": "revoked" if entry.revoked else "active",
        "created_at": None,
        "expires_at": None,
        "revoked_at": None,
        "last_used_at": last_used,
        "rotated_from": None,
        "replaced_by": None,
    }
