"""The connection under `LeanRedis` (common/fastredis.py, whose docstring says how it behaves): one
socket to one Redis, commands packed and replies parsed by hiredis, the writes of one event-loop turn
sent together, replies handed to their waiters in order, and a reply later than the command timeout
ending the connection. Knows nothing of redis-py's command API."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections import deque
from typing import Any, cast

import hiredis
import redis.exceptions
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse
from redis.exceptions import TimeoutError as RedisTimeoutError

# TCP keepalive: first probe after 15 s idle, then every 5 s; 3 unanswered probes end the connection.
KEEPALIVE = {"TCP_KEEPIDLE": 15, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}


def keepalive(sock: socket.socket) -> None:
    """TCP keepalive on a Redis socket (the probe timings where the platform lets them be set)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE.items():
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


_SHAS: dict[str | bytes, str] = {}


def script_sha(args: tuple[Any, ...]) -> str | None:
    """The SHA1 of an EVAL command's script (None for any other command)."""
    if args[0] not in ("EVAL", "eval") or len(args) < 2:
        return None
    source = args[1]
    sha = _SHAS.get(source)
    if sha is None:
        raw = source.encode() if isinstance(source, str) else source
        sha = _SHAS[source] = hashlib.sha1(raw).hexdigest()  # noqa: S324 - Redis names scripts by SHA1
    return sha


def pack_command(args: tuple[Any, ...]) -> bytes:
    name = args[0]
    if isinstance(name, str) and " " in name:  # "SCRIPT LOAD" → "SCRIPT", "LOAD"
        args = (*name.split(), *args[1:])
    try:
        packed: bytes = hiredis.pack_command(args)  # hiredis's stub leaves the return type out
    except TypeError:  # hiredis takes str, bytes, int and float only: name the culprit as redis-py does
        bad = next(a for a in args if isinstance(a, bool) or not isinstance(a, (str, bytes, int, float)))
        raise redis.exceptions.DataError(f"Invalid input of type: {type(bad).__name__!r}") from None
    return packed


class Wire(asyncio.Protocol):
    """One Redis connection: writes coalesced per loop turn, replies handed out in order; a reply
    later than `timeout_s` (None: no limit) ends the connection (common/fastredis.py's docstring)."""

    def __init__(self, timeout_s: float | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = hiredis.Reader(protocolError=InvalidResponse, replyError=BaseParser.parse_error)
        # Each waiter: (future, how many replies it takes, the replies so far, when it times out).
        self.waiters: deque[tuple[asyncio.Future[list[Any]], int, list[Any], float]] = deque()
        self.timeout_s = timeout_s
        # One timer per connection, not one per command: it only ever looks at the oldest waiter.
        self._timer: asyncio.TimerHandle | None = None
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        # SHA1s of scripts this connection has run with EVAL: Redis has them cached (until SCRIPT FLUSH
        # or a restart, which is a new connection), so a pipeline sends them as EVALSHA.
        self.scripts: set[str] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # create_connection's transports are streams
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            keepalive(sock)

    def send(self, packed: bytes, replies: int) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[list[Any]] = loop.create_future()
        if self.lost is not None:
            fut.set_exception(RedisConnectionError(f"connection to Redis lost: {self.lost}"))
            return fut
        if self.timeout_s is None:
            self.waiters.append((fut, replies, [], 0.0))
        else:
            self.waiters.append((fut, replies, [], loop.time() + self.timeout_s))
            if self._timer is None:
                self._timer = loop.call_later(self.timeout_s, self._check_timeout)
        self._out.append(packed)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return fut

    def _check_timeout(self) -> None:
        self._timer = None
        if not self.waiters or self.lost is not None:
            return
        left = self.waiters[0][3] - self.loop.time()
        if left > 0:
            self._timer = self.loop.call_later(left, self._check_timeout)
            return
        self._fail(RedisTimeoutError(f"Redis did not answer within {self.timeout_s:g} s"))
        if self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out and self.transport is not None and self.lost is None:
            data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
            self._out.clear()
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while True:
            reply = self.reader.gets()
            if reply is False:
                return
            if not self.waiters:  # a reply nobody asked for: the stream cannot be trusted any more
                self._fail(InvalidResponse("unexpected reply from Redis"))
                if self.transport is not None:
                    self.transport.close()
                return
            fut, n, got, _ = self.waiters[0]
            got.append(reply)
            if len(got) == n:
                self.waiters.popleft()
                if not fut.done():  # a cancelled waiter's replies are read and dropped
                    fut.set_result(got)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or RedisConnectionError("closed by the server"))

    def close(self) -> None:
        if self.transport is None:
            return
        if self.loop.is_closed():  # left behind by an event loop that has ended: end the TCP connection anyway
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError, ValueError):
                    # uvloop hands out a pseudo-socket without shutdown(): end the connection through a
                    # duplicate of its descriptor, which shares the one TCP connection.
                    with socket.socket(fileno=os.dup(sock.fileno())) as dup:
                        dup.shutdown(socket.SHUT_RDWR)
        else:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if self.lost is None or not isinstance(self.lost, RedisTimeoutError):
            self.lost = exc
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        err = exc if isinstance(exc, RedisTimeoutError) else RedisConnectionError(f"connection to Redis lost: {exc}")
        while self.waiters:
            fut, _, _, _ = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(err)
        self._out.clear()

