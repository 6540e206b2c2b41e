"""Lua scripts live in `.lua` files beside the package that uses them; loaded once, run by EVALSHA."""

from __future__ import annotations

from functools import cache
from importlib import resources

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript


@cache
def lua_source(package: str, name: str) -> str:
    """The script's text, after the package's `lua/_prelude.lua` (shared helpers) if there is one."""
    lua_dir = resources.files(package).joinpath("lua")
    body = lua_dir.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    prelude = lua_dir.joinpath("_prelude.lua")
    if prelude.is_file():
        return prelude.read_text(encoding="utf-8") + "\n" + body
    return body


class ScriptSet:
    """Named scripts of one package registered on one client."""

    def __init__(self, client: aioredis.Redis, package: str, names: list[str]) -> None:
        self._scripts: dict[str, AsyncScript] = {
            n: client.register_script(lua_source(package, n)) for n in names
        }

    def __getitem__(self, name: str) -> AsyncScript:
        return self._scripts[name]
