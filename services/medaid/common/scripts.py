"""Lua scripts live in `.lua` files beside the package that uses them; loaded once, run by EVALSHA.

Every script takes all its keys in KEYS under one hash tag, so it runs unchanged on Redis Cluster
(the cluster client refuses a script whose keys hash to different slots before sending it).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript

from medaid.common.fastredis import LeanRedis


@cache
def lua_source(package: str, name: str) -> str:
    """The script's text, after the package's `lua/_prelude.lua` (shared helpers) if there is one."""
    lua_dir = resources.files(package).joinpath("lua")
    body = lua_dir.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    prelude = lua_dir.joinpath("_prelude.lua")
    if prelude.is_file():
        return prelude.read_text(encoding="utf-8") + "\n" + body
    return body


class Script(AsyncScript):
    """`AsyncScript` that can also be queued on a Redis Cluster pipeline (`client=pipe`).

    A cluster pipeline cannot load a script that a node lacks in the middle of its execution, and
    awaiting one resets its queue; so there the script is queued as EVAL with its source (the node
    caches it by SHA, exactly as SCRIPT LOAD would) and the pipeline is returned unawaited."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, source: str) -> None:
        super().__init__(client, source)
        self.source = source  # `script` as text (redis-py types it as any string-like)

    async def __call__(self, keys: Sequence[Any] | None = None, args: Iterable[Any] | None = None,
                       client: Any = None) -> Any:
        if isinstance(client, (ClusterPipeline, Pipeline)):
            # On a plain pipeline too: EVAL with the source spares the SCRIPT EXISTS round trip that
            # redis-py sends before every pipeline holding scripts (Redis hashes the source to its cache).
            keys = list(keys or [])
            return client.eval(self.source, len(keys), *keys, *(args or []))
        target = client if client is not None else self.registered_client
        if isinstance(target, aioredis.RedisCluster):
            # redis-py answers a NOSCRIPT by loading the script on every master: with one master down,
            # every script of every key would fail. EVAL goes only to the master of the keys' slot.
            keys = list(keys or [])
            return await target.eval(self.source, len(keys), *keys, *(args or []))
        return await super().__call__(keys, args, client)


def register(client: aioredis.Redis | aioredis.RedisCluster, source: str) -> Script:
    return Script(client, source)


class ScriptSet:
    """Named scripts of one package registered on one client."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, package: str, names: list[str]) -> None:
        self._scripts: dict[str, Script] = {n: register(client, lua_source(package, n)) for n in names}

    def __getitem__(self, name: str) -> Script:
        return self._scripts[name]

    async def run_many(self, name: str, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run the script once per (keys, args) in one round trip (a pipeline), replies in order; the
        first error reply is raised. On the lean single-Redis client this skips building a pipeline."""
        script = self._scripts[name]
        client = script.registered_client
        if isinstance(client, LeanRedis):
            return await client.run_scripts(script.source, calls)
        async with client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                await script(keys=keys, args=args, client=pipe)
            return await pipe.execute()

    async def run_each(self, calls: Sequence[tuple[str, Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run named scripts (name, keys, args), of one script or several, in one round trip (a
        pipeline; on a cluster, one per node), in order; each reply in its place, an error reply (a
        RedisError) returned there, not raised. A failure of the round trip itself is raised."""
        if not calls:
            return []
        client = self._scripts[calls[0][0]].registered_client
        if isinstance(client, LeanRedis):
            return await client.eval_many([(self._scripts[name].source, keys, args) for name, keys, args in calls])
        async with client.pipeline(transaction=False) as pipe:
            for name, keys, args in calls:
                await self._scripts[name](keys=keys, args=args, client=pipe)
            return await pipe.execute(raise_on_error=False)
