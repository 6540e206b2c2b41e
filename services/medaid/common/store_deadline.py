"""Redis commands within the deadline of the call being served: the one place where the services'
Redis clients (LeanRedis, the pooled redis-py client, the cluster client) apply `rpc.store_time_left`.

A command's timeout is the shorter of its client's (`--redis-timeout-ms`) and what the caller of the
call being served still allows (`rpc.budget`, less `rpc.STORE_MARGIN_S`). A Redis that is frozen,
slow, or busy with a long script therefore makes the call answer UNAVAILABLE / STORE_UNAVAILABLE
before its caller gives up — a hospital waiting 1 s hears why, not a bare DEADLINE_EXCEEDED — and the
call stops waiting for Redis then instead of going on after its caller has left.

A command cut short this way was sent all the same (a lock's release in a `finally` still reaches
Redis) and may still be applied: what it did is what a resend with the same request id finds, as
for any command that timed out. Only the waiting is cut: the client's connection stays open (the
lean client reads the reply and drops it), and the command is not counted as a Redis failure. A
call without a deadline, and the services' own loops (recovery, maintenance, batches sent for many
callers), keep the client's timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from redis.exceptions import TimeoutError as RedisTimeoutError

T = TypeVar("T")


async def within(left_s: float, step: Awaitable[T]) -> T:
    """`step` (a command or a pipeline on its way), given `left_s` seconds (`rpc.store_time_left`);
    past them, redis-py's TimeoutError, which the services answer UNAVAILABLE / STORE_UNAVAILABLE."""
    cut = asyncio.timeout(left_s)
    try:
        async with cut:
            return await step
    except TimeoutError:
        if not cut.expired():
            raise
        raise RedisTimeoutError(f"Redis did not answer within the {left_s:.3f} s the caller's deadline left"
                                ) from None
