"""The services' Redis clients: `client(url)` gives a single-Redis client (`LeanRedis` on a plain
`redis://` URL) or, for a `redis+cluster://host:port[,host:port…]` URL (`rediss+cluster://…` for
TLS), a cluster client; `connect(cfg)` builds one from a service's options (credentials, timeout)
and checks it before the service serves. Tests and `make run` start the servers themselves with
medaid.common.redis_server."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import unquote, urlsplit

import hiredis
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.cluster import PRIMARY, get_node_name

from medaid.common import config, metrics
from medaid.common.cluster_transaction import ClusterTransaction
from medaid.common.fastredis import KEEPALIVE, LeanRedis
from medaid.common.replica_wait import (
    DEFAULT_WAIT_TIMEOUT_MS,
    REPLICA_MAP_REFRESH_S,
    REPLICA_WAIT_AUTO,
    ReplicaWait,
    replica_confirmed,
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


# Set while a bounded cluster client holds one of its in-flight slots, so that a command issued
# from inside that operation (a redirect, a topology refresh) does not wait for a second one.
_HOLDING: contextvars.ContextVar[object | None] = contextvars.ContextVar("medaid_cluster_slot", default=None)

_T = TypeVar("_T")
# Set while a command or pipeline of the services' cluster client executes (BoundedRedisCluster.aclose).
_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("medaid_cluster_call", default=False)


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
            t0 = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except redis.exceptions.ResponseError:  # Redis answered (WRONGTYPE, a script's error): a round trip
                metrics.redis_roundtrip(time.perf_counter() - t0)
                raise
            except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:  # no answer
                metrics.redis_error(exc)
                raise
            finally:
                _HOLDING.reset(token)
            # A command or a whole pipeline (all its nodes), redirects and retries included.
            metrics.redis_roundtrip(time.perf_counter() - t0)
            return result


class PipelineStrategy(redis.asyncio.cluster.PipelineStrategy):
    """redis-py's non-transactional cluster pipeline, retried only on the errors its client retries
    (`BoundedRedisCluster.ERRORS_ALLOW_RETRY`): redis-py's retries on `RedisCluster`'s own list, which
    holds TimeoutError, so a pipeline meeting a frozen master waited the command timeout three times
    (and 0.25 s between), past the callers' deadlines, where a single command waits it once."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        if not self._command_queue:
            return []
        client = self._pipe.cluster_client
        try:
            retries = client.retry.get_retries()
            while True:
                try:
                    if client._initialize:
                        await client.initialize()
                    return await self._execute(client, self._command_queue, raise_on_error=raise_on_error,
                                               allow_redirections=allow_redirections)
                except type(client).ERRORS_ALLOW_RETRY:
                    if retries <= 0:
                        raise
                    retries -= 1
                    await client.aclose()  # BoundedRedisCluster.aclose: reload the slot map, close nothing
                    await asyncio.sleep(0.25)
        finally:
            await self.reset()


class ClusterPipeline(redis.asyncio.cluster.ClusterPipeline):
    def __init__(self, client: BoundedRedisCluster, transaction: bool | None = None) -> None:
        super().__init__(client, transaction)
        self._execution_strategy = ClusterTransaction(self) if transaction else PipelineStrategy(self)

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = cast(BoundedRedisCluster, self.cluster_client)  # the only client that makes this pipeline
        client.learn_replicas_now_and_then()
        token = _IN_CALL.set(True)
        try:
            return await client.slots.run(super().execute, raise_on_error, allow_redirections)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            client._note_exception(exc)
            raise
        finally:
            _IN_CALL.reset(token)


