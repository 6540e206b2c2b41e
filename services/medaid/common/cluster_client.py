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
from typing import Any, ClassVar, TypeVar, cast

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
from redis.cluster import PRIMARY, get_node_name

from medaid.common import metrics, rpc, store_deadline
from medaid.common.cluster_transaction import ClusterTransaction
from medaid.common.replica_wait import REPLICA_MAP_REFRESH_S, ReplicaWait, replica_confirmed

# How long a node that timed out or refused a connection is asked last when the slot map is reloaded
# (`FailedNodes`, `_reload_nodes`): a reload sends it nothing while another node answers — no PING
# whose connection a hung node leaves unanswered in its listen queue, reload after reload, and no
# request for the command table. Forgetting it too soon only puts it back among the nodes a reload
# PINGs at once (the first to answer wins, so a hung one costs no wait even then); remembering it too
# long costs nothing (its first answer clears it). 30 s is fifteen default command timeouts and twice
# Redis's default cluster-node-timeout (15 s): a node hung that long has been flagged failed by the
# cluster (and its replica promoted) before it is forgotten, and a hung master whose keys are called
# meanwhile fails again, renewing it, at every call.
FAILED_NODE_MEMORY_S = 30.0
FAILED_NODES_KEPT = 256  # a bound on the record: more nodes than any cluster the services use

# Set while a bounded cluster client holds one of its in-flight slots, so that a command issued
# from inside that operation (a redirect, a topology refresh) does not wait for a second one.
_HOLDING: contextvars.ContextVar[object | None] = contextvars.ContextVar("medaid_cluster_slot", default=None)

_T = TypeVar("_T")
# Set while a command or pipeline of the services' cluster client executes (BoundedRedisCluster.aclose).
_IN_CALL: contextvars.ContextVar[bool] = contextvars.ContextVar("medaid_cluster_call", default=False)


