"""Writes of a cluster client confirmed on a replica before they answer: Redis replication is
asynchronous and a flow that spans masters is several scripts, so a failover could lose one step
while the next ones stand. Each cluster node's connection (`BoundedRedisCluster` in redis_client)
sends `WAIT <replicas> <timeout>` right behind every write, in the same round trip
(`ReplicaConfirmedConnection`), as `ReplicaWait` says; a write not confirmed in time raises
`WriteNotReplicated`, which errors.py answers STORE_UNAVAILABLE. A single Redis sends no WAIT."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

import redis
import redis.asyncio
import redis.asyncio.cluster

REPLICA_WAIT_AUTO = "auto"
DEFAULT_WAIT_TIMEOUT_MS = 1000
# The first word of the error a write not confirmed in time raises (errors.py answers it STORE_UNAVAILABLE).
NOT_REPLICATED = "NOTREPLICATED"
# The commands that run a script that may write (the *_RO forms cannot): no flag of the server's command
# table says so (Valkey flags EVAL neither `write` nor `may_replicate`).
SCRIPT_RUNS = frozenset({b"EVAL", b"EVALSHA", b"FCALL"})
# How often a client that waits for replicas reloads the slot map to learn which masters have one (a
# replica that joined, one the cluster flagged failed); after an unconfirmed write, sooner.
REPLICA_MAP_REFRESH_S = 5.0
REPLICA_MAP_RETRY_S = 0.5


class WriteNotReplicated(redis.exceptions.ResponseError):
    """A write (a script, a pipeline's writes) that the master applied but that fewer of its replicas
    than asked confirmed within the timeout: a failover now could lose it. It may stand on the
    master, so the caller answers UNAVAILABLE and is resent with the same request id, which redoes
    what a failover lost and nothing else."""


def parse_replica_wait(setting: str) -> int | None:
    """`auto` → None; a number of replicas → that number; anything else raises ValueError."""
    word = setting.strip().lower()
    if word == REPLICA_WAIT_AUTO:
        return None
    if not word.isdigit():
        raise ValueError("neither auto nor a number of replicas")
    return int(word)


class ReplicaWait:
    """How many replicas must confirm each write of one cluster client before it answers (Redis
    `WAIT numreplicas timeout`, sent on the write's own connection right behind it, in the same
    round trip).

    `setting` is `auto` (1) or a number; 0 sends no WAIT. On each master it is capped by the
    replicas the slot map gives that master (CLUSTER SLOTS lists a replica once it has synced, and
    leaves out those the cluster flags failed): a master with none (a cluster without replicas, a
    replica dead, a replica just promoted in its master's place) has no replica that a failover
    could promote without a write, waits for nothing and writes on. The write commands are those
    the server's command table flags `write` or `may_replicate`, and the scripts (EVAL, EVALSHA,
    FCALL)."""

    def __init__(self, setting: str = REPLICA_WAIT_AUTO, timeout_ms: int = DEFAULT_WAIT_TIMEOUT_MS) -> None:
        self.setting = parse_replica_wait(setting)
        self.timeout_ms = timeout_ms
        self.wanted = 0
        self.writes: frozenset[bytes] = frozenset()
        self.replicas_of: dict[str, int] = {}  # master "host:port" → its replicas in the slot map
        self.refresh_at = 0.0  # monotonic time of the next slot-map reload (while `wanted`)
        self._decided = False

    def learn(self, nodes: redis.asyncio.cluster.NodesManager, commands: Mapping[str, Any]) -> None:
        """After each slot-map load: which masters have replicas (and, the first time, the write commands)."""
        replicas_of: dict[str, int] = {}
        for shard in {id(s): s for s in nodes.slots_cache.values()}.values():
            if shard:
                replicas_of[shard[0].name] = max(replicas_of.get(shard[0].name, 0), len(shard) - 1)
        if not self._decided:
            self.wanted = 1 if self.setting is None else self.setting
            self.writes = SCRIPT_RUNS | {
                name.upper().encode() for name, info in commands.items()
                if isinstance(info, Mapping) and {"write", "may_replicate"} & set(info["flags"])}
            self._decided = True
        self.replicas_of = replicas_of
        self.refresh_at = time.monotonic() + REPLICA_MAP_REFRESH_S

    def needed(self, node_name: str, command: Any) -> int:
        """How many replicas must confirm `command` sent to that master (0: send no WAIT)."""
        if not self.wanted:
            return 0
        name = command.encode() if isinstance(command, str) else bytes(command)
        if name.split(b" ", 1)[0].upper() not in self.writes:
            return 0
        return min(self.wanted, self.replicas_of.get(node_name, 0))

    def unconfirmed(self) -> None:
        """A write was not confirmed: reload the slot map soon (its replica may be flagged failed by now)."""
        self.refresh_at = min(self.refresh_at, time.monotonic() + REPLICA_MAP_RETRY_S)


class _WaitedPacket(list[bytes]):
    """Packed commands followed by a WAIT: `replies` come before the WAIT's, which must reach `needed`."""

    replies = 0
    needed = 0


class ReplicaConfirmedConnection(redis.asyncio.Connection):
    """A cluster node's connection that sends `WAIT <replicas> <timeout>` right behind every write
    (or a pipeline's share holding a write) and reads its reply with the last of theirs: no round
    trip of its own, only the wait for a replica's acknowledgement. Fewer confirmations than asked
    raise `WriteNotReplicated` once every reply is read, so the connection stays in step. Each
    client makes its own subclass carrying its `ReplicaWait` (`BoundedRedisCluster`)."""

    replica_wait: ClassVar[ReplicaWait]
    _before_wait = 0  # replies still to read before the WAIT's
    _needed = 0  # confirmations the WAIT's reply must reach
    _batch = False  # packing a pipeline's commands

    def _waited(self, packed: list[bytes], replies: int, needed: int) -> list[bytes]:
        out = _WaitedPacket(packed)
        out.extend(super().pack_command("WAIT", needed, self.replica_wait.timeout_ms))
        out.replies, out.needed = replies, needed
        return out

    def pack_command(self, *args: Any) -> list[bytes]:
        packed = super().pack_command(*args)
        if self._batch or not args:
            return packed
        needed = self.replica_wait.needed(f"{self.host}:{self.port}", args[0])
        return self._waited(packed, 1, needed) if needed else packed

    def pack_commands(self, commands: Any) -> list[bytes]:
        commands = [tuple(c) for c in commands]
        self._batch = True  # redis-py packs each with pack_command: one WAIT behind them all
        try:
            packed = super().pack_commands(commands)
        finally:
            self._batch = False
        node = f"{self.host}:{self.port}"
        needed = max((self.replica_wait.needed(node, c[0]) for c in commands if c), default=0)
        return self._waited(packed, len(commands), needed) if needed else packed

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._before_wait:  # replies of an earlier packet left unread: the connection is out of step
            await self.disconnect()
        await super().send_packed_command(command, check_health)
        if isinstance(command, _WaitedPacket):
            self._before_wait, self._needed = command.replies, command.needed

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        if not self._before_wait:
            return await super().read_response(*args, **kwargs)
        failure: redis.exceptions.ResponseError | None = None
        try:
            response = await super().read_response(*args, **kwargs)
        except redis.exceptions.ResponseError as exc:  # an error reply (a script's error): still in step
            failure, response = exc, None
        except BaseException:
            self._before_wait = 0  # redis-py disconnects on any other failure of a read
            raise
        self._before_wait -= 1
        if self._before_wait == 0:
            try:
                confirmed = await super().read_response()
            except BaseException:
                self._before_wait = 0
                raise
            if not isinstance(confirmed, int) or confirmed < self._needed:
                self.replica_wait.unconfirmed()
                raise WriteNotReplicated(
                    f"{NOT_REPLICATED} the write reached {confirmed} of {self._needed} replica(s) within "
                    f"{self.replica_wait.timeout_ms} ms (WAIT); it may stand on the master: resend with the "
                    "same request id")
        if failure is not None:
            raise failure
        return response

    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        self._before_wait = 0
        await super().disconnect(*args, **kwargs)


def replica_confirmed(base: type[redis.asyncio.Connection], wait: ReplicaWait) -> type[redis.asyncio.Connection]:
    """`base` (a node's guarded connection class) that confirms its writes as `wait` says."""
    return type(f"ReplicaConfirmed{base.__name__}", (ReplicaConfirmedConnection, base), {"replica_wait": wait})
