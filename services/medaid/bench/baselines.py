"""The baselines a bench run measures beside its phases, on the same machine in the same run: a gRPC
echo (what one call costs with nothing behind it) and a raw Redis Lua debit loop."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import grpc
import redis.asyncio as aioredis

from medaid.bench.population import DEADLINE_S, REDIS_TIMEOUT_S
from medaid.bench.stats import OpStats
from medaid.common.redis_client import client as redis_client
from medaid.common.redis_client import is_cluster_url

if TYPE_CHECKING:
    from medaid.bench.run import Harness


async def echo(h: Harness, address: str, duration_s: float) -> dict[str, Any]:
    """The gRPC echo baseline: the same closed loop, channels and payload size against a server that
    does nothing, so a phase's rate is read as a ratio to it."""
    chans = [h._chan(address, secure=False) for _ in range(h.cfg.channels)]
    calls: list[grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]] = [
        ch.unary_unary("/medaid.bench.Echo/Echo") for ch in chans]
    st = OpStats("echo")
    payload = b"x" * 200

    async def worker(w: int) -> None:
        t0 = time.perf_counter()
        await calls[w % len(calls)](payload, timeout=DEADLINE_S)
        st.record((time.perf_counter() - t0) * 1000)

    elapsed = await h.closed_loop("echo", worker, st, duration_s)
    h._eol()
    return st.summary(elapsed)


async def redis_lua(h: Harness, duration_s: float) -> dict[str, Any]:
    """The raw Redis baseline: a one-key Lua debit per call, as fast as the store goes."""
    client = (redis_client(h.redis_url, h.cfg.concurrency) if is_cluster_url(h.redis_url)
              else aioredis.Redis.from_url(h.redis_url, max_connections=h.cfg.concurrency,
                                          socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S))
    script = client.register_script(
        "local b = tonumber(redis.call('HGET', KEYS[1], 'bal') or '0') "
        "if b < tonumber(ARGV[1]) then return -1 end "
        "return redis.call('HINCRBY', KEYS[1], 'bal', -ARGV[1])")
    for i in range(h.cfg.concurrency):
        await client.hset(f"bench:{{lua:{i}}}", "bal", 10**12)
    st = OpStats("redis_lua")

    async def worker(w: int) -> None:
        t0 = time.perf_counter()
        await script(keys=[f"bench:{{lua:{w}}}"], args=[1])
        st.record((time.perf_counter() - t0) * 1000)

    elapsed = await h.closed_loop("redis", worker, st, duration_s)
    h._eol()
    for i in range(h.cfg.concurrency):
        await client.delete(f"bench:{{lua:{i}}}")
    await client.aclose()
    return st.summary(elapsed)
