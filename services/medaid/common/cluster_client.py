"""The services' Redis Cluster client (`BoundedRedisCluster`): at most a bounded number of commands in
flight, a command that timed out never resent, pipelines and MULTI/EXEC retried only on the client's
own errors, a slot map reloaded from the nodes that answer first, and the replica confirmation of
each write (replica_wait.py). Built by `redis_client.client` for a `redis+cluster://` URL."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.cluster import PRIMARY, get_node_name

from medaid.common import metrics
from medaid.common.cluster_transaction import ClusterTransaction
from medaid.common.replica_wait import REPLICA_MAP_REFRESH_S, ReplicaWait, replica_confirmed

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
