"""API-managed key records (gateway.control.records): an id is its prefix's random
part, a stored record round-trips, a record that is not one is refused, and the public
views never carry a digest."""

from __future__ import annotations

import orjson
import pytest

from gateway.config import ApiKeyEntry, KeyRecord
from gateway.control.records import ApiKey, api_view, key_id_for, prefix_for, yaml_view
from gateway.credentials import generate_key


def _key(**over: object) -> ApiKey:
    new = generate_key()
    fields: dict[str, object] = {
        "id": key_id_for(new.prefix),
        "org": "acme",
        "name": "ci",
        "prefix": new.prefix,
        "sha256": new.sha256,
        "scopes": frozenset({"read", "write"}),
        "created_at": 1_700_000_000,
    }
    fields.update(over)
    return ApiKey(**fields)  # type: ignore[arg-type]


def test_an_id_and_its_prefix_name_each_other() -> None:
    new = generate_key()
    key_id = key_id_for(new.prefix)
    assert key_id == "ak_" + new.secret[8:16]
    assert prefix_for(key_id) == new.prefix
    for not_an_id in ("key_main", "ak_short", "ak_" + "x" * 9, "ak_abc-1234", "AK_abcd1234"):
        assert prefix_for(not_an_id) is None


def test_a_record_round_trips_and_says_its_status() -> None:
    key = _key(expires_at=1_700_000_100, rotated_from="ak_00000000")
    assert ApiKey.from_json(key.to_json()) == key
    assert key.status(1_700_000_099) == "active"
    assert key.status(1_700_000_100) == "expired"
    revoked = key.revoked(1_700_000_050)
    assert revoked.status(1_700_000_060) == "revoked"
    assert revoked.revoked(1_700_000_070).revoked_at == 1_700_000_050  # the first time stays
    assert revoked.ends_at() == 1_700_000_050
    assert _key().ends_at() is None


@pytest.mark.parametrize(
    "change",
    [
        {"id": "ak_zzzzzzzz"},  # not its prefix's id
        {"prefix": "kt_live_short"},
        {"scopes": ["owner"]},
        {"scopes": "read"},
        {"created_at": "yesterday"},
        {"created_at": True},
        {"sha256": None},
    ],
)
def test_a_record_that_is_not_one_is_refused(change: dict[str, object]) -> None:
    data = orjson.loads(_key().to_json())
    data.update(change)
    with pytest.raises(ValueError, match="not an API key record"):
        ApiKey.from_json(orjson.dumps(data))
    with pytest.raises(ValueError, match="not an API key record"):
        ApiKey.from_json(b"{not json")


def test_views_never_show_a_digest() -> None:
    key = _key()
    view = api_view(key, 1_700_000_010, 1_700_000_020)
    assert view["source"] == "api"
    assert view["read_only"] is False
    assert view["last_used_at"] == 1_700_000_010
    assert key.sha256 not in orjson.dumps(view).decode()
    entry = ApiKeyEntry(id="key_main", prefix=key.prefix, sha256=key.sha256, revoked=True)
    yaml = yaml_view(KeyRecord("acme", entry), None)
    assert yaml["source"] == "yaml"
    assert yaml["read_only"] is True
    assert yaml["status"] == "revoked"
    assert yaml["scopes"] == ["write"]
    assert key.sha256 not in orjson.dumps(yaml).decode()