class BoundedRedisCluster(redis.asyncio.RedisCluster):
    """`redis.asyncio.RedisCluster` whose callers wait for a connection instead of failing (see `_Slots`),
    whose failures stay with the call that met them (see `initialize`, `aclose`), and whose writes are
    confirmed on a replica before they answer (see `ReplicaConfirmedConnection`)."""

    # A command that timed out is not sent again: a frozen node would only make the caller wait the
    # socket timeout once per attempt, past its deadline. Connection errors (a node gone, a failover)
    # still reload the slot map and retry.
    ERRORS_ALLOW_RETRY = (redis.exceptions.ConnectionError, redis.exceptions.ClusterDownError,  # type: ignore[assignment]
                          redis.exceptions.SlotNotCoveredError)

    def __init__(self, *, max_in_flight: int = 256, replica_wait: ReplicaWait | None = None, **kwargs: Any) -> None:
        # A little headroom per node for topology refreshes made while every slot is taken.
        super().__init__(max_connections=max_in_flight + 8, **kwargs)
        self.replica_wait = replica_wait or ReplicaWait()
        # redis-py takes no connection class for a cluster: every node, the startup nodes and those the
        # slot map brings, gets the guarded one (GuardedConnection), confirming its writes on a replica,
        # through the shared node arguments.
        node_kwargs = self.nodes_manager.connection_kwargs
        node_kwargs["connection_class"] = replica_confirmed(guarded(node_kwargs["connection_class"]),
                                                            self.replica_wait)
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = node_kwargs["connection_class"]
        self.slots = _Slots(max_in_flight)
        self._init_task: asyncio.Future[Any] | None = None
        self._failed_last: str | None = None  # the node ("host:port") a command last timed out or failed on
        self._replicas_task: asyncio.Future[Any] | None = None

    async def initialize(self, *args: Any, **kwargs: Any) -> BoundedRedisCluster:
        """Load the slot map, once, whoever asks. redis-py closes every node's connections when its
        initialisation ends in any exception, also the connections other calls are using at that
        moment: those then fail (and, while a master fails over, the reloads they trigger fail too,
        so healthy slots stop serving until the failover ends). Here a failed reload only leaves the
        map to be loaded again by the next call. And a caller cancelled by its deadline (or a health
        ping's timeout) must not cancel it for everyone: it runs as a task of its own, which callers
        await shielded."""
        self._note_failure(kwargs.get("last_failed_node_name"))
        if not self._initialize:
            return self
        task = self._init_task
        if task is None or task.done():
            task = self._init_task = asyncio.ensure_future(self._load_slot_map(*args, **kwargs))
        await asyncio.shield(task)
        return self

    def _note_failure(self, node_name: str | None) -> None:
        """Remember the node a command last timed out or failed on, for the slot-map reloads to ask it
        last (`_load_slot_map`)."""
        if node_name:
            self._failed_last = node_name

    def _note_exception(self, exc: BaseException) -> None:
        # redis-py names the node on the exception of a single command (`last_failed_node_name`, what its
        # own retry passes to `initialize`); a MULTI/EXEC's carries the connection it failed on.
        name = getattr(exc, "last_failed_node_name", None)
        if name is None and isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            where = getattr(exc, "connection", None)
            host, port = getattr(where, "host", None), getattr(where, "port", None)
            if host and port:
                name = get_node_name(host, port)
        self._note_failure(name)

    async def _load_slot_map(self, *args: Any, **kwargs: Any) -> None:
        """redis-py's `RedisCluster.initialize` (redis 8), without closing every connection on failure,
        and reading the command table from the first master that answers: redis-py asks only the
        default node, the master of slot 0 more often than not, so while that master was down every
        reload failed and every call with it, the other masters' keys included.

        The node a command last timed out or failed on is asked last, for the map and for the command
        table: redis-py asks the nodes in a random order unless its caller names that node, which only
        its own retry after a connection error does. After a timeout on a frozen master the next call
        reloads the map, and one time in three (of three masters) it asked the frozen one first: every
        call waiting on that reload, those for the other masters' slots included, waited a whole
        timeout before another node was asked."""
        if not self._initialize:
            return
        kwargs["last_failed_node_name"] = self._failed_last
        await self.nodes_manager.initialize(*args, **kwargs)
        default = self.nodes_manager.default_node
        masters = [default, *(n for n in self.nodes_manager.get_nodes_by_server_type(PRIMARY) if n is not default)]
        masters.sort(key=lambda n: n.name == self._failed_last)  # stable: the default stays first otherwise
        for i, node in enumerate(masters):
            try:
                await self.commands_parser.initialize(node)
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if i == len(masters) - 1:
                    raise
        self.nodes_manager.default_node = node  # keyless commands go to a master that answers
        self.replica_wait.learn(self.nodes_manager, self.commands_parser.commands)
        self._initialize = False

    def learn_replicas_now_and_then(self) -> None:
        """While writes wait for replicas, reload the slot map in the background every so often (and soon
        after a write was not confirmed), to learn which masters have a replica now (`ReplicaWait`)."""
        wait = self.replica_wait
        if not wait.wanted or self._initialize or time.monotonic() < wait.refresh_at:
            return
        if self._replicas_task is not None and not self._replicas_task.done():
            return
        wait.refresh_at = time.monotonic() + REPLICA_MAP_REFRESH_S
        self._replicas_task = asyncio.ensure_future(self._learn_replicas())

    async def _learn_replicas(self) -> None:
        try:
            await self.nodes_manager.initialize(last_failed_node_name=self._failed_last)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
            self.replica_wait.unconfirmed()  # try again soon; the calls meet the failure themselves
            return
        self.replica_wait.learn(self.nodes_manager, self.commands_parser.commands)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # The map first: redis-py decides where a command goes before it loads the map, and a client
        # without one sends even a keyed command to its default node (the first seed that answered).
        if self._initialize:
            # If it fails, redis-py's own attempts below try again, and their failure is the call's.
            with contextlib.suppress(redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
                await self.initialize()
        else:
            self.learn_replicas_now_and_then()
        token = _IN_CALL.set(True)
        try:
            return await self.slots.run(super().execute_command, *args, **kwargs)
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException) as exc:
            self._note_exception(exc)
            raise
        finally:
            _IN_CALL.reset(token)

    async def aclose(self) -> None:
        """Close every connection, except when redis-py asks from inside a command or pipeline: it
        closes the whole client before retrying after CLUSTERDOWN, an uncovered slot, repeated MOVED
        or (a pipeline) a connection error, the connections other calls are using at that moment
        included. There, reloading the slot map (what the retry needs) is enough."""
        if _IN_CALL.get():
            self._initialize = True
            return
        if self._replicas_task is not None:
            self._replicas_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replicas_task
        await super().aclose()

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            raise redis.exceptions.RedisClusterException("shard_hint is deprecated in cluster mode")
        # transaction=True is MULTI/EXEC on one node: every key of such a pipeline must share a slot.
        # redis-py's commands protocol declares an `_event_dispatcher` that its ClusterPipeline never sets.
        return ClusterPipeline(self, transaction)  # type: ignore[abstract]


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
    await asyncio.wait_for(call, timeout_s)