class FailedNodes:
    """The nodes ("host:port") of one cluster client that timed out or failed to connect within the last
    `FAILED_NODE_MEMORY_S`, and when, noted by every connection of the client (`failure_noted`): a
    command's, a pipeline's, a slot-map reload's own. A node's first answer clears it. At most
    `FAILED_NODES_KEPT` are kept (the oldest go first)."""

    def __init__(self, memory_s: float = FAILED_NODE_MEMORY_S) -> None:
        self.memory_s = memory_s
        self._at: dict[str, float] = {}  # node → monotonic time of its last failure, oldest first

    def failed(self, name: str) -> None:
        self._at.pop(name, None)
        self._at[name] = time.monotonic()
        while len(self._at) > FAILED_NODES_KEPT:
            del self._at[next(iter(self._at))]

    def answered(self, host: str, port: int) -> None:
        if self._at:  # the common case, no failure on record, costs one test
            self._at.pop(get_node_name(host, port), None)

    def recent(self) -> dict[str, float]:
        """Node → when it last failed, for the failures within the memory, oldest first."""
        horizon = time.monotonic() - self.memory_s
        for name in [n for n, at in self._at.items() if at < horizon]:
            del self._at[name]
        return dict(self._at)


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
            step = client.slots.run(super().execute, raise_on_error, allow_redirections)
            left = rpc.store_time_left(client.timeout_s)
            return await (step if left is None else store_deadline.within(left, step))
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
        self.timeout_s: float | None = kwargs.get("socket_timeout")  # each command's, cut by its caller's deadline
        self.replica_wait = replica_wait or ReplicaWait()
        self.failed_nodes = FailedNodes()
        # redis-py takes no connection class for a cluster: every node, the startup nodes and those the
        # slot map brings, gets the guarded one (GuardedConnection), confirming its writes on a replica
        # and noting its failures for the slot-map reloads, through the shared node arguments.
        node_kwargs = self.nodes_manager.connection_kwargs
        node_kwargs["connection_class"] = failure_noted(
            replica_confirmed(guarded(node_kwargs["connection_class"]), self.replica_wait), self.failed_nodes)
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = node_kwargs["connection_class"]
        # The URL's seeds, kept among the nodes a reload asks (`_keep_seeds`).
        self._seeds = dict(self.nodes_manager.startup_nodes)
        self.slots = _Slots(max_in_flight)
        self._init_task: asyncio.Future[Any] | None = None
        self._reloading = asyncio.Lock()  # one slot-map reload at a time (`_reload_nodes`)
        self._pings: set[asyncio.Future[Any]] = set()  # a reload's PINGs still out (`_first_to_answer`)
        self._replicas_task: asyncio.Future[Any] | None = None

    async def initialize(self, *args: Any, **kwargs: Any) -> BoundedRedisCluster:
        """Load the slot map, once, whoever asks. redis-py closes every node's connections when its
        initialisation ends in any exception, also the connections other calls are using at that
        moment: those then fail (and, while a master fails over, the reloads they trigger fail too,
        so healthy slots stop serving until the failover ends). Here a failed reload only leaves the
        map to be loaded again by the next call. And a caller cancelled by its deadline (or a health
        ping's timeout) must not cancel it for everyone: it runs as a task of its own, which callers
        await shielded."""
        if not self._initialize:
            return self
        task = self._init_task
        if task is None or task.done():
            task = self._init_task = asyncio.ensure_future(self._load_slot_map(*args, **kwargs))
        await asyncio.shield(task)
        return self

    async def _load_slot_map(self, *args: Any, **kwargs: Any) -> None:
        """redis-py's `RedisCluster.initialize` (redis 8), without closing every connection on failure,
        and reading the command table from the first master that answers: redis-py asks only the
        default node, the master of slot 0 more often than not, so while that master was down every
        reload failed and every call with it, the other masters' keys included.

        The command table comes from the node the map came from, if a PING chose it (`_reload_nodes`),
        else from the masters, those that failed recently last; the default node is that node if it is
        a master, else the first of those masters."""
        if not self._initialize:
            return
        chosen = await self._reload_nodes()
        answering = self.nodes_manager.nodes_cache.get(chosen) if chosen else None
        failed = self.failed_nodes.recent()
        default = self.nodes_manager.default_node
        masters = [default, *(n for n in self.nodes_manager.get_nodes_by_server_type(PRIMARY) if n is not default)]
        masters.sort(key=lambda n: (n is not answering, failed.get(n.name, 0.0)))  # else stable: the default first
        asked = [answering, *masters] if answering is not None and answering.server_type != PRIMARY else masters
        for i, node in enumerate(asked):
            try:
                await self.commands_parser.initialize(node)
                break
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                if i == len(asked) - 1:
                    raise
        # Keyless commands go to a master that answers.
        self.nodes_manager.default_node = node if node.server_type == PRIMARY else masters[0]
        self.replica_wait.learn(self.nodes_manager, self.commands_parser.commands)
        self._initialize = False

    async def _reload_nodes(self) -> str | None:
        """Reload the slot map (redis-py's `NodesManager.initialize`). While no node has failed recently
        (`FailedNodes`), redis-py asks the nodes one after the other in a random order. Otherwise the
        map comes from the first node to answer a PING among those that did not fail recently, all
        asked at once, and only if none of them answers from the first to answer among the others;
        returns its name. A reload then waits on no node, hung or not yet known to be, while another
        answers, and at most one command timeout on the nodes that failed recently (two when every node
        is down or hung: then no call can succeed).

        redis-py puts last only the node its caller names (the one a command last failed on): with two
        masters hung, a reload after a timeout on one asked the other first half the time, and every
        call waiting on it, those for the healthy master's keys too, waited a whole timeout; a call for
        a hung master's key two (4.1 s with the default timeout, past the callers' 3 s deadline). The
        reloads in the background (`_learn_replicas`) hold the same lock, so that a call's reload never
        waits behind one of them."""
        nodes = self.nodes_manager
        async with self._reloading:
            everyone = nodes.startup_nodes
            failed = self.failed_nodes.recent()
            if not any(name in failed for name in everyone):
                await nodes.initialize()
                self._keep_seeds()
                return None
            fine = {name: node for name, node in everyone.items() if name not in failed}
            suspects = {name: node for name, node in everyone.items() if name in failed}
            answering = await self._first_to_answer(fine) or await self._first_to_answer(suspects)
            if answering is None:
                raise redis.exceptions.RedisClusterException(
                    f"no node of the Redis Cluster answered ({', '.join(everyone)})")
            nodes.startup_nodes = {answering: everyone[answering]}
            try:
                await nodes.initialize()
            except BaseException:
                nodes.startup_nodes = everyone  # all of them for the next reload
                raise
            if not nodes._dynamic_startup_nodes:  # else redis-py made them every node of the map it loaded
                nodes.startup_nodes = everyone
            self._keep_seeds()
            return answering

    def _keep_seeds(self) -> None:
        """Put the URL's seeds back among the nodes the next reload asks. redis-py replaces those with the
        nodes of the map it loaded, by the addresses the cluster announces: when every node came back at
        a new address at once (a power cut, every pod rescheduled), all of those refused, and the client
        never found the cluster again until its process restarted, while a new process found it through
        the URL's host names, which resolve to the new addresses."""
        startup = self.nodes_manager.startup_nodes
        for name, seed in self._seeds.items():
            startup.setdefault(name, seed)

    async def _first_to_answer(self, nodes: dict[str, redis.asyncio.cluster.ClusterNode]) -> str | None:
        """The name of the first of `nodes` to answer a PING, all sent at once (None: none answers within
        the command timeout). Each PING has a connection of its own, outside the node's pool (a reload
        marks the pool's connections for reconnecting, those in use too), and the PINGs still out are
        left to end on their own: a hung node's with a timeout, noted in `FailedNodes`."""
        asked = {asyncio.ensure_future(_ping(node)): name for name, node in nodes.items()}
        for task in asked:
            self._pings.add(task)
            task.add_done_callback(self._ping_done)
        pending = set(asked)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if not task.cancelled() and task.exception() is None:
                    return asked[task]
        return None

    def _ping_done(self, task: asyncio.Future[Any]) -> None:
        self._pings.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a hung node's timeout is no one's error

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
            await self._reload_nodes()
        except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
            self.replica_wait.unconfirmed()  # try again soon; the calls meet the failure themselves
            return
        self.replica_wait.learn(self.nodes_manager, self.commands_parser.commands)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        # The map first: redis-py decides where a command goes before it loads the map, and a client
        # without one sends even a keyed command to its default node (the first seed that answered).
        if self._initialize:
            # If it fails, redis-py's own attempts below try again, and their failure is the call's. The
            # load runs on (`initialize`) when this caller's deadline stops it waiting.
            with contextlib.suppress(redis.exceptions.RedisError, redis.exceptions.RedisClusterException):
                left = rpc.store_time_left(self.timeout_s)
                await (self.initialize() if left is None else store_deadline.within(left, self.initialize()))
        else:
            self.learn_replicas_now_and_then()
        token = _IN_CALL.set(True)
        try:
            step = self.slots.run(super().execute_command, *args, **kwargs)
            left = rpc.store_time_left(self.timeout_s)
            return await (step if left is None else store_deadline.within(left, step))
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
        for task in list(self._pings):
            task.cancel()
        if self._pings:
            await asyncio.wait(list(self._pings))
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


