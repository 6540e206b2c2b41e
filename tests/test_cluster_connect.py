"""A service's start cancelled (Ctrl-C, or a supervisor giving up) while `redis_client.connect` reaches
Redis closes the client it made: its connections stayed open to Redis (the single-Redis client's one
connection, a cluster client's per node), one more at every start that was cancelled, in a process
that goes on (a test harness, a supervisor retrying the start)."""

from __future__ import annotations

import asyncio
import gc

import pytest
from medaid.common.redis_client import connect, sync_client
from medaid.common.redis_server import RedisCluster, RedisServer


def _connected_clients(url: str) -> int:
    r = sync_client(url, timeout_s=5)
    try:
        if hasattr(r, "get_nodes"):
            return sum(int(r.info("clients", target_nodes=n)["connected_clients"]) for n in r.get_nodes())
        return int(r.info("clients")["connected_clients"])
    finally:
        r.close()


async def _cancel_starts(url: str, starts: int) -> None:
    for k in range(starts):
        starting = asyncio.create_task(connect({"redis_url": url}, 4))
        for _ in range(k % 30):  # cancelled at a different point of its handshake each time
            await asyncio.sleep(0)
        starting.cancel()
        try:
            store = await starting
        except asyncio.CancelledError:
            continue
        await store.aclose()
    await asyncio.sleep(0.5)
    gc.collect()
    await asyncio.sleep(0.5)


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
def test_a_cancelled_connect_leaves_no_connection_open(cluster: bool):
    server: RedisServer | RedisCluster = RedisCluster(3) if cluster else RedisServer()
    with server:
        before = _connected_clients(server.url)
        asyncio.run(_cancel_starts(server.url, 60))
        after = _connected_clients(server.url)
    assert after == before, f"{after - before} connection(s) left open by cancelled starts"
