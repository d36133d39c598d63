"""The budget Lua scripts, read from the package's ``lua/`` directory (shipped as
package data): each is ``common.lua`` (Redis scripts cannot import) plus its own file."""

from __future__ import annotations

from importlib import resources


def _script(name: str) -> str:
    lua = resources.files("gateway.budget") / "lua"
    return (lua / "common.lua").read_text() + "\n" + (lua / name).read_text()


RESERVE_LUA = _script("reserve.lua")
SETTLE_LUA = _script("settle.lua")
EXTEND_LUA = _script("extend.lua")
DRAIN_LUA = _script("drain.lua")
ALL = (RESERVE_LUA, SETTLE_LUA, EXTEND_LUA, DRAIN_LUA)