class GuardedConnection(redis.asyncio.Connection):
    """redis-py's asyncio connection, except that a connection torn down by another task while a
    command was on its way to the socket is a ConnectionError — retried by the cluster client, else
    answered UNAVAILABLE — instead of an AttributeError on the vanished writer or uvloop's
    RuntimeError ("the handler is closed") on the closed transport, which callers answered UNKNOWN.
    The cluster client disconnects every connection when a slot-map reload fails, as it does while a
    master fails over; its nodes use this class (`BoundedRedisCluster`)."""

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except (AttributeError, RuntimeError) as exc:
            vanished = isinstance(exc, AttributeError) and exc.obj is None and exc.name in ("writelines", "write",
                                                                                           "drain")
            if not vanished and "handler is closed" not in str(exc):
                raise
            raise redis.exceptions.ConnectionError("the connection to Redis was closed while a command was "
                                                   "being sent") from exc


class GuardedSSLConnection(GuardedConnection, redis.asyncio.SSLConnection):
    """`GuardedConnection` over TLS (a `rediss+cluster://` URL)."""


def guarded(connection_class: type[redis.asyncio.Connection]) -> type[redis.asyncio.Connection]:
    """The guarded class for redis-py's Connection or SSLConnection (another class is kept)."""
    if issubclass(connection_class, GuardedConnection):
        return connection_class
    if connection_class is redis.asyncio.SSLConnection:
        return GuardedSSLConnection
    return GuardedConnection if connection_class is redis.asyncio.Connection else connection_class


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


Store = redis.asyncio.Redis | redis.asyncio.RedisCluster
DEFAULT_TIMEOUT_S = 2.0
# TCP keepalive of the redis-py clients (the lean client sets the same, fastredis.KEEPALIVE).
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

    `timeout_s` bounds every command and connect (None: no limit): a frozen Redis gives
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
    sockets: dict[str, Any] = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                               "socket_keepalive": True, "socket_keepalive_options": KEEPALIVE_OPTIONS}
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
    return redis.asyncio.Redis(connection_pool=pool)


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
