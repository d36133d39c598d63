"""Admin keys for the control-plane tests: one ``admin`` key per org of the harness's
config, added to its gateway.yaml (before a gateway loads it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.credentials import generate_key
from tests.support.harness import Credentials, edit_gateway_yaml


@dataclass
class Admins:
    acme: str  # org acme, id key_admin, scopes admin (a key of the config files)
    globex: str  # org globex, id key_gx_admin, scopes admin


def add_admin_keys(creds: Credentials) -> Admins:
    acme, globex = generate_key(), generate_key()

    def change(data: dict[str, Any]) -> None:
        for org, key, key_id in (("acme", acme, "key_admin"), ("globex", globex, "key_gx_admin")):
            data["orgs"][org]["api_keys"].append(
                {"id": key_id, "prefix": key.prefix, "sha256": key.sha256, "scopes": ["admin"]}
            )

    edit_gateway_yaml(creds, change)
    return Admins(acme.secret, globex.secret)
