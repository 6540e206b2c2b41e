"""A Redis Cluster whose nodes come back at other addresses while the services run.

A node restarted at another address (a machine replaced, a VM or pod given a new IP) announces it to
the cluster, and the slot map lists it there: the services' cluster client, meeting the old address
refused, reloads the map and follows. When every node comes back at a new address at once (a machine
room's power cut, every pod rescheduled), the addresses the client last learnt all refuse; the URL's
seeds, host names that resolve to the new addresses, are then the only way back in. A fresh process
finds the cluster through them, and a running one must too, without a restart.

Addresses here are loopback IPs (127.0.0.2, 127.0.0.3): every node listens on 127.0.0.1 too, and the
URL names it `localhost`, a host name that follows the nodes as a DNS name would.
"""

from __future__ import annotations

import asyncio
import time

import redis
from medaid.common.redis_client import BoundedRedisCluster, client
from medaid.common.redis_server import RedisCluster


def _move(cluster: RedisCluster, ip: str) -> None:
    """Restart every node listening on 127.0.0.1 and `ip`, announcing `ip` to the cluster."""
    for node in cluster.nodes:
        node.stop()
        kept: list[str] = []
        args = iter(node.extra)
        for arg in args:
            if arg == "--bind":
                next(args)
                next(args)
            elif arg == "--cluster-announce-ip":
                next(args)
            else:
                kept.append(arg)
        node.extra = [*kept, "--bind", "127.0.0.1", ip, "--cluster-announce-ip", ip]
    cluster.start()


def _meet_at(cluster: RedisCluster, ip: str, timeout: float = 30.0) -> None:
    """The nodes knew each other at the old addresses only: the operator introduces them again (CLUSTER
    MEET), and every node's slot map lists only the new addresses."""
    for node in cluster.nodes:
        c = node.connection(socket_timeout=5)
        try:
            for other in cluster.nodes:
                if other is not node:
                    c.execute_command("CLUSTER", "MEET", ip, other.port)
        finally:
            c.close()
    deadline = time.monotonic() + timeout
    while True:
        listed = set()
        for node in cluster.nodes:
            c = node.connection(socket_timeout=5)
            try:
                listed |= {row[2][0].decode() for row in c.execute_command("CLUSTER", "SLOTS")}
            finally:
                c.close()
        if listed == {ip}:
            return
        assert time.monotonic() < deadline, f"the nodes still list {listed}"
        time.sleep(0.1)


def test_a_running_client_finds_a_cluster_whose_every_node_moved_through_the_url_seeds():
    with RedisCluster(3, node_timeout_ms=15_000) as cluster:
        _move(cluster, "127.0.0.2")
        url = "redis+cluster://" + ",".join(f"localhost:{port}" for port in cluster.ports)

        async def run() -> list[object]:
            store = client(url, 8, timeout_s=1.0)
            assert isinstance(store, BoundedRedisCluster)
            try:
                await store.initialize()
                assert {n.host for n in store.get_nodes()} == {"127.0.0.2"}  # the map's addresses, not the URL's
                await store.set("moves:{a}", 1)
                _move(cluster, "127.0.0.3")
                _meet_at(cluster, "127.0.0.3")
                fresh = client(url, 8, timeout_s=1.0)
                try:
                    assert await fresh.incr("moves:{a}") == 2  # a new process finds it through the seeds
                finally:
                    await fresh.aclose()
                answers: list[object] = []
                for _ in range(3):  # the first call may meet an old address; those after it may not
                    try:
                        answers.append(await store.incr("moves:{a}"))
                    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
                        answers.append(type(exc).__name__)
                return answers
            finally:
                await store.aclose()

        answers = asyncio.run(run())
        counted = [a for a in answers if isinstance(a, int)]
        assert all(isinstance(a, int) for a in answers[1:]) and counted == list(range(3, 3 + len(counted))), answers