async def _ping(node: redis.asyncio.cluster.ClusterNode) -> None:
    """PING `node` on a connection of its own, closed after."""
    connection = node.connection_class(**node.connection_kwargs)
    try:
        await connection.send_command("PING")
        await connection.read_response()
    finally:
        await connection.disconnect()


class FailureNotedConnection(redis.asyncio.Connection):
    """A cluster node's connection that notes in its client's `FailedNodes` a timeout or a connection
    error (refused, reset, a timed-out connect), whatever it was sending — a command, a pipeline's
    share, a slot-map reload's CLUSTER SLOTS — and clears the node at its first answer. Each client
    makes its own subclass carrying its record (`failure_noted`)."""

    failed_nodes: ClassVar[FailedNodes]

    def _note(self, exc: BaseException) -> None:
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            self.failed_nodes.failed(get_node_name(self.host, self.port))
        elif isinstance(exc, redis.exceptions.ResponseError):  # an error reply (CLUSTERDOWN, MOVED): it answers
            self.failed_nodes.answered(self.host, self.port)

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        try:
            await super().send_packed_command(command, check_health)
        except Exception as exc:
            self._note(exc)
            raise

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            response = await super().read_response(*args, **kwargs)
        except Exception as exc:
            self._note(exc)
            raise
        self.failed_nodes.answered(self.host, self.port)
        return response


def failure_noted(base: type[redis.asyncio.Connection], failed: FailedNodes) -> type[redis.asyncio.Connection]:
    """`base` (a node's connection class) noting its failures in `failed`."""
    return type(f"FailureNoted{base.__name__}", (FailureNotedConnection, base), {"failed_nodes": failed})


def guarded(connection_class: type[redis.asyncio.Connection]) -> type[redis.asyncio.Connection]:
    """The guarded class for redis-py's Connection or SSLConnection (another class is kept)."""
    if issubclass(connection_class, GuardedConnection):
        return connection_class
    if connection_class is redis.asyncio.SSLConnection:
        return GuardedSSLConnection
    return GuardedConnection if connection_class is redis.asyncio.Connection else connection_class
