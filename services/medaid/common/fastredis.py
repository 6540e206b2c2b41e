"""A lean asyncio client for one Redis (not a cluster, not TLS): redis-py's API, a cheaper wire path.

redis-py's asyncio client spends 150-280 µs of CPU per round trip (connection pool checkout, retry
and observability wrappers, a socket read per reply); the wallet's transfer saga makes about ten
round trips per transfer, so that cost, not Redis, bounded it. `LeanRedis` keeps redis-py's whole
command API (it *is* a `redis.asyncio.Redis`: commands, response callbacks, scripts, pipelines) and
replaces only how a command travels:

* One connection per client, shared by every coroutine (replies come back in the order commands
  were written, so each waiter takes the next reply). Commands issued in the same event-loop turn
  leave in one write (auto-pipelining).
* hiredis packs commands and parses replies in C; redis-py's response callbacks shape the replies
  exactly as they do for `redis.asyncio.Redis` (RESP2).
* A connection that is lost fails every command waiting on it with `ConnectionError`; the command is
  sent again on a new connection, at most twice, after a short backoff — the same retry policy as the
  redis-py client it replaces (`redis_client.client`), safe for the same reason: every money-moving
  script is idempotent by its request/settlement/transfer id.
* A command whose reply does not come within the command timeout (`timeout_s`) fails with redis-py's
  `TimeoutError`, and so does every command behind it on that connection, which is then dropped:
  replies come in order, so none after a missing one can be matched any more. It is not sent again —
  a Redis that is frozen (SIGSTOP, a stalled disk) would only make the caller wait the timeout again —
  and the callers answer UNAVAILABLE. A caller whose deadline leaves less than the timeout stops
  waiting sooner (common/store_deadline.py): only its reply is dropped, the connection stays. The
  socket has TCP keepalive on, so a peer that vanished while the connection was idle is noticed too.

Not supported (never used by the services; refused loudly): WATCH, blocking commands, pub/sub.

The connection (its writes, replies, timeout and keepalive) is common/fastredis_wire.py's; here the
redis-py API on it, the retries and the scripts sent by SHA.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast
from urllib.parse import urlparse

import redis.asyncio
from redis.asyncio.client import Pipeline
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import (
    AuthenticationError,
    ExecAbortError,
    NoScriptError,
    RedisError,
    ResponseError,
    WatchError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from medaid.common import metrics, rpc, store_deadline
from medaid.common.fastredis_wire import Wire, pack_command, script_sha

RETRIES = 2
BACKOFF_S = (0.01, 0.05)

UNSUPPORTED = frozenset({"WATCH", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR", "BLPOP", "BRPOP",
                         "BRPOPLPUSH", "BLMOVE", "BLMPOP", "BZPOPMIN", "BZPOPMAX", "BZMPOP", "XREAD",
                         "XREADGROUP", "WAIT", "CLIENT REPLY"})


class LeanRedis(redis.asyncio.Redis):
    """`redis.asyncio.Redis` whose commands and pipelines travel on one shared hiredis connection.

    `timeout_s`: the command (and connect) timeout, None for none. `username` / `password` (an ACL
    user, or the password of `requirepass`) win over credentials in the URL."""

    def __init__(self, url: str, *, timeout_s: float | None = None, username: str | None = None,
                 password: str | None = None) -> None:
        super().__init__(connection_pool=redis.asyncio.ConnectionPool.from_url(url, protocol=2))
        self.timeout_s = timeout_s
        scheme = urlparse(url).scheme
        if scheme != "redis":
            raise ValueError(f"LeanRedis speaks plain redis:// only, not {scheme}://")
        # Host, port, credentials and database as redis-py's own URL parser read them (path or ?db=).
        kw = self.connection_pool.connection_kwargs
        self._host = kw.get("host") or "127.0.0.1"
        self._port = int(kw.get("port") or 6379)
        self._username = username or kw.get("username") or None
        self._password = password if password is not None else kw.get("password")
        self._db = int(kw.get("db") or 0)
        self._wire: Wire | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    async def _connected(self) -> Wire:
        loop = asyncio.get_running_loop()
        wire = self._wire
        if wire is not None and wire.lost is None and wire.loop is loop:
            return wire
        if self._connect_lock is None or self._lock_loop is not loop:  # an asyncio.Lock serves one loop only
            self._connect_lock, self._lock_loop = asyncio.Lock(), loop
        async with self._connect_lock:
            old = self._wire
            if old is not None and old.lost is None:
                if old.loop is loop:
                    return old
                old.close()  # a connection of an earlier event loop: nobody reads its replies any more
                self._wire = None
            timeout_s = self.timeout_s
            conn: Wire
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: Wire(timeout_s), self._host, self._port), timeout_s)
            except TimeoutError as exc:  # before OSError, of which it is a subclass
                raise RedisTimeoutError(f"no connection to Redis within {timeout_s:g} s") from exc
            except OSError as exc:
                raise RedisConnectionError(f"cannot connect to Redis at {self._host}:{self._port}: {exc}") from exc
            try:
                hello: list[tuple[Any, ...]] = []
                if self._password is not None:
                    hello.append(("AUTH", self._username, self._password) if self._username
                                 else ("AUTH", self._password))
                if self._db:
                    hello.append(("SELECT", self._db))
                if hello:
                    for reply in await conn.send(b"".join(pack_command(c) for c in hello), len(hello)):
                        if isinstance(reply, RedisError):  # WRONGPASS is an AuthenticationError, no ResponseError
                            raise reply
            except BaseException:
                conn.close()
                raise
            self._wire = conn
            return conn

    async def roundtrip(self, packed: bytes | Callable[[Wire], bytes], replies: int) -> list[Any]:
        """Write packed commands and return their `replies` raw replies (errors as exception objects).
        `packed` may be a function of the connection (it packs for what that connection has cached).
        Within the caller's deadline (common/store_deadline.py)."""
        left = rpc.store_time_left(self.timeout_s)
        if left is None:
            return await self._roundtrip(packed, replies)
        return await store_deadline.within(left, self._roundtrip(packed, replies))

    async def _roundtrip(self, packed: bytes | Callable[[Wire], bytes], replies: int) -> list[Any]:
        for attempt in range(RETRIES + 1):
            t0 = time.perf_counter()
            try:
                wire = await self._connected()
                got = await wire.send(packed(wire) if callable(packed) else packed, replies)
            except AuthenticationError as exc:  # a ConnectionError too, but sending again cannot help
                metrics.redis_error(exc)
                raise
            except RedisConnectionError as exc:
                metrics.redis_error(exc)
                if attempt == RETRIES:
                    raise
                await asyncio.sleep(BACKOFF_S[attempt])
                continue
            except RedisError as exc:  # not retried here (a timeout, a protocol error): counted all the same
                metrics.redis_error(exc)
                raise
            metrics.redis_roundtrip(time.perf_counter() - t0)
            return got
        raise AssertionError("unreachable")

    def shape(self, name: Any, reply: Any, options: Mapping[str, Any]) -> Any:
        """A raw reply as redis-py returns it for this command (its response callback)."""
        # Every error reply, not only ResponseError's: NOAUTH/WRONGPASS (AuthenticationError) and LOADING
        # (BusyLoadingError) are ConnectionError subclasses, and must be raised, never returned as the value.
        if isinstance(reply, RedisError):
            if EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            raise reply
        callback = self.response_callbacks.get(name)
        if callback is None:
            return reply
        extra = {k: v for k, v in options.items() if k not in ("keys", EMPTY_RESPONSE, NEVER_DECODE)}
        return callback(reply, **extra)

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        name = args[0]
        if str(name).upper() in UNSUPPORTED:
            raise NotImplementedError(f"{name} is not supported by LeanRedis")
        (reply,) = await self.roundtrip(pack_command(args), 1)
        return self.shape(name, reply, options)

    async def run_scripts(self, source: str, calls: Sequence[tuple[Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run one script once per (keys, args), all in one round trip and in order: as EVALSHA once this
        connection has run it, else as EVAL with its source (Redis caches it by SHA). What a pipeline of
        the same scripts does, without building one. The first error reply is raised, as a pipeline's
        `execute` raises it."""
        replies = await self.eval_many([(source, keys, args) for keys, args in calls])
        for reply in replies:
            if isinstance(reply, RedisError):
                raise reply
        return replies

    async def eval_many(self, calls: Sequence[tuple[str, Sequence[Any], Sequence[Any]]]) -> list[Any]:
        """Run scripts (source, keys, args), of one script or several, all in one round trip and in
        order, replies in order with an error reply in its place (not raised): as EVALSHA when this
        connection has run every one of them, else each as EVAL with its source (Redis caches it by SHA).
        Should Redis have dropped the scripts meanwhile (SCRIPT FLUSH), the calls from the first one it
        refused on (every one after it was refused too) are sent again with their source, in order."""
        if not calls:
            return []
        shas = [script_sha(("EVAL", source)) for source, _, _ in calls]
        tails = [(len(keys), *keys, *args) for _, keys, args in calls]
        by_sha: list[bool] = []

        def pack(wire: Wire) -> bytes:
            by_sha[:] = [all(sha in wire.scripts for sha in shas)]
            if by_sha[0]:
                return b"".join(pack_command(("EVALSHA", sha, *tail)) for sha, tail in zip(shas, tails, strict=True))
            return b"".join(pack_command(("EVAL", source, *tail))
                            for (source, _, _), tail in zip(calls, tails, strict=True))

        replies = await self.roundtrip(pack, len(tails))
        wire = self._wire
        again = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)] if by_sha[0] else []
        if again:
            if wire is not None:
                wire.scripts.clear()
            if any(not isinstance(reply, NoScriptError) for reply in replies[again[0]:]):
                raise ResponseError("scripts were flushed while a pipeline ran; its order cannot be kept")
            retried = await self.roundtrip(b"".join(pack_command(("EVAL", calls[i][0], *tails[i])) for i in again),
                                           len(again))
            for i, reply in zip(again, retried, strict=True):
                replies[i] = reply
        if wire is not None and wire is self._wire:
            for sha, reply in zip(shas, replies, strict=True):
                if not isinstance(reply, RedisError):  # ran, so Redis has it cached
                    wire.scripts.add(cast(str, sha))
        return replies

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> LeanPipeline:
        return LeanPipeline(self, transaction)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()
        await super().aclose(close_connection_pool)


class LeanPipeline(Pipeline):
    """redis-py's pipeline API; `execute` sends the whole stack in one write on the client's connection
    (wrapped in MULTI/EXEC when `transaction`)."""

    def __init__(self, client: LeanRedis, transaction: bool) -> None:
        super().__init__(client.connection_pool, client.response_callbacks, transaction, None)
        self._lean = client

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Queue a command. Unsupported ones are refused here already; and WATCH never takes redis-py's way
        of running commands at once on a pooled connection: the MULTI/EXEC that `execute` sends on the
        shared connection would not be guarded by it."""
        if str(args[0]).upper() in UNSUPPORTED:
            raise NotImplementedError(f"{args[0]} is not supported by LeanRedis")
        return self.pipeline_execute_command(*args, **kwargs)

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        stack = list(self.command_stack)
        scripts = list(self.scripts)
        transaction = self.is_transaction or self.explicit_transaction
        await self.reset()
        if not stack:
            return []
        for args, _ in stack:
            if str(args[0]).upper() in UNSUPPORTED:
                raise NotImplementedError(f"{args[0]!s} is not supported by LeanRedis")
        for script in scripts:  # EVALSHA queued by redis-py's own Script objects: make sure Redis has them
            script.sha = await self._lean.execute_command("SCRIPT LOAD", script.script)
        if transaction:
            return await self._transaction(stack, b"".join(pack_command(args) for args, _ in stack), raise_on_error)
        replies = await self._scripted_roundtrip(stack)
        out: list[Any] = []
        for (args, options), reply in zip(stack, replies, strict=True):
            try:
                out.append(self._lean.shape(args[0], reply, options))
            except ResponseError as exc:
                out.append(exc)
        if raise_on_error:
            self.raise_first_error(stack, out)
        return out

    async def _scripted_roundtrip(self, stack: list[Any]) -> list[Any]:
        """Send the stack. When its scripts are all ones this connection has already run and nothing
        but scripts follows the first of them (plain commands first, then scripts), the scripts go as
        EVALSHA: a settlement script is ~9 KB that Redis would otherwise read and hash per call.

        Should Redis have dropped the scripts meanwhile (SCRIPT FLUSH; a restart is a new
        connection), the EVALSHAs from the first NOSCRIPT on did nothing, and only scripts follow
        it: they are sent again as EVAL, in their order, so the commands still run in the order they
        were queued. Any other stack goes with the scripts' source."""
        shas = [script_sha(args) for args, _ in stack]
        as_sha: list[bool] = []

        def pack(wire: Wire) -> bytes:
            as_sha.clear()
            first = next((i for i, sha in enumerate(shas) if sha is not None), len(shas))
            short = all(sha is not None and sha in wire.scripts for sha in shas[first:])
            as_sha.extend(short and sha is not None for sha in shas)
            return b"".join(pack_command(("EVALSHA", sha, *args[2:])) if short else pack_command(args)
                            for (args, _), sha, short in zip(stack, shas, as_sha, strict=True))

        replies = await self._lean.roundtrip(pack, len(stack))
        again = [i for i, reply in enumerate(replies) if as_sha[i] and isinstance(reply, NoScriptError)]
        wire = self._lean._wire
        if wire is not None and again:
            wire.scripts.clear()
        if again:
            first = again[0]
            rest = list(range(first, len(stack)))
            if any(not (as_sha[i] and isinstance(replies[i], NoScriptError)) for i in rest):
                raise ResponseError("scripts were flushed while a pipeline ran; its order cannot be kept")
            retried = await self._lean.roundtrip(b"".join(pack_command(stack[i][0]) for i in rest), len(rest))
            for i, reply in zip(rest, retried, strict=True):
                replies[i] = reply
        if wire is not None and wire is self._lean._wire:
            for sha, reply in zip(shas, replies, strict=True):
                if sha is not None and not isinstance(reply, RedisError):  # ran, so Redis has it cached
                    wire.scripts.add(sha)
        return replies

    async def _transaction(self, stack: list[Any], packed: bytes, raise_on_error: bool) -> list[Any]:
        replies = await self._lean.roundtrip(pack_command(("MULTI",)) + packed + pack_command(("EXEC",)),
                                             len(stack) + 2)
        for i, reply in enumerate(replies[:-1]):  # MULTI's OK, then QUEUED per command (or why not)
            if isinstance(reply, RedisError):
                if i > 0:
                    self.annotate_exception(reply, i, stack[i - 1][0])
                raise reply
        result = replies[-1]
        if isinstance(result, ExecAbortError):
            raise result
        if result is None:
            raise WatchError("transaction aborted")
        if isinstance(result, RedisError):
            raise result
        out: list[Any] = []
        for (args, options), reply in zip(stack, result, strict=True):
            if isinstance(reply, RedisError):
                if raise_on_error:
                    self.annotate_exception(reply, len(out) + 1, args)
                    raise reply
                out.append(reply)  # in place, as redis-py returns it
                continue
            out.append(self._lean.shape(args[0], reply, options))
        return out
