"""The services' Redis clients: `client(url)` gives a single-Redis client (`LeanRedis` on a plain
`redis://` URL) or, for a `redis+cluster://host:port[,host:port…]` URL (`rediss+cluster://…` for
TLS), a cluster client; `connect(cfg)` builds one from a service's options (credentials, timeout)
and checks it before the service serves. Tests and `make run` start the servers themselves with
medaid.common.redis_server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import hiredis
import redis
import redis.asyncio
import redis.asyncio.client
import redis.asyncio.cluster
import redis.cluster

from medaid.common import config, rpc, store_deadline
from medaid.common.cluster_client import BoundedRedisCluster, GuardedConnection
from medaid.common.fastredis import LeanRedis
from medaid.common.fastredis_wire import KEEPALIVE
from medaid.common.replica_wait import (
    DEFAULT_WAIT_TIMEOUT_MS,
    REPLICA_WAIT_AUTO,
    ReplicaWait,
)

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


def check_url(url: str) -> None:
    """Raise ValueError unless the client reads `url` as written (the redis_url option's check at start):
    a port that is a port (redis-py takes 0 as "none given", 6379), a database that is a number (it
    takes `/abc` as database 0), query options of their type, a socket path, cluster seeds."""
    from redis.asyncio.connection import parse_url

    if is_cluster_url(url):
        url, seeds = cluster_seeds(url)
        for _, port in seeds:
            if not 0 < port <= 65535:
                raise ValueError(f"{port} is not a port")
    parts = urlsplit(url)  # ValueError: a broken [IPv6] host
    if parts.port == 0:  # ValueError: a port that is no number or out of range
        raise ValueError("0 is not a port")
    parse_url(url)  # ValueError: a query option that is not of its type
    if parts.scheme.lower() == "unix":
        if not parts.path:
            raise ValueError("no socket path: unix:///path/to/redis.sock")
    elif parts.path not in ("", "/") and not parts.path[1:].isdigit():
        raise ValueError(f"the database {unquote(parts.path[1:])!r} is not a number")


async def barrier(pipe: Any) -> list[Any]:
    """Have what a non-transactional pipeline holds so far applied before what is queued on it next.

    One Redis applies a pipeline's commands in order, so there nothing is sent here. A cluster sends
    each master its share at once: the masters apply theirs in no order between them, and one that
    fails (down, failing over) fails only its share while the others' stands. An index that must be
    there before an effect — the entry a recovery loop finds a flow by, the listing a record is found
    by — could then be missing while the effect queued after it was applied. So on a cluster what is
    queued so far is sent now, and an error is raised before anything after it is sent. Returns the
    replies of what was sent now (none on one Redis: they come with the pipeline's `execute`), so
    that `[*await barrier(p), *await p.execute()]` is every reply, in order, on either."""
    if isinstance(pipe, redis.asyncio.cluster.ClusterPipeline):
        return list(await pipe.execute())
    return []


def sync_client(url: str, timeout_s: float | None = None) -> redis.Redis | redis.cluster.RedisCluster:
    """A synchronous client for tools and tests (conservation checks, snapshots): cluster or single.
    `timeout_s` bounds connecting and each reply (None: wait as long as the server takes)."""
    if is_cluster_url(url):
        first, seeds = cluster_seeds(url)
        return redis.cluster.RedisCluster.from_url(
            first, startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in seeds],
            socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)


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
    # asyncio.timeout rather than wait_for: on Python 3.11 wait_for can swallow a cancellation that
    # arrives as the ping answers, and the watchdog looping on it would then never stop.
    async with asyncio.timeout(timeout_s):
        await call


class HiredisPackConnection(GuardedConnection):
    """redis-py's asyncio connection packs commands in pure Python (~50 µs for a settlement script's
    arguments); hiredis packs the same RESP bytes in C, as redis-py's synchronous client does."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str) and " " in args[0]:  # "SCRIPT LOAD" → "SCRIPT", "LOAD"
            args = (*args[0].split(), *args[1:])
        for a in args:
            if a is None or isinstance(a, bool):
                raise redis.exceptions.DataError(f"Invalid input of type: {type(a).__name__!r}")
        return [hiredis.pack_command(args)]


class PooledRedis(redis.asyncio.Redis):
    """redis-py's pooled asyncio client (a `rediss://` URL, or MEDAID_REDIS_CLIENT=redis-py) whose
    commands and pipelines end within the caller's deadline (common/store_deadline.py)."""

    def __init__(self, *, timeout_s: float | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout_s = timeout_s

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        left = rpc.store_time_left(self.timeout_s)
        if left is None:
            return await super().execute_command(*args, **options)
        return await store_deadline.within(left, super().execute_command(*args, **options))

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> PooledPipeline:
        return PooledPipeline(self, transaction, shard_hint)


class PooledPipeline(redis.asyncio.client.Pipeline):
    def __init__(self, client: PooledRedis, transaction: bool, shard_hint: str | None) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, transaction, shard_hint)
        self.timeout_s = client.timeout_s

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        left = rpc.store_time_left(self.timeout_s)
        if left is None:
            return await super().execute(raise_on_error)
        return await store_deadline.within(left, super().execute(raise_on_error))


Store = redis.asyncio.Redis | redis.asyncio.RedisCluster
DEFAULT_TIMEOUT_S = 2.0
# TCP keepalive of the redis-py clients (the lean client sets the same, fastredis_wire.KEEPALIVE).
KEEPALIVE_OPTIONS = {getattr(socket, k): v for k, v in KEEPALIVE.items() if hasattr(socket, k)}


def client(url: str, max_connections: int = 256, *, timeout_s: float | None = DEFAULT_TIMEOUT_S,
           username: str | None = None, password: str | None = None, replica_wait: ReplicaWait | None = None,
           ) -> redis.asyncio.Redis | redis.asyncio.RedisCluster:
    """The services' Redis client: a Redis Cluster client for a `redis+cluster://h1:p1,h2:p2` (or
    `rediss+cluster://`) URL, else a single-Redis client.

    A pooled connection that went stale (Redis restarted) fails on send; one retry on a fresh
    connection is safe because every money-moving script is idempotent by its
    request/settlement/transfer id (a retried script finds its own marker). On a cluster the same
    retry also refreshes the slot map (a node restarted or moved).

    `timeout_s` bounds every command and connect (None: no limit), cut to what the deadline of the
    call being served leaves (common/store_deadline.py): a frozen Redis gives
    `redis.exceptions.TimeoutError`, which the services answer as UNAVAILABLE; a timeout is not
    retried on a single Redis (it would only double the wait). TCP keepalive is on. `username` /
    `password` sign in (AUTH) on every connection, every cluster node's too.

    On a cluster, `replica_wait` (default: `auto`, 1,000 ms) says how many replicas confirm each write
    before it answers (`ReplicaConfirmedConnection`); a single Redis ignores it."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff

    auth: dict[str, Any] = {}
    if password is not None:
        auth["password"] = password
    if username:
        auth["username"] = username
    sockets: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if not url.lower().startswith("unix://"):  # TCP keepalive is TCP's: a unix socket's connection refuses it
        sockets |= {"socket_keepalive": True, "socket_keepalive_options": KEEPALIVE_OPTIONS}
    if is_cluster_url(url):
        first, seeds = cluster_seeds(url)
        retry = Retry(ExponentialBackoff(cap=0.2, base=0.01), 2)
        # The servers run with cluster-require-full-coverage no, so that a master that is down stops only
        # its own slots; the client must not refuse the whole slot map while its replica takes over
        # (redis-py's default raises RedisClusterException for every command until then).
        return BoundedRedisCluster.from_url(
            first, startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in seeds],
            max_in_flight=max_connections, retry=retry, health_check_interval=15, require_full_coverage=False,
            replica_wait=replica_wait, **sockets, **auth)
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
    return PooledRedis(connection_pool=pool, timeout_s=timeout_s)


_PASSWORD_FILE = "--redis-password-file (MEDAID_REDIS_PASSWORD_FILE)"


def read_password_file(path: str) -> str:
    """The password in a secret file (a Kubernetes Secret or compose secret mounted as a file): its
    text without the trailing newline that `echo` or an editor leaves."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise config.Unusable(f"{_PASSWORD_FILE} {path!r} cannot be read: {exc.strerror}") from None
    password = text.rstrip("\r\n")
    if not password:
        raise config.Unusable(f"{_PASSWORD_FILE} {path!r} is empty")
    return password


def client_from_config(cfg: Mapping[str, str], max_connections: int) -> Store:
    """`client` with the service's options: redis_url, redis_username, redis_password_file, redis_timeout_ms,
    redis_wait_replicas, redis_wait_timeout_ms."""
    url = cfg["redis_url"]
    password = None
    if cfg.get("redis_password_file"):
        if urlsplit(url).password is not None:
            raise config.Unusable(f"the Redis password is given twice, in --redis-url (MEDAID_REDIS_URL) and in "
                                  f"{_PASSWORD_FILE}: keep it in the file")
        password = read_password_file(cfg["redis_password_file"])
    timeout_ms = int(cfg.get("redis_timeout_ms") or 0)
    wait = ReplicaWait(str(cfg.get("redis_wait_replicas") or REPLICA_WAIT_AUTO),
                       int(cfg.get("redis_wait_timeout_ms") or DEFAULT_WAIT_TIMEOUT_MS))
    if is_cluster_url(url) and 0 < timeout_ms <= wait.timeout_ms:
        raise config.Unusable(f"--redis-wait-timeout-ms (MEDAID_REDIS_WAIT_TIMEOUT_MS) {wait.timeout_ms} must be below "
                              f"--redis-timeout-ms (MEDAID_REDIS_TIMEOUT_MS) {timeout_ms}: a write's WAIT for its "
                              "replicas is part of the command's answer")
    return client(url, max_connections, timeout_s=timeout_ms / 1000 if timeout_ms > 0 else None,
                  username=cfg.get("redis_username") or None, password=password, replica_wait=wait)


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
        async with asyncio.timeout(timeout_s * 3):  # not wait_for: see `ping`
            if isinstance(store, redis.asyncio.RedisCluster):
                await store.initialize()
            await ping(store, timeout_s)
    except asyncio.CancelledError:  # the start was stopped: its connections go with it
        with contextlib.suppress(Exception):
            await store.aclose()
        raise
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
