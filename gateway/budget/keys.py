"""The budget store's Redis key layout: the one place in Python that names its keys.

Every key of a project starts with its tag ``<prefix>:{prj:<id>}:``, an org's with
``<prefix>:{org:<id>}:``: the hash tag (in braces) puts all of an owner's keys in one
cluster slot, so each script runs on one node. Under a tag:

    p:<window id>              the project's counter (hash: u0..u3 used, r0..r3 reserved)
    k:<key id>:<window id>     an API key's counter
    u:<digest>:<window id>     an end user's counter (digest: see ``user_part``)
    o:<window id>              an org's counter (under the org's tag)
    rl:rpm  rl:tpm             rate limits (GCRA arrival time, microseconds)
    rl:rpm:k:<key id>  rl:tpm:k:<key id>      per-key rate limits
    rsv                        reservation records (hash: id -> amounts, keys, event)
    rsvexp                     reservation expiries (zset: id -> expiry ms)
    done:<reservation id>      settled marker (a retried settle changes nothing)
    xh:<reservation id>        an expired hold's tombstone (see lua/common.lua)
    ledger                     usage events (stream)
    idem:<digest>              a claimed Idempotency-Key (JSON; gateway.pipeline.idempotency)
    resp:<response id>         a stored Responses answer and its turns (previous_response_id)

Window ids: ``d20261207`` (a UTC day), ``m202612`` (a UTC month), ``all`` (lifetime).

The Lua scripts (``lua/``) mirror this layout: they get the tag and the counter parts
from here (``BudgetStore`` passes them), but compute window ids on Redis time
(``reserve.lua``), append ``:<window id>`` to a counter part, spell ``xh:`` and derive a
tag from its ``rsv`` key (``common.lua``). Change both sides together.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import UTC, datetime

PROJECT = "prj"  # hash tag kind of a project's keys
ORG = "org"  # hash tag kind of an org's keys

PROJECT_COUNTER = "p"
ORG_COUNTER = "o"
RESERVATIONS = "rsv"
RESERVATION_EXPIRIES = "rsvexp"
LEDGER = "ledger"

LIFETIME_ID = "all"


def tag(prefix: str, owner_id: str, kind: str = PROJECT) -> str:
    """The key prefix, hash tag included, of a project's (kind "org": an org's) keys."""
    return f"{prefix}:{{{kind}:{owner_id}}}:"


def key_part(key_id: str) -> str:
    """The counter part of an API key's counters."""
    return "k:" + key_id


def user_part(user: str) -> str:
    """The counter part of an end user's counters: user ids come from clients, so they
    are hashed into a bounded, safe key part."""
    return "u:" + hashlib.sha256(user.encode()).hexdigest()[:24]


def counter_key(tag_: str, part: str, window_id: str) -> str:
    """One counter hash: ``part`` ("p", "k:<key id>", ...) in one window."""
    return f"{tag_}{part}:{window_id}"


def rate_limit_part(per_token: bool, key_id: str | None = None) -> str:
    """A rate limit's key suffix: requests (rpm) or tokens (tpm) a minute, per key or not."""
    base = "rl:tpm" if per_token else "rl:rpm"
    return base if key_id is None else f"{base}:{key_part(key_id)}"


def settled_marker(tag_: str, reservation_id: str) -> str:
    return f"{tag_}done:{reservation_id}"


def tombstone(tag_: str, reservation_id: str) -> str:
    return f"{tag_}xh:{reservation_id}"


def idempotency_record(tag_: str, digest: str) -> str:
    """A claimed Idempotency-Key (digest of the credential and the key), in the project's
    slot (gateway.pipeline.idempotency)."""
    return f"{tag_}idem:{digest}"


def stored_response(tag_: str, response_id: str) -> str:
    """A stored Responses answer and its conversation, for ``previous_response_id``."""
    return f"{tag_}resp:{response_id}"


def readiness_key(prefix: str) -> str:
    """The key /readyz writes to prove the store accepts writes (no hash tag: any slot)."""
    return f"{prefix}:readyz"


def window_ids(now_s: float) -> dict[str, str]:
    """The window ids at ``now_s`` (epoch seconds, UTC), by window name: what
    reserve.lua computes from Redis time (pass Redis TIME here, not the local clock)."""
    day = datetime.fromtimestamp(now_s, UTC)
    return {"day": day.strftime("d%Y%m%d"), "month": day.strftime("m%Y%m"), "lifetime": LIFETIME_ID}


@functools.lru_cache(maxsize=64)  # a handful of window ids a day; strptime is slow
def resets_at(window_id: str) -> str | None:
    """When the window named by ``window_id`` ends (ISO 8601, UTC); None: lifetime."""
    if window_id.startswith("d"):
        start = datetime.strptime(window_id[1:], "%Y%m%d").replace(tzinfo=UTC)
        end = datetime.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)
    elif window_id.startswith("m"):
        year, month = int(window_id[1:5]), int(window_id[5:7])
        end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    else:
        return None
    return end.strftime("%Y-%m-%dT%H:%M:%SZ")
