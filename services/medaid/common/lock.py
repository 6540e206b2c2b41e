"""A Redis lock with fencing tokens (redis.io distributed locks + Kleppmann's fencing).

`SET key owner:token NX PX ttl` where token comes from `INCR` on a counter with the same hash
tag, released by a Lua compare-and-delete. A lock alone cannot make a late write safe: a holder
paused past its TTL may wake and write. So every write protected by the lock passes the token,
and the write's Lua script checks `token == GET fence_key` (see `FENCE_CHECK_LUA`): once
another holder has acquired, the stale token is rejected.

An acquire that finds the lock held by its own owner id answers with that owner's token: the
Redis client re-sends a command whose reply a lost connection ate, and the re-sent acquire must
recognise the lock its first run took instead of reporting it busy (and leaving it to expire).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from medaid.common import rpc
from medaid.common.scripts import ScriptSet

# Lua fragment for write scripts: KEYS[fence_idx] is the fence counter, token is ARGV.
FENCE_CHECK_LUA = "tonumber(redis.call('GET', {fence_key}) or '0') == tonumber({token})"


class LockBusy(Exception):
    """Could not acquire within the wait budget."""


@dataclass(frozen=True)
class Lease:
    key: str
    fence_key: str
    owner: str
    token: int

    @property
    def value(self) -> str:
        return f"{self.owner}:{self.token}"


class FencedLocks:
    """Locks named by a resource tag such as `reg:13:{p:<id>}`; keys `<tag>:lock`, `<tag>:fence`."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster, *, owner_prefix: str = "") -> None:
        self._client = client
        self._scripts = ScriptSet(client, "medaid.common", ["lock_acquire", "lock_release", "lock_extend"])
        self._owner_prefix = owner_prefix or f"{os.getpid()}"

    @staticmethod
    def keys(tag: str) -> tuple[str, str]:
        return f"{tag}:lock", f"{tag}:fence"

    def new_owner(self) -> str:
        return f"{self._owner_prefix}-{uuid.uuid4().hex[:12]}"

    async def try_acquire(self, tag: str, ttl_ms: int) -> Lease | None:
        lock_key, fence_key = self.keys(tag)
        owner = self.new_owner()
        ok, value = await self._scripts["lock_acquire"](keys=[lock_key, fence_key], args=[owner, ttl_ms])
        if int(ok) == 1:
            return Lease(lock_key, fence_key, owner, int(value))
        return None

    async def acquire(self, tag: str, ttl_ms: int = 5000, wait_ms: int = 5000) -> Lease:
        """Spin with short jittered sleeps until acquired or `wait_ms` has passed, or sooner: never past
        the deadline of the call being served (`rpc.time_left`), so that its caller hears LockBusy's
        reason (PATIENT_BUSY, FAMILY_BUSY, WALLET_BUSY: busy, resend) rather than a call that did not answer."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + rpc.time_left(wait_ms / 1000)
        delay = 0.001
        while True:
            lease = await self.try_acquire(tag, ttl_ms)
            if lease is not None:
                return lease
            if loop.time() >= deadline:
                raise LockBusy(tag)
            await asyncio.sleep(delay * (0.5 + (uuid.uuid4().int % 1000) / 1000))
            delay = min(delay * 2, 0.02)

    async def release(self, lease: Lease) -> bool:
        return int(await self._scripts["lock_release"](keys=[lease.key], args=[lease.value])) == 1

    async def release_in(self, pipe: Any, lease: Lease) -> None:
        """Queue a release on a pipeline (several settlements finishing together)."""
        await self._scripts["lock_release"](keys=[lease.key], args=[lease.value], client=pipe)

    async def extend(self, lease: Lease, ttl_ms: int) -> bool:
        return int(await self._scripts["lock_extend"](keys=[lease.key], args=[lease.value, ttl_ms])) == 1

    async def current_token(self, tag: str) -> int:
        _, fence_key = self.keys(tag)
        raw = await self._client.get(fence_key)
        return int(raw or 0)


_FENCED_HSET = """
-- KEYS[1] target hash, KEYS[2] fence counter (same hash tag); ARGV[1] token, ARGV[2..] field, value …
if tonumber(redis.call('GET', KEYS[2]) or '0') ~= tonumber(ARGV[1]) then
  return 0
end
for i = 2, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return 1
"""


class FencedWriter:
    """Write a hash only while holding the newest token for its resource."""

    def __init__(self, client: aioredis.Redis | aioredis.RedisCluster) -> None:
        self._script = client.register_script(_FENCED_HSET)

    async def hset(self, lease: Lease, key: str, mapping: dict[str, str | int]) -> bool:
        args: list[str | int] = [lease.token]
        for k, v in mapping.items():
            args += [k, v]
        return int(await self._script(keys=[key, lease.fence_key], args=args)) == 1
